import math

import pytest

from flowctl.errors import ConfigError
from flowctl.cpu.ema import Ema


def test_first_update_takes_the_sample() -> None:
    ema = Ema(tau_s=1.0)
    assert ema.value is None
    assert ema.update(0.7, now=10.0) == 0.7


def test_step_reaches_63_percent_after_one_time_constant_whatever_the_step() -> None:
    for dt in (0.01, 0.1, 0.5):
        ema = Ema(tau_s=2.0)
        ema.update(0.0, now=0.0)
        t = 0.0
        while t < 2.0 - 1e-9:
            t += dt
            ema.update(1.0, now=t)
        assert ema.value == pytest.approx(1 - math.exp(-1), abs=1e-6)


def test_zero_or_negative_dt_leaves_value() -> None:
    ema = Ema(tau_s=1.0)
    ema.update(0.2, now=5.0)
    assert ema.update(1.0, now=5.0) == 0.2
    assert ema.update(1.0, now=4.0) == 0.2


def test_bad_tau_is_rejected() -> None:
    with pytest.raises(ValueError):
        Ema(tau_s=0)


@pytest.mark.parametrize("tau_s", [0, -1.0, float("nan"), float("inf")])
def test_bad_tau_is_a_config_error_naming_it(tau_s: float) -> None:
    with pytest.raises(ConfigError, match="tau_s"):
        Ema(tau_s=tau_s)
