from flowctl.signal import UNKNOWN_READING, CpuSignal, StaticSignal


def test_static_signal_is_a_cpu_signal_and_settable() -> None:
    sig = StaticSignal(utilization=0.5)
    assert isinstance(sig, CpuSignal)
    assert sig.name == "static"
    assert sig.reading.utilization == 0.5
    sig.set(utilization=0.9, throttled_ratio=0.3)
    assert (sig.reading.utilization, sig.reading.throttled_ratio) == (0.9, 0.3)


def test_unknown_reading_has_nothing_known() -> None:
    assert UNKNOWN_READING.utilization is None and UNKNOWN_READING.limit_cores is None
