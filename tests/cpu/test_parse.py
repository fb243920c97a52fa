"""Parsers: documented cases, and hypothesis: arbitrary input only ever raises ParseError."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowctl.cpu import parse as P
from flowctl.errors import ParseError


def test_mountinfo_optional_fields_and_octal_escapes() -> None:
    text = (
        "31 25 0:27 /docker/a\\040b /sys/fs/cgroup/cpu\\011x rw,relatime shared:9 master:2 - cgroup cgroup rw,cpuacct,cpu\n"
        "41 25 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n"
        "bogus line\n"
    )
    entries, bad = P.parse_mountinfo(text)
    assert len(entries) == 2 and len(bad) == 1
    e = entries[0]
    assert (e.root, e.mount_point, e.fstype) == ("/docker/a b", "/sys/fs/cgroup/cpu\tx", "cgroup")
    assert "cpu" in e.super_options and "cpuacct" in e.super_options
    assert entries[1].super_options == ("rw", "nsdelegate")


def test_unescape_octal_backslash_and_newline() -> None:
    assert P.unescape_octal("a\\134b\\012c") == "a\\b\nc"


def test_cgroup_file_v1_v2_and_named() -> None:
    lines = P.parse_cgroup_file("12:name=systemd:/x\n4:cpu,cpuacct:/docker/abc\n0::/a:b\n")
    assert lines[1].controllers == ("cpu", "cpuacct")
    assert lines[2] == P.CgroupLine(0, (), "/a:b")


@pytest.mark.parametrize(("quota", "period", "cores"), [("-1", "100000", None), ("50000", "100000", 0.5),
                                                        ("150000", "100000", 1.5), ("12345", "50000", 0.2469)])
def test_v1_quota(quota: str, period: str, cores: float | None) -> None:
    assert P.parse_v1_quota(quota, period) == (None if cores is None else pytest.approx(cores))


@pytest.mark.parametrize(("text", "cores"), [("max 100000", None), ("max", None), ("50000 100000", 0.5),
                                             ("300000 200000", 1.5)])
def test_cpu_max(text: str, cores: float | None) -> None:
    assert P.parse_cpu_max(text) == (None if cores is None else pytest.approx(cores))


@pytest.mark.parametrize("bad", ["", "0 100000", "50000 0", "a b", "1 2 3"])
def test_cpu_max_rejects(bad: str) -> None:
    with pytest.raises(ParseError):
        P.parse_cpu_max(bad)


@pytest.mark.parametrize(("text", "cpus"), [("0-3,8-11", {0, 1, 2, 3, 8, 9, 10, 11}), ("", set()), ("5", {5}),
                                            ("0-1\n", {0, 1}), ("0-15:2/4", {0, 1, 4, 5, 8, 9, 12, 13})])
def test_cpu_list(text: str, cpus: set[int]) -> None:
    assert P.parse_cpu_list(text) == frozenset(cpus)


def test_memory_no_limit_values() -> None:
    assert P.parse_memory_value("max\n") is None
    assert P.parse_memory_value("9223372036854771712\n") is None
    assert P.parse_memory_value("268435456") == 268435456


def test_psi() -> None:
    psi = P.parse_psi("some avg10=1.50 avg60=0.75 avg300=0.20 total=123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert psi["some"].total_us == 123 and psi["some"].avg10 == 1.5


def test_proc_stat_guest_not_double_counted() -> None:
    t = P.parse_proc_stat_cpu("cpu  100 10 50 1000 20 5 5 3 40 2\n")
    assert t.total_ticks == 100 + 10 + 50 + 1000 + 20 + 5 + 5 + 3
    assert t.busy_ticks == t.total_ticks - 1000 - 20


def test_meminfo_in_bytes() -> None:
    assert P.parse_meminfo("MemTotal: 1024 kB\nHugePages_Total: 0\n") == {"MemTotal": 1048576, "HugePages_Total": 0}


PARSERS: list[Callable[[bytes], object]] = [
    lambda b: P.parse_mountinfo(b),
    lambda b: P.parse_mountinfo_line(P.decode(b)),
    P.parse_cgroup_file,
    P.parse_int,
    lambda b: P.parse_v1_quota(b, b),
    P.parse_cpu_max,
    P.parse_flat_keyed,
    P.parse_psi,
    P.parse_memory_value,
    P.parse_cpu_list,
    P.parse_proc_stat_cpu,
    P.parse_meminfo,
    P.parse_cpuinfo_count,
    P.parse_loadavg,
]

# Bytes biased towards the characters these files are made of, plus anything at all.
_alphabet = st.sampled_from(list(b"0123456789-,: =\n\t/\\abcdefmaxsomeavgtotalcpukB.") + [0, 0xFF, 0x80])
_kernelish = st.lists(_alphabet, max_size=200).map(bytes)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: getattr(p, "__name__", "lambda"))
@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), _kernelish))
def test_parsers_raise_only_parse_error(parser: Callable[[bytes], object], data: bytes) -> None:
    try:
        parser(data)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(cpus=st.frozensets(st.integers(min_value=0, max_value=4096), max_size=64))
def test_cpu_list_round_trips(cpus: frozenset[int]) -> None:
    text = P.format_cpu_list(cpus)
    assert P.parse_cpu_list(text) == cpus
    assert P.format_cpu_list(P.parse_cpu_list(text)) == text


@settings(max_examples=200, deadline=None)
@given(ranges=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 20)), min_size=1, max_size=8))
def test_cpu_list_with_ranges_parses_to_union(ranges: list[tuple[int, int]]) -> None:
    text = ",".join(f"{lo}-{lo + n}" if n else str(lo) for lo, n in ranges)
    want = frozenset(c for lo, n in ranges for c in range(lo, lo + n + 1))
    assert P.parse_cpu_list(text) == want


def test_pid_stat_fields_split_after_the_last_paren_of_comm() -> None:
    from flowctl.cpu.parse import parse_pid_stat_fields

    line = b"4242 (odd) name (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 123456 1000 200\n"
    fields = parse_pid_stat_fields(line)
    assert fields[0] == "S" and fields[1] == "1" and fields[19] == "123456"  # state, ppid, starttime
    with pytest.raises(ParseError):
        parse_pid_stat_fields("no comm here")
