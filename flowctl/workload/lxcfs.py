"""Find or start the lxcfs that serves per-cgroup /proc views, and stop what we started.

Policy: a system lxcfs at /var/lib/lxcfs is reused when it runs with
``--enable-cfs`` (without it the CPU views show the host). Anything else is
somebody's private mount that may vanish under us, so we start our own:
``lxcfs -f --enable-cfs -p PIDFILE DIR`` on a temporary directory we own, with a
parent-death signal so it does not outlive a killed launcher. Stopping = lazy
unmount, wait for the process, remove the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass

from flowctl.errors import LxcfsError

__all__ = [
    "SYSTEM_LXCFS_DIR",
    "LxcfsMount",
    "find_lxcfs_binary",
    "is_lxcfs_mount",
    "start_lxcfs",
    "stop_lxcfs",
    "system_lxcfs",
]

SYSTEM_LXCFS_DIR = "/var/lib/lxcfs"
_FALLBACK_PATH = "/usr/bin:/usr/sbin:/bin:/sbin"
INSTALL_HINT = "lxcfs is not installed (Debian/Ubuntu: apt-get install -y lxcfs)"


@dataclass(slots=True)
class LxcfsMount:
    """An lxcfs mount we use. ``process`` is set only when we started it (and so must stop it)."""

    dir: str
    process: asyncio.subprocess.Process | None = None
    workdir: str | None = None

    @property
    def owned(self) -> bool:
        return self.process is not None


def find_lxcfs_binary() -> str:
    """Path of the lxcfs binary, or ``LxcfsError`` with the install hint."""
    path = shutil.which("lxcfs") or shutil.which("lxcfs", path=_FALLBACK_PATH)
    if path is None:
        raise LxcfsError(INSTALL_HINT)
    return path


def _mountinfo_fstypes(proc: str = "/proc/self") -> dict[str, str]:
    out: dict[str, str] = {}
    with open(os.path.join(proc, "mountinfo"), encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, sep, right = line.partition(" - ")
            if sep:
                out[left.split()[4].replace("\\040", " ")] = right.split()[0]
    return out


def is_lxcfs_mount(path: str) -> bool:
    """True if ``path`` is a live (readable) lxcfs mount point."""
    if _mountinfo_fstypes().get(os.path.realpath(path)) != "fuse.lxcfs":
        return False
    try:
        with open(os.path.join(path, "proc/uptime"), "rb") as f:
            f.read(64)
    except OSError:  # ENOTCONN: lxcfs died, the mount is a corpse
        return False
    return True


def _lxcfs_cmdlines() -> list[list[str]]:
    found: list[list[str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == "lxcfs":
            found.append(argv)
    return found


def system_lxcfs() -> str | None:
    """/var/lib/lxcfs if a live lxcfs with ``--enable-cfs`` serves it, else None."""
    if not is_lxcfs_mount(SYSTEM_LXCFS_DIR):
        return None
    for argv in _lxcfs_cmdlines():
        if "--enable-cfs" in argv and any(os.path.realpath(a) == SYSTEM_LXCFS_DIR for a in argv[1:]):
            return SYSTEM_LXCFS_DIR
    return None


async def start_lxcfs(*, binary: str | None = None, timeout_s: float = 10.0) -> LxcfsMount:
    """Start a private ``lxcfs --enable-cfs`` on a fresh temporary directory and wait for its mount."""
    exe = binary or find_lxcfs_binary()
    if not os.path.exists("/dev/fuse"):
        raise LxcfsError("cannot start lxcfs: /dev/fuse is missing (load the fuse module)")
    workdir = tempfile.mkdtemp(prefix="flowctl-lxcfs-")
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    cmd = [exe, "-f", "--enable-cfs", "-p", os.path.join(workdir, "lxcfs.pid"), mnt]
    setpriv = shutil.which("setpriv")
    if setpriv:  # stop lxcfs if the launcher dies without cleaning up
        cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
    log_path = os.path.join(workdir, "lxcfs.log")
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
        )
    mount = LxcfsMount(dir=mnt, process=proc, workdir=workdir)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while not is_lxcfs_mount(mnt):
            if proc.returncode is not None:
                raise LxcfsError(f"lxcfs exited with status {proc.returncode} before mounting: {_tail(log_path)}")
            if loop.time() > deadline:
                raise LxcfsError(f"lxcfs did not mount {mnt} within {timeout_s:g}s: {_tail(log_path)}")
            await asyncio.sleep(0.02)
    except BaseException:
        await stop_lxcfs(mount)
        raise
    return mount


def _tail(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(no output)"


def _umount_lazy(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(path.encode(), 2)  # 2 = MNT_DETACH; EINVAL (not mounted) is fine


async def stop_lxcfs(mount: LxcfsMount, *, timeout_s: float = 5.0) -> None:
    """Unmount and stop an lxcfs we started and remove its directory; a no-op for a borrowed one."""
    proc = mount.process
    if proc is None:
        return
    if os.path.ismount(mount.dir) or mount.dir in _mountinfo_fstypes():
        _umount_lazy(mount.dir)
    if proc.returncode is None:
        try:
            async with asyncio.timeout(timeout_s):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            await proc.wait()
    if mount.workdir:
        shutil.rmtree(mount.workdir, ignore_errors=True)
