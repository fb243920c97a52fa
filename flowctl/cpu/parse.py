"""Pure parsers for the kernel, cgroup and lxcfs files flowctl reads.

Every parser takes ``str`` or ``bytes`` (bytes are decoded as UTF-8 with
``surrogateescape``, so odd path bytes survive) and either returns a value or
raises ``flowctl.errors.ParseError``; no other exception escapes, whatever
the input. Readers catch ``ParseError`` and record it as a reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from flowctl.errors import ParseError

__all__ = [
    "CgroupLine",
    "CpuTimes",
    "MountEntry",
    "PsiLine",
    "decode",
    "format_cpu_list",
    "parse_cgroup_file",
    "parse_cpu_list",
    "parse_cpu_max",
    "parse_cpuinfo_count",
    "parse_flat_keyed",
    "parse_int",
    "parse_loadavg",
    "parse_meminfo",
    "parse_memory_value",
    "parse_mountinfo",
    "parse_mountinfo_line",
    "parse_pid_stat_fields",
    "parse_proc_stat_cpu",
    "parse_psi",
    "parse_v1_quota",
    "unescape_octal",
]

# The kernel's v1 "no memory limit" is PAGE_COUNTER_MAX * PAGE_SIZE (9223372036854771712 on
# 4 KiB pages); anything at or above 2**62 bytes is treated as "no limit".
MEMORY_NO_LIMIT_MIN_BYTES = 2**62
# A cpu list above this CPU number is rejected (a kernel has at most a few thousand).
MAX_CPU_ID = 1 << 16

_OCTAL = re.compile(r"\\([0-7]{3})")


def decode(data: str | bytes) -> str:
    """Text of ``data``; bytes are decoded UTF-8 with surrogateescape (never raises)."""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", "surrogateescape")


def _int(token: str, what: str) -> int:
    try:
        return int(token, 10)
    except ValueError:
        raise ParseError(f"{what}: not an integer: {token[:40]!r}") from None


def _float(token: str, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise ParseError(f"{what}: not a number: {token[:40]!r}") from None
    if not math.isfinite(value):
        raise ParseError(f"{what}: not a finite number: {token[:40]!r}")
    return value


def unescape_octal(text: str) -> str:
    r"""Undo mountinfo's octal escapes (``\040`` space, ``\011`` tab, ``\012`` newline, ``\134`` backslash)."""
    if "\\" not in text:
        return text
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


