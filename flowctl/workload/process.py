"""Start a command inside a CPU/memory-limited cgroup, optionally with lxcfs /proc views.

The child is moved into the group *before* it execs: it is spawned as a tiny
bash wrapper that blocks on a pipe, the launcher writes its pid into every
``cgroup.procs`` (errors surface here, as Python exceptions), then says "go".
With lxcfs views the wrapper runs under ``unshare --mount --propagation private``
and bind-mounts the lxcfs files over /proc/... inside that private namespace,
so nothing leaks to the host; it reports "ready" on a second pipe and execs the
command (same pid throughout). No Python runs between fork and exec.

Cleanup (``close()``, also on leaving ``async with launch(...)``): stop the
child (SIGTERM, then SIGKILL after ``stop_timeout_s``), SIGKILL and reap
anything left in the group, remove the group, stop an lxcfs we started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import IO, Any

from flowctl.cpu.lxcfs import LXCFS_VIEW_FILES
from flowctl.errors import ConfigError, FlowctlError, WorkloadError
from flowctl.workload.cgroupfs import Group, Version, create_group, set_child_subreaper
from flowctl.workload.leftovers import remove_record, write_record
from flowctl.workload.lxcfs import LxcfsMount, is_lxcfs_mount, start_lxcfs, stop_lxcfs, system_lxcfs
from flowctl.workload.spec import WorkloadSpec, parse_cpus, parse_size

__all__ = ["LimitedProcess", "launch"]

_SETUP_FAILED = 125

# $1 go-fd, $2 status-fd, $3 lxcfs dir ("" = none), $4 mount binary, $5 files, then the command.
_WRAPPER = r"""
go=$1 st=$2 lx=$3 mnt=$4 files=$5
shift 5
IFS= read -r -u "$go" msg || msg=
exec {go}<&-
[ "$msg" = go ] || exit 125
if [ -n "$lx" ]; then
  for f in $files; do
    if [ -e "$lx/$f" ] && [ -e "/$f" ]; then
      "$mnt" --bind "$lx/$f" "/$f" 2>&"$st" || { echo "cannot bind-mount $lx/$f over /$f" >&"$st"; exit 125; }
    fi
  done
