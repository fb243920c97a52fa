"""``flowctl run``: run a command in a new CPU/memory-limited cgroup (optionally with lxcfs views).

Exit status: the command's own status; 128+N when it was killed by signal N;
2 for a bad option value; 125 when flowctl could not set the workload up
(the ``docker run`` convention). SIGINT, SIGTERM, SIGHUP and SIGQUIT are
forwarded to the command; after a forwarded SIGTERM it gets ``--stop-timeout``
seconds before SIGKILL. The group (and an lxcfs we started) is removed when
the command ends, unless ``--keep``. Before it starts, what killed launchers
left behind is removed as ``flowctl gc`` does (never a live launcher's).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from flowctl.errors import ConfigError, FlowctlError
from flowctl.workload.leftovers import collect
from flowctl.workload.process import LimitedProcess

__all__ = ["register", "run_command", "status_to_exit_code"]

SETUP_FAILED_EXIT = 125
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def register(sub: Any) -> None:
    """Add the ``run`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="run a command in a new CPU/memory-limited cgroup (optionally with lxcfs /proc views)",
        description=(
            "Create a cgroup (v1: same-named groups in cpu, cpuacct, cpuset, memory; v2: one group), "
            "move the command into it before it execs, and remove the group when it exits."
        ),
        epilog="Example: flowctl run --cpus 0.5 --memory 256M --lxcfs -- python3 -c 'import os; print(os.cpu_count())'",
    )
    p.add_argument("--cpus", metavar="N", help="CPU quota in cores, e.g. 0.5 (default: no quota)")
    p.add_argument("--cpuset", metavar="LIST", help="CPUs the command may run on, e.g. 0 or 0-1,3")
    p.add_argument("--memory", metavar="SIZE", help="memory limit: bytes or 256M, 1G (binary units)")
    p.add_argument("--lxcfs", action="store_true",
                   help="bind-mount lxcfs views over /proc/{cpuinfo,meminfo,stat,...} in a private mount namespace")
    p.add_argument("--lxcfs-dir", metavar="DIR", help="use this live lxcfs mount instead of finding/starting one")
    p.add_argument("--name", help="group name (one path component; default flowctl-run-<random>)")
    p.add_argument("--keep", action="store_true", help="do not remove the group when the command exits")
    p.add_argument("--cgroup-version", choices=("auto", "v1", "v2"), default="auto",
                   help="hierarchy to use; auto = the one with the cpu controller (default)")
    p.add_argument("--stop-timeout", type=float, default=10.0, metavar="S",
                   help="seconds between a forwarded SIGTERM and SIGKILL (default 10)")
    p.add_argument("-v", "--verbose", action="store_true", help="print the group directories on stderr")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the command to run")
    p.set_defaults(func=run_command)


def status_to_exit_code(status: int) -> int:
    """A child's status as a shell would report it: N, or 128+signal when killed."""
    return status if status >= 0 else 128 - status


def run_command(args: argparse.Namespace) -> int:
    """Entry point of ``flowctl run``; returns the exit code."""
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("flowctl run: error: no command given (flowctl run [options] -- CMD ARGS...)", file=sys.stderr)
        return 2
    stale = collect()
    if args.verbose:
        for d in stale.removed_groups + stale.unmounted + stale.removed_dirs:
            print(f"flowctl run: removed a killed launcher's {d}", file=sys.stderr)
    try:
        return asyncio.run(_run(args, cmd))
    except ConfigError as exc:
        print(f"flowctl run: error: {exc}", file=sys.stderr)
        return 2
    except FlowctlError as exc:
        print(f"flowctl run: error: {exc}", file=sys.stderr)
        return SETUP_FAILED_EXIT


async def _run(args: argparse.Namespace, cmd: list[str]) -> int:
    loop = asyncio.get_running_loop()
    box: dict[str, LimitedProcess] = {}
    pending: list[int] = []
    kill_timer: list[asyncio.TimerHandle] = []

    def forward(sig: int) -> None:
        w = box.get("w")
        if w is None:
            pending.append(sig)
            return
        w.send_signal(sig)
        if sig == signal.SIGTERM and not kill_timer:
            kill_timer.append(loop.call_later(args.stop_timeout, w.kill))

    for sig in _FORWARDED:
        loop.add_signal_handler(sig, forward, sig)
    try:
        w = await LimitedProcess.start(
            cmd, cpus=args.cpus, memory_bytes=args.memory, cpuset=args.cpuset, lxcfs=args.lxcfs,
            name=args.name, keep=args.keep, cgroup_version=args.cgroup_version, lxcfs_dir=args.lxcfs_dir,
            stop_timeout_s=args.stop_timeout,
        )
        box["w"] = w
        try:
            if args.verbose or args.keep:
                where = " ".join(f"{c}={d}" for c, d in w.cgroup_paths.items())
                extra = f" lxcfs={w.lxcfs_dir}" if w.lxcfs_dir else ""
                print(f"flowctl run: pid {w.pid} in cgroup v{w.cgroup_version} {where}{extra}", file=sys.stderr)
            for early in pending:
                forward(early)
            status = await w.wait()
        finally:
            for t in kill_timer:
                t.cancel()
            await w.close()
    finally:
        for sig in _FORWARDED:
            loop.remove_signal_handler(sig)
    return status_to_exit_code(status)