# ---------------------------------------------------------------- mountinfo


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of /proc/PID/mountinfo, paths unescaped."""

    mount_id: int
    parent_id: int
    root: str
    mount_point: str
    options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]


def parse_mountinfo_line(line: str) -> MountEntry:
    """One mountinfo line: ``id parent maj:min root mountpoint opts [optional...] - fstype source superopts``."""
    fields = line.split(" ")
    try:
        sep = fields.index("-", 6)
    except ValueError:
        raise ParseError(f"mountinfo: no ' - ' separator: {line[:80]!r}") from None
    if len(fields) < sep + 3 or sep < 6:
        raise ParseError(f"mountinfo: too few fields: {line[:80]!r}")
    mount_id = _int(fields[0], "mountinfo id")
    parent_id = _int(fields[1], "mountinfo parent id")
    if ":" not in fields[2]:
        raise ParseError(f"mountinfo: bad major:minor {fields[2][:20]!r}")
    root = unescape_octal(fields[3])
    mount_point = unescape_octal(fields[4])
    if not root.startswith("/") or not mount_point.startswith("/"):
        raise ParseError(f"mountinfo: root and mount point must be absolute: {line[:80]!r}")
    return MountEntry(
        mount_id=mount_id,
        parent_id=parent_id,
        root=root,
        mount_point=mount_point,
        options=tuple(fields[5].split(",")),
        fstype=fields[sep + 1],
        source=unescape_octal(fields[sep + 2]),
        super_options=tuple(fields[sep + 3].split(",")) if len(fields) > sep + 3 else (),
    )


def parse_mountinfo(data: str | bytes) -> tuple[list[MountEntry], list[str]]:
    """All parseable mountinfo lines, and a reason for each line skipped as malformed.

    Raises ParseError only when the text is non-empty and no line parses.
    """
    entries: list[MountEntry] = []
    bad: list[str] = []
    for line in decode(data).split("\n"):
        if not line.strip():
            continue
        try:
            entries.append(parse_mountinfo_line(line))
        except ParseError as exc:
            bad.append(str(exc))
    if not entries and bad:
        raise ParseError(f"mountinfo: no valid line ({bad[0]})")
    return entries, bad


# ---------------------------------------------------------------- /proc/PID/cgroup


@dataclass(frozen=True, slots=True)
class CgroupLine:
    """One line of /proc/PID/cgroup: ``ID:controllers:path`` (v2 is ``0::path``)."""

    hierarchy_id: int
    controllers: tuple[str, ...]
    path: str


def parse_cgroup_file(data: str | bytes) -> list[CgroupLine]:
    """Every line of /proc/PID/cgroup; ParseError on any malformed line or an empty file."""
    out: list[CgroupLine] = []
    for line in decode(data).split("\n"):
        if not line:
            continue
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise ParseError(f"cgroup: expected ID:controllers:path, got {line[:80]!r}")
        hid = _int(parts[0], "cgroup hierarchy id")
        if hid < 0:
            raise ParseError(f"cgroup: negative hierarchy id {hid}")
        path = parts[2]
        if not path.startswith("/"):
            raise ParseError(f"cgroup: path must be absolute: {path[:80]!r}")
        ctrls = tuple(c for c in parts[1].split(",") if c)
        out.append(CgroupLine(hid, ctrls, path))
    if not out:
        raise ParseError("cgroup: empty file")
    return out


# ---------------------------------------------------------------- cgroup values


def parse_int(data: str | bytes, what: str = "value") -> int:
    """A file holding one integer (``cpuacct.usage``, ``cpu.cfs_period_us``, ...)."""
    text = decode(data).strip()
    if not text or len(text.split()) != 1:
        raise ParseError(f"{what}: expected one integer, got {text[:40]!r}")
    return _int(text, what)


def parse_v1_quota(quota: str | bytes, period: str | bytes) -> float | None:
    """v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in cores; None means no limit (quota -1)."""
    q = parse_int(quota, "cpu.cfs_quota_us")
    p = parse_int(period, "cpu.cfs_period_us")
    if q < 0:
        return None
    if q == 0 or p <= 0:
        raise ParseError(f"cpu.cfs_quota_us/period: invalid quota {q} / period {p}")
    return q / p


def parse_cpu_max(data: str | bytes) -> float | None:
    """v2 ``cpu.max`` (``$MAX $PERIOD``) in cores; None means no limit (``max``)."""
    fields = decode(data).split()
    if len(fields) not in (1, 2):
        raise ParseError(f"cpu.max: expected '$MAX $PERIOD', got {decode(data)[:40]!r}")
    period = _int(fields[1], "cpu.max period") if len(fields) == 2 else 100000
    if period <= 0:
        raise ParseError(f"cpu.max: invalid period {period}")
    if fields[0] == "max":
        return None
    quota = _int(fields[0], "cpu.max quota")
    if quota <= 0:
        raise ParseError(f"cpu.max: invalid quota {quota}")
    return quota / period


def parse_flat_keyed(data: str | bytes, what: str = "flat-keyed file") -> dict[str, int]:
    """``key value`` lines (``cpu.stat``, ``memory.stat``) as a dict of ints."""
    out: dict[str, int] = {}
    for line in decode(data).split("\n"):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ParseError(f"{what}: expected 'key value', got {line[:60]!r}")
        out[parts[0]] = _int(parts[1], f"{what} {parts[0][:30]}")
    if not out:
        raise ParseError(f"{what}: empty")
    return out


@dataclass(frozen=True, slots=True)
class PsiLine:
    """One PSI line: averages in percent, ``total_us`` in microseconds."""

    avg10: float
    avg60: float
    avg300: float
    total_us: int


def parse_psi(data: str | bytes) -> dict[str, PsiLine]:
    """A pressure file (``cpu.pressure``, ``/proc/pressure/cpu``): ``{"some": ..., "full": ...}``."""
    out: dict[str, PsiLine] = {}
    for line in decode(data).split("\n"):
        if not line.strip():
            continue
        parts = line.split()
        kind = parts[0]
        values: dict[str, str] = {}
        for tok in parts[1:]:
            key, eq, val = tok.partition("=")
            if not eq:
                raise ParseError(f"pressure: bad field {tok[:40]!r}")
            values[key] = val
        try:
            out[kind] = PsiLine(
                avg10=_float(values["avg10"], "pressure avg10"),
                avg60=_float(values["avg60"], "pressure avg60"),
                avg300=_float(values["avg300"], "pressure avg300"),
                total_us=_int(values["total"], "pressure total"),
            )
        except KeyError as exc:
            raise ParseError(f"pressure: line {kind[:20]!r} lacks {exc.args[0]}") from None
    if "some" not in out:
        raise ParseError("pressure: no 'some' line")
    return out


def parse_memory_value(data: str | bytes, what: str = "memory limit") -> int | None:
    """v1 ``memory.limit_in_bytes`` or v2 ``memory.max``; None means no limit (``max`` or huge)."""
    text = decode(data).strip()
    if text == "max":
        return None
    value = parse_int(text, what)
    if value < 0:
        raise ParseError(f"{what}: negative {value}")
    return None if value >= MEMORY_NO_LIMIT_MIN_BYTES else value


# ---------------------------------------------------------------- cpu lists


def parse_cpu_list(data: str | bytes) -> frozenset[int]:
    """A kernel cpu list (``0-3,8-11``, also ``0-15:2/4`` groups); the empty string is the empty set."""
    text = decode(data).strip()
    cpus: set[int] = set()
    if not text:
        return frozenset()
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ParseError(f"cpu list: empty element in {text[:60]!r}")
        rng, colon, group = part.partition(":")
        lo_s, dash, hi_s = rng.partition("-")
        lo = _int(lo_s, "cpu list")
        hi = _int(hi_s, "cpu list") if dash else lo
        if lo < 0 or hi < lo or hi > MAX_CPU_ID:
            raise ParseError(f"cpu list: bad range {part[:40]!r}")
        if not colon:
            cpus.update(range(lo, hi + 1))
            continue
        # "a-b:used/group": in every group of `group` CPUs from a to b, the first `used`.
        used_s, slash, size_s = group.partition("/")
        used = _int(used_s, "cpu list used size")
        size = _int(size_s, "cpu list group size") if slash else 0
        if not slash or used <= 0 or size <= 0 or used > size:
            raise ParseError(f"cpu list: bad group spec {part[:40]!r}")
        for start in range(lo, hi + 1, size):
            cpus.update(range(start, min(start + used, hi + 1)))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """The kernel's canonical text for a set of CPUs (``{0,1,2,5}`` -> ``"0-2,5"``)."""
    out: list[str] = []
    run_start: int | None = None
    prev = -2
    for cpu in sorted(cpus):
        if cpu != prev + 1:
            if run_start is not None:
                out.append(str(run_start) if run_start == prev else f"{run_start}-{prev}")
            run_start = cpu
        prev = cpu
    if run_start is not None:
        out.append(str(run_start) if run_start == prev else f"{run_start}-{prev}")
    return ",".join(out)


