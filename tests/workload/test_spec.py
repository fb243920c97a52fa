"""Option validation: names, CPUs, sizes, cpusets (pure, no root)."""

from __future__ import annotations

import pytest

from flowctl.errors import ConfigError
from flowctl.workload.spec import (
    WorkloadSpec,
    default_name,
    format_cpuset,
    parse_cpus,
    parse_cpuset,
    parse_size,
    quota_us_for,
    validate_name,
)


@pytest.mark.parametrize("name", ["web", "flowctl-test-1a2b", "a.b_c-d", "_x", "A" * 100])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/abs", ".hidden", "-x", "a b", "x\0y",
                                  "A" * 101, "cpu.shares", "cgroup.procs", "tasks", "é"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid --name"):
        validate_name(name)


def test_default_name_is_unique_and_valid() -> None:
    a, b = default_name(), default_name()
    assert a != b
    assert validate_name(a) == a


@pytest.mark.parametrize(("raw", "cores", "quota"), [("0.5", 0.5, 50_000), (1, 1.0, 100_000), ("0.01", 0.01, 1_000),
                                                     ("2.25", 2.25, 225_000)])
def test_cpus(raw: str | int, cores: float, quota: int) -> None:
    assert parse_cpus(raw) == cores
    assert quota_us_for(parse_cpus(raw)) == quota


@pytest.mark.parametrize("raw", ["", "abc", "0", "-1", "nan", "inf", "0.001", "1e9"])
def test_bad_cpus(raw: str) -> None:
    with pytest.raises(ConfigError, match="invalid --cpus"):
        parse_cpus(raw)


@pytest.mark.parametrize(("raw", "size"), [("268435456", 268435456), ("256M", 256 << 20), ("256MiB", 256 << 20),
                                           ("256m", 256 << 20), ("1G", 1 << 30), ("1.5g", 3 << 29), ("1024k", 1 << 20),
                                           ("2MB", 2 << 20), (300 << 20, 300 << 20)])
def test_sizes(raw: str | int, size: int) -> None:
    assert parse_size(raw) == size


@pytest.mark.parametrize("raw", ["", "12Q", "-5M", "1K", "0", "M", "1 GB x", "99999999T"])
def test_bad_sizes(raw: str) -> None:
    with pytest.raises(ConfigError, match="invalid --memory"):
        parse_size(raw)


@pytest.mark.parametrize(("raw", "cpus", "text"), [("0", {0}, "0"), ("0-1", {0, 1}, "0-1"), ("0,2-3", {0, 2, 3}, "0,2-3"),
                                                   (" 1 ", {1}, "1")])
def test_cpusets(raw: str, cpus: set[int], text: str) -> None:
    assert parse_cpuset(raw) == cpus
    assert format_cpuset(parse_cpuset(raw)) == text


@pytest.mark.parametrize("raw", ["", "x", "1-0", "0,,1", "-1", "0-"])
def test_bad_cpusets(raw: str) -> None:
    with pytest.raises(ConfigError, match="invalid --cpuset"):
        parse_cpuset(raw)


def test_spec_build() -> None:
    spec = WorkloadSpec.build(name="w1", cpus="0.5", memory="256M", cpuset="0")
    assert spec == WorkloadSpec(name="w1", cpus=0.5, memory_bytes=256 << 20, cpuset=frozenset({0}))
    assert WorkloadSpec.build().name.startswith("flowctl-run-")
    with pytest.raises(ConfigError):
        WorkloadSpec.build(cpuset={-1})
