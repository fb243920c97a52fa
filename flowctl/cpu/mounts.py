"""Where a process's cgroup directories are: /proc/PID/mountinfo + /proc/PID/cgroup -> paths.

``discover(root, pid)`` never raises: what it cannot resolve is left out and
the reason is appended to ``Discovery.errors``. Rules (REFERENCE.md §1):

- v1 hierarchies are matched by controller *tokens* in the mount's super
  options and in the cgroup line (``cpu,cpuacct`` == ``cpuacct,cpu``);
- v2 is the ``0::`` line and an ``cgroup2`` mount;
- the cgroup path is made relative to the mount's root by whole path
  components. A path outside the mount root (or with ``..``: a private cgroup
  namespace that still sees the host's mount, where mountinfo's root is
  ``/../../..`` and /proc/PID/cgroup says ``0::/``) is found exactly by
  looking for the pid in ``cgroup.procs`` under the mount; only when it is
  not there does it fall back to the mount point, with a warning;
- hybrid hosts: the CPU version is that of the hierarchy that has ``cpu``.

``pid`` other than ``"self"`` reads ``ROOT/proc/PID/{mountinfo,cgroup}`` and
resolves mount points under ``ROOT/proc/PID/root`` (the process's mount
namespace), so a sidecar can watch a neighbour.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from flowctl.cpu.parse import CgroupLine, MountEntry, parse_cgroup_file, parse_mountinfo
from flowctl.errors import ParseError

__all__ = ["CONTROLLERS", "CgroupDir", "Discovery", "discover", "discover_path", "find_pid_group", "read_file", "under_root"]

CONTROLLERS: tuple[str, ...] = ("cpu", "cpuacct", "cpuset", "memory")
UNIFIED = "unified"
_READ_LIMIT_BYTES = 1 << 20


def read_file(path: str) -> bytes:
    """The bytes of a (small) file; OSError propagates. Reads at most 1 MiB."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        size = 0
        while size < _READ_LIMIT_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def under_root(root: str, path: str) -> str:
    """``path`` (absolute, as the process sees it) located under the filesystem ``root``."""
    if root in ("", "/"):
        return path
    return os.path.join(root, path.lstrip("/"))


@dataclass(frozen=True, slots=True)
class CgroupDir:
    """One resolved cgroup directory.

    ``path`` is where we read it (already under root); ``base`` is the mount point
    (ancestors stop there); ``cgroup_path`` is the path /proc/PID/cgroup names.
    """

    version: int
    path: str
    base: str
    cgroup_path: str
    mount_point: str = ""
    mount_root: str = "/"

    def ancestors(self) -> list[str]:
        """The leaf and every parent directory up to and including the mount point."""
        out = [self.path]
        cur = self.path
        base = self.base.rstrip("/") or "/"
        while cur != base and cur.startswith(base):
            parent = os.path.dirname(cur)
            if parent == cur or len(parent) < len(base):
                break
            out.append(parent)
            cur = parent
        return out


