"""What a launcher leaves if it is killed (SIGKILL, OOM): its groups, its lxcfs mount, its run files.

Every launched workload writes a record, ``RUN_DIR/launchers/<pid>-<start>-<name>.json``:
the launcher's pid and start time (so a reused pid is not mistaken for it), the
group directories and the lxcfs work directory it owns. A clean ``close()``
removes the record with the rest. ``collect()`` (``flowctl gc``, and ``flowctl
run`` at start) looks at the records of launchers that are gone and removes
what is left of them: the groups that are empty (a group that still holds a
process is kept, and so is its record, for a later run), a dead or orphaned lxcfs
mount (lazy unmount; its lxcfs process, if any is left, is sent SIGTERM) and its
directory, and the record. A record of a live launcher is never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["RUN_DIR_ENV", "Collected", "collect", "launcher_alive", "remove_record", "run_dir", "write_record"]

RUN_DIR_ENV = "FLOWCTL_RUN_DIR"
_DEFAULT_RUN_DIR = "/run/flowctl"


def run_dir() -> str:
    """Where records live: ``$FLOWCTL_RUN_DIR`` or /run/flowctl."""
    return os.environ.get(RUN_DIR_ENV) or _DEFAULT_RUN_DIR


def _records_dir(base: str | None) -> str:
    return os.path.join(base or run_dir(), "launchers")


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # exited, not yet reaped: gone for our purpose
        return None
    return int(fields[19])


def launcher_alive(pid: int, start_ticks: int | None) -> bool:
    """True if ``pid`` runs and is the same process that wrote the record."""
    now = _start_ticks(pid)
    return now is not None and (start_ticks is None or now == start_ticks)


def write_record(name: str, group_dirs: Sequence[str], lxcfs_workdir: str | None, lxcfs_dir: str | None,
                 *, base: str | None = None) -> str | None:  # fmt: skip
    """Record what this process owns for workload ``name``; the record's path (None if it cannot be written)."""
    pid = os.getpid()
    d = _records_dir(base)
    path = os.path.join(d, f"{pid}-{_start_ticks(pid)}-{name}.json")
    body = {"pid": pid, "start_ticks": _start_ticks(pid), "name": name, "groups": list(group_dirs),
            "lxcfs_workdir": lxcfs_workdir, "lxcfs_dir": lxcfs_dir}  # fmt: skip
    try:
        os.makedirs(d, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(body, f)
        os.replace(tmp, path)
    except OSError:
        return None  # best effort: a launcher that cannot record still runs
    return path


def remove_record(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@dataclass
class Collected:
    """What ``collect()`` did: paths removed, kept (still in use) and left to live launchers."""

    removed_groups: list[str] = field(default_factory=list)
    busy_groups: list[str] = field(default_factory=list)
    unmounted: list[str] = field(default_factory=list)
    removed_dirs: list[str] = field(default_factory=list)
    removed_records: list[str] = field(default_factory=list)
    live_records: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.__dict__.items()}


def _mounted(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return any(line.split()[4].replace("\\040", " ") == path for line in f if len(line.split()) > 4)
    except OSError:
        return False


def _umount_lazy(path: str) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.umount2(path.encode(), 2)) == 0  # MNT_DETACH


def _lxcfs_pid(workdir: str) -> int | None:
    """The lxcfs that served ``workdir`` if it still runs (its pidfile, checked against its command line)."""
    try:
        with open(os.path.join(workdir, "lxcfs.pid")) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    if argv and os.path.basename(argv[0]) == b"lxcfs" and any(a.startswith(workdir.encode()) for a in argv):
        return pid
    return None


def _collect_one(path: str, rec: dict[str, object], out: Collected) -> None:
    done = True
    for d in reversed([str(g) for g in rec.get("groups") or []]):  # type: ignore[attr-defined]
        if not os.path.isdir(d):
            continue
        try:
            os.rmdir(d)  # only an empty group can be removed: a running workload keeps it
            out.removed_groups.append(d)
        except OSError as exc:
            done = False
            out.busy_groups.append(d) if exc.errno == 16 else out.errors.append(f"{d}: {exc.strerror or exc}")
    workdir = rec.get("lxcfs_workdir")
    if isinstance(workdir, str) and workdir:
        mnt = str(rec.get("lxcfs_dir") or os.path.join(workdir, "mnt"))
        if _mounted(mnt):
            if _umount_lazy(mnt):
                out.unmounted.append(mnt)
            else:
                done = False
                out.errors.append(f"{mnt}: cannot unmount")
        pid = _lxcfs_pid(workdir)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # after the unmount it has nothing to serve
        if os.path.isdir(workdir) and not _mounted(mnt):
            shutil.rmtree(workdir, ignore_errors=True)
            out.removed_dirs.append(workdir)
    if done:
        remove_record(path)
        out.removed_records.append(path)


def collect(*, base: str | None = None) -> Collected:
    """Remove what launchers that are gone left behind (see the module docstring)."""
    out = Collected()
    d = _records_dir(base)
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return out
    for n in names:
        if not n.endswith(".json"):
            continue
        path = os.path.join(d, n)
        try:
            with open(path) as f:
                rec = json.load(f)
            pid = int(rec["pid"])
            ticks = rec.get("start_ticks")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.errors.append(f"{path}: unreadable record ({exc})")
            continue
        if launcher_alive(pid, int(ticks) if ticks is not None else None):
            out.live_records.append(path)
            continue
        _collect_one(path, rec, out)
    return out