fi
echo ready >&"$st"
exec {st}>&-
exec "$@"
"""

Stdio = int | IO[Any] | None


def _which(cmd0: str, env: Mapping[str, str] | None) -> str:
    if "/" in cmd0:
        if os.path.isfile(cmd0) and os.access(cmd0, os.X_OK):
            return cmd0
        raise WorkloadError(f"command not found or not executable: {cmd0}")
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    found = shutil.which(cmd0, path=path)
    if found is None:
        raise WorkloadError(f"command not found: {cmd0}")
    return found


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if path is None:
        raise WorkloadError(f"`{name}` is needed to launch workloads (Debian: apt-get install -y util-linux bash)")
    return path


class LimitedProcess:
    """A running command inside its own cgroup. Create with ``launch()`` (or ``await LimitedProcess.start``)."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        group: Group,
        lxcfs: LxcfsMount | None,
        *,
        keep: bool,
        stop_timeout_s: float,
        record: str | None = None,
    ) -> None:
        self._record = record  # what a `flowctl gc` would clean up if this launcher were killed
        self._proc = proc
        self._group = group
        self._lxcfs = lxcfs
        self._keep = keep
        self._stop_timeout_s = stop_timeout_s
        self._closed = False

    # -- facts ---------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        """Pid of the command (the wrapper exec'd into it: same pid)."""
        return self._proc.pid

    @property
    def name(self) -> str:
        return self._group.name

    @property
    def cgroup_version(self) -> int:
        return self._group.version

    @property
    def cgroup_paths(self) -> dict[str, str]:
        """Controller -> group directory (v1: cpu, cpuacct, cpuset, memory; v2: the same dir for each)."""
        return dict(self._group.paths)

    @property
    def lxcfs_dir(self) -> str | None:
        """The lxcfs mount whose views are bind-mounted inside, or None without ``lxcfs=True``."""
        return self._lxcfs.dir if self._lxcfs else None

    @property
    def process(self) -> asyncio.subprocess.Process:
        """The underlying asyncio process (for its stdin/stdout/stderr streams)."""
        return self._proc

    @property
    def returncode(self) -> int | None:
        """Exit status once the command ended (negative: killed by that signal), else None."""
        return self._proc.returncode

    def pids(self) -> set[int]:
        """Every process currently in the group."""
        return self._group.pids()

    # -- control -------------------------------------------------------------------------------
    async def wait(self) -> int:
        """Wait for the command to end; its exit status (negative = killed by signal).

        Returns when the command itself exits, even if a leftover grandchild still holds
        its stdout/stderr pipes open (asyncio's ``Process.wait()`` on 3.11 waits for those too).
        """
        if self._proc.returncode is None:
            await self._exited()
        code = self._proc.returncode
        assert code is not None
        return code

    async def _exited(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] | None = None
        pidfd: int | None = None
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:  # already reaped (returncode is about to be set) or no pidfd support
            pass
        if pidfd is not None:
            ready = loop.create_future()
            loop.add_reader(pidfd, lambda: None if ready.done() else ready.set_result(None))
        try:
            while self._proc.returncode is None:
                if ready is None or ready.done():
                    await asyncio.sleep(0.005)  # exited: the child watcher sets returncode in a moment
                else:
                    await asyncio.wait({ready}, timeout=0.25)
        finally:
            if pidfd is not None:
                loop.remove_reader(pidfd)
                os.close(pidfd)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the command (not to the rest of the group); no-op once it ended."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to every process in the group."""
        for pid in self._group.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def set_cpus(self, cpus: float | None) -> None:
        """Change the CPU quota in place (cores; ``None`` = unlimited). Used by the bench step scenario."""
        self._group.set_cpus(None if cpus is None else parse_cpus(cpus))

    def set_memory(self, size: int | str | None) -> None:
        """Change the memory limit in place (bytes or ``"256M"``; ``None`` = unlimited)."""
        self._group.set_memory(None if size is None else parse_size(size))

    async def stop(self, timeout_s: float | None = None) -> int:
        """SIGTERM the command, SIGKILL it after ``timeout_s``; its exit status."""
        if self._proc.returncode is None:
            self.terminate()
            try:
                async with asyncio.timeout(self._stop_timeout_s if timeout_s is None else timeout_s):
                    await self.wait()
            except TimeoutError:
                self.kill()
        return await self.wait()

    async def close(self) -> None:
        """Stop the command, empty and remove the group (unless kept), stop our lxcfs. Idempotent."""
        if self._closed:
            return
        self._closed = True
        left: list[str] = []
        try:
            await self.stop()
            if not self._keep:
                await self._group.remove(main_pid=self.pid)
        except asyncio.CancelledError:
            left = self._close_now()
            raise
        finally:
            if self._lxcfs is not None:
                await stop_lxcfs(self._lxcfs)
            if not left:
                remove_record(self._record)  # a group that outlived us stays recorded: `flowctl gc` removes it

    def _close_now(self, wait_s: float = 1.0) -> list[str]:
        """Best effort without awaiting (we are being cancelled): SIGKILL everything, wait up to ``wait_s``
        for the killed processes to leave the group (an rmdir right after the kill finds it busy), rmdir.
        The directories that could not be removed."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.signal_group(signal.SIGKILL)
        if self._keep:
            return []
        deadline = time.monotonic() + wait_s
        while self._group.pids() and time.monotonic() < deadline:
            time.sleep(0.005)
        left = []
        for d in reversed(self._group.dirs):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(d)
        return left

    # -- start ---------------------------------------------------------------------------------
    @classmethod
    async def start(
        cls,
        cmd: Sequence[str],
        cpus: float | str | None = 0.5,
        memory_bytes: int | str | None = None,
        cpuset: str | frozenset[int] | set[int] | None = None,
        lxcfs: bool = False,
        name: str | None = None,
        *,
        keep: bool = False,
        cgroup_version: Version = "auto",
        lxcfs_dir: str | None = None,
        stdin: Stdio = None,
        stdout: Stdio = None,
        stderr: Stdio = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stop_timeout_s: float = 5.0,
        reap_orphans: bool = True,
    ) -> LimitedProcess:
        """Create the group, start ``cmd`` inside it, return once it is in the group (and views mounted).

        Raises ``ConfigError`` for bad values, ``CgroupError``/``ControllerMissingError``,
        ``LxcfsError`` or ``WorkloadError``; on error nothing is left behind.
        """
        argv = [str(a) for a in cmd]
        if not argv:
            raise ConfigError("no command given")
        spec = WorkloadSpec.build(name=name, cpus=cpus, memory=memory_bytes, cpuset=cpuset)
        if os.geteuid() != 0:
            raise WorkloadError("launching a limited workload needs root (to create cgroups and mounts)")
        _which(argv[0], env)
        bash = _tool("bash")
        prefix: list[str] = []
        mount_bin = ""
        if lxcfs:
            prefix = [_tool("unshare"), "--mount", "--propagation", "private", "--"]
            mount_bin = _tool("mount")
        if reap_orphans:
            set_child_subreaper()

        group = create_group(spec, version=cgroup_version, need_lxcfs_layout=lxcfs)
        record = write_record(group.name, group.dirs, None, None)
        lx: LxcfsMount | None = None
        proc: asyncio.subprocess.Process | None = None
        try:
            if lxcfs:
                if lxcfs_dir is not None:
                    if not is_lxcfs_mount(lxcfs_dir):
                        raise WorkloadError(f"{lxcfs_dir} is not a live lxcfs mount")
                    lx = LxcfsMount(dir=lxcfs_dir)
                else:
                    found = system_lxcfs()
                    lx = LxcfsMount(dir=found) if found else await start_lxcfs()
                    if lx.owned:
                        record = write_record(group.name, group.dirs, lx.workdir, lx.dir)
            proc = await cls._spawn(prefix, bash, mount_bin, lx, argv, stdin, stdout, stderr, env, cwd, group)
        except BaseException:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            with contextlib.suppress(FlowctlError):
                await group.remove(main_pid=proc.pid if proc else None)
            if lx is not None:
                await stop_lxcfs(lx)
            remove_record(record)
            raise
        return cls(proc, group, lx, keep=keep, stop_timeout_s=stop_timeout_s, record=record)

    @staticmethod
    async def _spawn(
        prefix: list[str],
        bash: str,
        mount_bin: str,
        lx: LxcfsMount | None,
        argv: list[str],
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
        env: Mapping[str, str] | None,
        cwd: str | None,
        group: Group,
    ) -> asyncio.subprocess.Process:
        go_r, go_w = os.pipe()
        st_r, st_w = os.pipe()
        try:
            wrapper = [bash, "--noprofile", "--norc", "-c", _WRAPPER, "flowctl-run", str(go_r), str(st_w),
                       lx.dir if lx else "", mount_bin, " ".join(f.lstrip("/") for f in LXCFS_VIEW_FILES)]
            proc = await asyncio.create_subprocess_exec(
                *prefix, *wrapper, *argv,
                stdin=stdin, stdout=stdout, stderr=stderr, env=dict(env) if env is not None else None,
                cwd=cwd, pass_fds=(go_r, st_w),
            )
        except BaseException:
            for fd in (go_r, go_w, st_r, st_w):
                os.close(fd)
            raise
        os.close(go_r)
        os.close(st_w)
        try:
            try:
                group.add_pid(proc.pid)
                os.write(go_w, b"go\n")
            finally:
                os.close(go_w)
            status = await _read_all(st_r)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if status.strip().splitlines()[-1:] != ["ready"]:
            code = await proc.wait()
            detail = status.strip().replace("\n", "; ") or f"wrapper exited with status {code}"
            raise WorkloadError(f"workload setup failed: {detail}")
        return proc


async def _read_all(fd: int) -> str:
    """Read a pipe to EOF without blocking the loop (closes ``fd``)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        data = await reader.read()
    finally:
        transport.close()
    return data.decode(errors="replace")


@contextlib.asynccontextmanager
async def launch(
    cmd: Sequence[str],
    cpus: float | str | None = 0.5,
    memory_bytes: int | str | None = None,
    cpuset: str | frozenset[int] | set[int] | None = None,
    lxcfs: bool = False,
    name: str | None = None,
    **options: Any,
) -> AsyncIterator[LimitedProcess]:
    """``async with launch(["cmd", ...], cpus=0.5) as w:`` -> a ``LimitedProcess``; cleaned up on exit.

    Keyword options are those of ``LimitedProcess.start`` (keep, cgroup_version, lxcfs_dir,
    stdin/stdout/stderr, env, cwd, stop_timeout_s, reap_orphans).
    """
    w = await LimitedProcess.start(cmd, cpus, memory_bytes, cpuset, lxcfs, name, **options)
    try:
        yield w
    finally:
        await w.close()