# ---------------------------------------------------------------- /proc files


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """The aggregate ``cpu`` line of /proc/stat in clock ticks (USER_HZ)."""

    busy_ticks: int
    total_ticks: int


def parse_proc_stat_cpu(data: str | bytes) -> CpuTimes:
    """The first (aggregate) ``cpu`` line of /proc/stat; guest time is already inside user/nice."""
    text = decode(data)
    line = text.split("\n", 1)[0]
    fields = line.split()
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        raise ParseError(f"/proc/stat: first line is not the 'cpu' total: {line[:60]!r}")
    vals = [_int(f, "/proc/stat") for f in fields[1:11]]
    if any(v < 0 for v in vals):
        raise ParseError("/proc/stat: negative counter")
    # user nice system idle iowait irq softirq steal [guest guest_nice]
    total = sum(vals[:8])
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return CpuTimes(busy_ticks=total - idle, total_ticks=total)


def parse_meminfo(data: str | bytes) -> dict[str, int]:
    """/proc/meminfo as bytes per key (``kB`` values multiplied by 1024)."""
    out: dict[str, int] = {}
    for line in decode(data).split("\n"):
        if not line.strip():
            continue
        key, colon, rest = line.partition(":")
        parts = rest.split()
        if not colon or not parts or len(parts) > 2:
            raise ParseError(f"meminfo: bad line {line[:60]!r}")
        value = _int(parts[0], f"meminfo {key[:30]}")
        if len(parts) == 2:
            if parts[1] != "kB":
                raise ParseError(f"meminfo: unknown unit {parts[1][:10]!r}")
            value *= 1024
        out[key.strip()] = value
    if "MemTotal" not in out:
        raise ParseError("meminfo: no MemTotal")
    return out


def parse_cpuinfo_count(data: str | bytes) -> int:
    """Number of ``processor`` entries in /proc/cpuinfo (ParseError when none)."""
    count = 0
    for line in decode(data).split("\n"):
        key, colon, _ = line.partition(":")
        if colon and key.strip() == "processor":
            count += 1
    if count == 0:
        raise ParseError("cpuinfo: no 'processor' entry")
    return count


def parse_loadavg(data: str | bytes) -> tuple[float, float, float]:
    """The three load averages of /proc/loadavg."""
    fields = decode(data).split()
    if len(fields) < 3:
        raise ParseError(f"loadavg: expected 3 numbers, got {decode(data)[:40]!r}")
    return (_float(fields[0], "loadavg"), _float(fields[1], "loadavg"), _float(fields[2], "loadavg"))


def parse_pid_stat_fields(data: str | bytes) -> list[str]:
    """The fields of ``/proc/PID/stat`` after ``comm``: index 0 is field 3 (state), so field N is
    ``[N - 3]`` (ppid ``[1]``, starttime ``[19]``). ``comm`` may hold spaces and parentheses: the
    split is after the last ``)``. ``ParseError`` when there is none."""
    text = decode(data)
    end = text.rfind(")")
    if end < 0:
        raise ParseError(f"/proc/PID/stat: no ')' after comm in {text[:60]!r}")
    return text[end + 2 :].split()

