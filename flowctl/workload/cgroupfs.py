"""Create, limit, fill and remove a cgroup through the kernel's own files (v1 and v2).

v1: one same-named group in each of cpu, cpuacct, cpuset and memory (as container
runtimes do, and as lxcfs needs: it looks up the cpuset path and reads the quota
at that same path in the cpu hierarchy). v2: one group, with the controllers it
needs enabled in the parent's ``cgroup.subtree_control``; on a hybrid host whose
memory controller is still bound to v1, a memory limit goes to a same-named v1
memory group beside it.

Groups are created under the launcher's own cgroup in each hierarchy, so limits
that apply to the launcher keep applying to the workload.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from flowctl.cpu.mounts import discover
from flowctl.errors import CgroupError, ConfigError, ControllerMissingError, WorkloadError
from flowctl.workload.spec import CFS_PERIOD_US, WorkloadSpec, format_cpuset, parse_cpuset, quota_us_for

__all__ = [
    "Group",
    "Hierarchies",
    "create_group",
    "enable_controllers",
    "find_hierarchies",
    "set_child_subreaper",
]

V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory")
Version = Literal["auto", "v1", "v2"]


@dataclass(frozen=True, slots=True)
class Hierarchies:
    """This process's own cgroup directory in each v1 controller hierarchy and in cgroup2.

    ``read_only`` holds the directories that sit on a read-only mount.
    """

    v1: dict[str, str] = field(default_factory=dict)
    v2: str | None = None
    read_only: frozenset[str] = frozenset()


def find_hierarchies(root: str = "/", pid: int | str = "self") -> Hierarchies:
    """Where this process's cgroups are (via ``flowctl.cpu.mounts.discover``); ``CgroupError`` if unreadable."""
    disc = discover(root, pid)
    if not disc.dirs and not disc.mounts:
        raise CgroupError(f"cannot find any cgroup of this process: {'; '.join(disc.errors) or 'no cgroup mounts'}")
    ro_points = {m.mount_point for m in disc.mounts if m.fstype in ("cgroup", "cgroup2") and "ro" in m.options}
    v1 = {c: d.path for c, d in disc.dirs.items() if d.version == 1 and c in V1_CONTROLLERS}
    v2_dir = next((d for d in disc.dirs.values() if d.version == 2), None)
    read_only = frozenset(d.path for d in disc.dirs.values() if d.mount_point in ro_points)
    return Hierarchies(v1=v1, v2=v2_dir.path if v2_dir else None, read_only=read_only)


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    """Write one value to a cgroup file; errors become ``CgroupError`` naming the file."""
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(value)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror or exc}") from exc


def set_child_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (PR_SET_CHILD_SUBREAPER); True if it worked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # 36 = PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