@dataclass(slots=True)
class Discovery:
    """The cgroup directories of one process, per controller (``"unified"``: the v2 dir on hybrid hosts)."""

    version: int | None = None
    dirs: dict[str, CgroupDir] = field(default_factory=dict)
    mounts: list[MountEntry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def cpu_dir(self) -> CgroupDir | None:
        """The directory of the cpu controller (v1) or the unified dir (v2)."""
        return self.dirs.get("cpu")


def _relative(path: str, mount_root: str) -> str | None:
    """``path`` relative to ``mount_root`` by whole components (``"/"`` when equal); None when outside."""
    if ".." in path.split("/"):
        return None
    root = mount_root.rstrip("/")
    if not root:
        return path
    if path == root:
        return "/"
    if path.startswith(root + "/"):
        return path[len(root):]
    return None


def find_pid_group(base: str, pid: int) -> str | None:
    """The directory under ``base`` whose ``cgroup.procs`` lists ``pid`` (a process is in one group per hierarchy)."""
    want = str(pid).encode()
    for dirpath, _dirs, files in os.walk(base):
        if "cgroup.procs" not in files:
            continue
        try:
            procs = read_file(os.path.join(dirpath, "cgroup.procs"))
        except OSError:
            continue
        if want in procs.split():
            return os.path.normpath(dirpath)
    return None


def _search_pid(root: str, pid: int | str) -> int | None:
    """The pid to look for in ``cgroup.procs`` (as the reader's pid namespace numbers it), or None."""
    if pid != "self":
        try:
            return int(pid)
        except ValueError:
            return None
    if root in ("", "/"):
        return os.getpid()
    try:  # a fixture tree says who "self" is in proc/self/stat
        return int(read_file(os.path.join(root, "proc", "self", "stat")).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _resolve(mounts: list[MountEntry], cg_path: str, version: int, fs_root: str, errors: list[str], what: str,
             search_pid: int | None = None) -> CgroupDir | None:
    if not mounts:
        return None
    best: tuple[MountEntry, str] | None = None
    for m in mounts:
        rel = _relative(cg_path, m.root)
        if rel is not None and (best is None or len(m.root) > len(best[0].root)):
            best = (m, rel)
    if best is None:
        # Outside the mount root: our group is somewhere under the mount; the kernel's
        # cgroup.procs says exactly where.
        for m in mounts:
            base = os.path.normpath(under_root(fs_root, m.mount_point))
            found = find_pid_group(base, search_pid) if search_pid is not None else None
            if found is not None:
                return CgroupDir(version=version, path=found, base=base, cgroup_path=cg_path,
                                 mount_point=m.mount_point, mount_root=m.root)
        m = mounts[0]
        looked = f"pid {search_pid} is in no cgroup.procs under it" if search_pid is not None else "no pid to look for"
        errors.append(
            f"{what}: cgroup path {cg_path!r} is outside the mount root {m.root!r} of {m.mount_point!r} "
            f"and {looked}; using the mount point"
        )
        best = (m, "/")
    m, rel = best
    base = under_root(fs_root, m.mount_point)
    path = os.path.normpath(os.path.join(base, rel.lstrip("/"))) if rel != "/" else os.path.normpath(base)
    return CgroupDir(version=version, path=path, base=os.path.normpath(base), cgroup_path=cg_path,
                     mount_point=m.mount_point, mount_root=m.root)


def proc_dir(root: str, pid: int | str) -> str:
    """``ROOT/proc/PID``."""
    return os.path.join(root or "/", "proc", str(pid))


def fs_root_of(root: str, pid: int | str) -> str:
    """The filesystem root paths of process ``pid`` live under (its mount namespace for a pid)."""
    if pid == "self":
        return root or "/"
    return os.path.join(proc_dir(root, pid), "root")


def read_mounts(root: str, pid: int | str, errors: list[str]) -> list[MountEntry]:
    """Parsed ``ROOT/proc/PID/mountinfo``; problems go to ``errors``."""
    path = os.path.join(proc_dir(root, pid), "mountinfo")
    try:
        mounts, bad = parse_mountinfo(read_file(path))
    except (OSError, ParseError) as exc:
        errors.append(f"{path}: {exc}")
        return []
    errors.extend(f"{path}: skipped line: {b}" for b in bad)
    return mounts


def discover(root: str = "/", pid: int | str = "self", cache: dict[str, object] | None = None) -> Discovery:
    """Resolve the cgroup directories of ``pid`` as seen under ``root``; never raises.

    With ``cache`` (a dict owned by the caller), the result is reused while
    /proc/PID/mountinfo and /proc/PID/cgroup have not changed.
    """
    mi_path = os.path.join(proc_dir(root, pid), "mountinfo")
    cg_file = os.path.join(proc_dir(root, pid), "cgroup")
    if cache is not None:
        try:
            key: object = (read_file(mi_path), read_file(cg_file))
        except OSError:
            key = None
        hit = cache.get("discovery")
        if key is not None and cache.get("key") == key and isinstance(hit, Discovery):
            return hit
        result = discover(root, pid)
        cache["key"], cache["discovery"] = key, result
        return result
    disc = Discovery()
    disc.mounts = read_mounts(root, pid, disc.errors)
    try:
        lines = parse_cgroup_file(read_file(cg_file))
    except (OSError, ParseError) as exc:
        disc.errors.append(f"{cg_file}: {exc}")
        return disc
    fs_root = fs_root_of(root, pid)
    search_pid = _search_pid(root, pid)
    v1_mounts = [m for m in disc.mounts if m.fstype == "cgroup"]
    v2_mounts = [m for m in disc.mounts if m.fstype == "cgroup2"]
    v2_line: CgroupLine | None = next((ln for ln in lines if ln.hierarchy_id == 0 and not ln.controllers), None)

    for ctrl in CONTROLLERS:
        line = next((ln for ln in lines if ln.hierarchy_id != 0 and ctrl in ln.controllers), None)
        if line is None:
            continue
        mounts = [m for m in v1_mounts if ctrl in m.super_options]
        if not mounts:
            disc.errors.append(f"cgroup v1 controller {ctrl} is in {cg_file} but not mounted")
            continue
        d = _resolve(mounts, line.path, 1, fs_root, disc.errors, f"v1 {ctrl}", search_pid)
        if d is not None:
            disc.dirs[ctrl] = d

    v2_dir: CgroupDir | None = None
    if v2_line is not None and v2_mounts:
        v2_dir = _resolve(v2_mounts, v2_line.path, 2, fs_root, disc.errors, "v2", search_pid)
    elif v2_line is not None and not any(d.version == 1 for d in disc.dirs.values()):
        disc.errors.append(f"{cg_file} has a v2 line but no cgroup2 filesystem is mounted")

    if "cpu" in disc.dirs:
        disc.version = 1
        if v2_dir is not None:
            disc.dirs[UNIFIED] = v2_dir
    elif v2_dir is not None:
        disc.version = 2
        for ctrl in CONTROLLERS:
            disc.dirs.setdefault(ctrl, v2_dir)
        disc.dirs[UNIFIED] = v2_dir
    else:
        disc.errors.append("no cgroup hierarchy with the cpu controller found")
    return disc


def discover_path(cgroup_path: str, root: str = "/") -> Discovery:
    """Directories for a cgroup given by its directory (v2 dir, or a dir in any v1 hierarchy); never raises.

    For v1 the same relative path is looked up in the other controllers' hierarchies.
    """
    disc = Discovery()
    disc.mounts = read_mounts(root, "self", disc.errors)
    path = os.path.normpath(cgroup_path)
    if not os.path.isdir(path):
        disc.errors.append(f"{path}: not a directory")
        return disc
    # The mount that holds the path: the longest mount point that is a component prefix.
    holder: MountEntry | None = None
    holder_base = ""
    for m in disc.mounts:
        if m.fstype not in ("cgroup", "cgroup2"):
            continue
        base = os.path.normpath(under_root(root, m.mount_point))
        if (path == base or path.startswith(base.rstrip("/") + "/")) and len(base) > len(holder_base):
            holder, holder_base = m, base
    if os.path.exists(os.path.join(path, "cgroup.controllers")) or (holder is not None and holder.fstype == "cgroup2"):
        d = CgroupDir(version=2, path=path, base=holder_base or path, cgroup_path=path,
                      mount_point=holder.mount_point if holder else "")
        disc.version = 2
        for ctrl in CONTROLLERS:
            disc.dirs[ctrl] = d
        disc.dirs[UNIFIED] = d
        return disc
    if holder is None:
        # Not under any known mount: treat the directory as a v1 cpu+cpuacct dir on its own.
        disc.errors.append(f"{path}: not under a mounted cgroup hierarchy; reading it alone")
        d = CgroupDir(version=1, path=path, base=path, cgroup_path=path)
        disc.version = 1
        for ctrl in CONTROLLERS:
            if any(n.startswith(ctrl + ".") for n in _listdir(path)):
                disc.dirs[ctrl] = d
        return disc
    rel = path[len(holder_base):] or "/"
    for ctrl in CONTROLLERS:
        for m in disc.mounts:
            if m.fstype == "cgroup" and ctrl in m.super_options:
                base = os.path.normpath(under_root(root, m.mount_point))
                cand = os.path.normpath(os.path.join(base, rel.lstrip("/"))) if rel != "/" else base
                if os.path.isdir(cand):
                    disc.dirs[ctrl] = CgroupDir(version=1, path=cand, base=base, cgroup_path=rel,
                                                mount_point=m.mount_point, mount_root=m.root)
                    break
        else:
            if ctrl in ("cpu", "cpuacct"):
                disc.errors.append(f"{path}: no {ctrl} group at the same path {rel!r}")
    disc.version = 1 if "cpu" in disc.dirs or "cpuacct" in disc.dirs else None
    if disc.version is None:
        disc.errors.append(f"{path}: no cpu or cpuacct group found")
    return disc


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