@dataclass(slots=True)
class Group:
    """A cgroup we created. ``paths`` maps each controller to its directory (v2: all the same one, but
    memory in a v1 group on a hybrid host whose memory controller is bound to v1)."""

    name: str
    version: Literal[1, 2]
    paths: dict[str, str]
    period_us: int = CFS_PERIOD_US

    @property
    def dirs(self) -> list[str]:
        """Distinct directories (co-mounted v1 controllers share one)."""
        return list(dict.fromkeys(self.paths.values()))

    def add_pid(self, pid: int) -> None:
        """Move ``pid`` (all its threads) into the group in every hierarchy."""
        for d in self.dirs:
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def pids(self) -> set[int]:
        """Every process currently in the group (any hierarchy)."""
        found: set[int] = set()
        for d in self.dirs:
            try:
                found.update(int(x) for x in _read(os.path.join(d, "cgroup.procs")).split())
            except FileNotFoundError:
                continue
        return found

    def set_cpus(self, cores: float | None) -> None:
        """Change the CPU quota in place; ``None`` removes it."""
        if "cpu" not in self.paths:
            raise ControllerMissingError(f"group {self.name} has no cpu controller")
        d = self.paths["cpu"]
        if self.version == 1:
            _write(os.path.join(d, "cpu.cfs_quota_us"), "-1" if cores is None else str(quota_us_for(cores, self.period_us)))
        else:
            quota = "max" if cores is None else str(quota_us_for(cores, self.period_us))
            _write(os.path.join(d, "cpu.max"), f"{quota} {self.period_us}")

    def set_memory(self, size_bytes: int | None) -> None:
        """Change the memory limit in place; ``None`` removes it."""
        if "memory" not in self.paths:
            raise ControllerMissingError(f"group {self.name} has no memory controller")
        d = self.paths["memory"]
        if self.version == 1 or os.path.exists(os.path.join(d, "memory.limit_in_bytes")):  # v1 (or hybrid) memory
            _write(os.path.join(d, "memory.limit_in_bytes"), "-1" if size_bytes is None else str(size_bytes))
        else:
            _write(os.path.join(d, "memory.max"), "max" if size_bytes is None else str(size_bytes))

    def _kill_all(self, sig: int = signal.SIGKILL, *, spare: Iterable[int] = ()) -> set[int]:
        killed = self.pids() - set(spare)
        for pid in killed:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return killed

    async def remove(self, *, main_pid: int | None = None, timeout_s: float = 10.0) -> None:
        """SIGKILL whatever is left inside, reap orphans that became ours, and rmdir every directory.

        ``main_pid`` is the launcher's direct child: someone else (asyncio) reaps it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        killed: set[int] = set()
        remaining = list(reversed(self.dirs))
        while True:
            killed |= self._kill_all()
            _reap(killed - {main_pid} if main_pid else killed)
            for d in list(remaining):
                try:
                    os.rmdir(d)
                    remaining.remove(d)
                except FileNotFoundError:
                    remaining.remove(d)
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise CgroupError(f"cannot remove cgroup {d}: {exc.strerror}") from exc
            if not remaining:
                return
            if loop.time() > deadline:
                raise WorkloadError(
                    f"cgroup {remaining[0]} still busy after {timeout_s:g}s (pids: {sorted(self.pids())})"
                )
            await asyncio.sleep(0.02)


def _reap(pids: Iterable[int]) -> None:
    """waitpid() the given pids if they are (now) our children; ignore the others."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _mkdir_group(parent: str, name: str, read_only: bool) -> str:
    path = os.path.join(parent, name)
    if read_only:
        raise CgroupError(f"cgroup filesystem at {parent} is mounted read-only")
    try:
        os.mkdir(path)
    except FileExistsError:
        raise CgroupError(f"cgroup {path} already exists: choose another --name") from None
    except FileNotFoundError:
        raise CgroupError(f"cgroup parent {parent} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.EROFS:
            raise CgroupError(f"cgroup filesystem at {parent} is read-only") from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise CgroupError(f"no permission to create a cgroup in {parent} (run as root)") from exc
        raise CgroupError(f"cannot create cgroup {path}: {exc.strerror}") from exc
    return path


def _check_cpuset(requested: frozenset[int], allowed_text: str, where: str) -> None:
    allowed = parse_cpuset(allowed_text) if allowed_text else frozenset()
    extra = requested - allowed
    if extra:
        raise ConfigError(
            f"invalid --cpuset {format_cpuset(requested)}: CPU {format_cpuset(extra)} not available "
            f"(allowed here: {allowed_text or 'none'}, from {where})"
        )


def _undo(created: list[str]) -> None:
    for d in reversed(created):
        try:
            os.rmdir(d)
        except OSError:
            pass


def create_group(
    spec: WorkloadSpec,
    *,
    version: Version = "auto",
    hierarchies: Hierarchies | None = None,
    need_lxcfs_layout: bool = False,
) -> Group:
    """Create the group for ``spec`` and write its limits; on any error nothing is left created.

    ``version="auto"`` picks v1 when the cpu controller is mounted as v1 (hybrid hosts), else v2.
    ``need_lxcfs_layout`` requires cpuset and memory on v1 even without limits of that kind.
    """
    h = hierarchies if hierarchies is not None else find_hierarchies()
    if version == "auto":
        version = "v1" if "cpu" in h.v1 else "v2"
    if version == "v1":
        return _create_v1(spec, h, need_lxcfs_layout)
    return _create_v2(spec, h)


def _create_v1(spec: WorkloadSpec, h: Hierarchies, need_lxcfs_layout: bool) -> Group:
    wanted = ["cpu", "cpuacct"]
    if spec.cpuset is not None or need_lxcfs_layout or "cpuset" in h.v1:
        wanted.append("cpuset")
    if spec.memory_bytes is not None or need_lxcfs_layout or "memory" in h.v1:
        wanted.append("memory")
    missing = [c for c in wanted if c not in h.v1]
    if missing:
        raise ControllerMissingError(
            f"cgroup v1 controller {', '.join(missing)} is not mounted (looked in /proc/self/mountinfo)"
        )
    created: list[str] = []
    paths: dict[str, str] = {}
    by_parent: dict[str, str] = {}
    try:
        for ctrl in wanted:
            parent = h.v1[ctrl]
            if parent not in by_parent:  # co-mounted controllers (cpu,cpuacct) share one directory
                by_parent[parent] = _mkdir_group(parent, spec.name, parent in h.read_only)
                created.append(by_parent[parent])
            paths[ctrl] = by_parent[parent]
        if "cpuset" in paths:
            d, parent = paths["cpuset"], os.path.dirname(paths["cpuset"])
            _write(os.path.join(d, "cpuset.mems"), _read(os.path.join(parent, "cpuset.mems")))
            parent_cpus = _read(os.path.join(parent, "cpuset.cpus"))
            if spec.cpuset is not None:
                _check_cpuset(spec.cpuset, parent_cpus, os.path.join(parent, "cpuset.cpus"))
                _write(os.path.join(d, "cpuset.cpus"), format_cpuset(spec.cpuset))
            else:
                _write(os.path.join(d, "cpuset.cpus"), parent_cpus)
        _write(os.path.join(paths["cpu"], "cpu.cfs_period_us"), str(CFS_PERIOD_US))
        quota = "-1" if spec.cpus is None else str(quota_us_for(spec.cpus))
        _write(os.path.join(paths["cpu"], "cpu.cfs_quota_us"), quota)
        if spec.memory_bytes is not None:
            _write(os.path.join(paths["memory"], "memory.limit_in_bytes"), str(spec.memory_bytes))
    except BaseException:
        _undo(created)
        raise
    return Group(name=spec.name, version=1, paths=paths)


def enable_controllers(parent: str, controllers: Iterable[str]) -> None:
    """Enable ``controllers`` for the children of the v2 group ``parent`` (``+ctrl`` in cgroup.subtree_control)."""
    path = os.path.join(parent, "cgroup.subtree_control")
    for ctrl in controllers:
        try:
            with open(path, "w", encoding="ascii") as f:
                f.write(f"+{ctrl}")
        except OSError as exc:
            why = {
                errno.EBUSY: "a non-root cgroup with processes in it cannot delegate controllers",
                errno.ENOENT: "the controller is not enabled for this group by its parent",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise CgroupError(f"cannot enable {ctrl} in {path}: {why}") from exc


def _create_v2(spec: WorkloadSpec, h: Hierarchies) -> Group:
    if h.v2 is None:
        raise ControllerMissingError("no cgroup2 filesystem is mounted (and the cpu controller is not on v1)")
    parent = h.v2
    needed = [c for c, on in (("cpu", spec.cpus is not None), ("cpuset", spec.cpuset is not None),
                              ("memory", spec.memory_bytes is not None)) if on]
    try:
        available = _read(os.path.join(parent, "cgroup.controllers")).split()
        enabled = _read(os.path.join(parent, "cgroup.subtree_control")).split()
    except OSError as exc:
        raise CgroupError(f"cannot read the cgroup2 controller files in {parent}: {exc.strerror}") from exc
    # Hybrid host with cpu on v2 but memory still bound to v1: the memory limit goes to a same-named v1 group.
    v1_memory = "memory" in needed and "memory" not in available and "memory" in h.v1
    if v1_memory:
        needed.remove("memory")
    missing = [c for c in needed if c not in available]
    if missing:
        raise ControllerMissingError(
            f"cgroup v2 controller {', '.join(missing)} is not available in {parent} "
            f"(cgroup.controllers: {' '.join(available) or 'empty'}; on a hybrid host it may be bound to v1)"
        )
    enable_controllers(parent, [c for c in needed if c not in enabled])
    d = _mkdir_group(parent, spec.name, parent in h.read_only)
    created = [d]
    paths = {c: d for c in V1_CONTROLLERS}
    try:
        if v1_memory:
            paths["memory"] = _mkdir_group(h.v1["memory"], spec.name, h.v1["memory"] in h.read_only)
            created.append(paths["memory"])
        if spec.cpuset is not None:
            eff_path = os.path.join(parent, "cpuset.cpus.effective")
            if os.path.exists(eff_path):
                _check_cpuset(spec.cpuset, _read(eff_path), eff_path)
            _write(os.path.join(d, "cpuset.cpus"), format_cpuset(spec.cpuset))
        if spec.cpus is not None:
            _write(os.path.join(d, "cpu.max"), f"{quota_us_for(spec.cpus)} {CFS_PERIOD_US}")
        if spec.memory_bytes is not None:
            name = "memory.limit_in_bytes" if v1_memory else "memory.max"
            _write(os.path.join(paths["memory"], name), str(spec.memory_bytes))
    except BaseException:
        _undo(created)
        raise
    return Group(name=spec.name, version=2, paths=paths)
