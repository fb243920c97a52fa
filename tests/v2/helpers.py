"""Groups and burners on the live cgroup2 mount (only while tests/v2/conftest.py has cpu on v2)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tests.cgroup2 import UNIFIED

BURNER = ["sh", "-c", "while :; do :; done"]


def unique_name() -> str:
    return f"flowctl-test-{uuid.uuid4().hex[:8]}"


def write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def _procs(d: str) -> list[int]:
    try:
        return [int(x) for x in read(os.path.join(d, "cgroup.procs")).split()]
    except OSError:
        return []


def remove_tree(top: str) -> None:
    """Kill whatever is left in ``top`` and below, then rmdir deepest first (retrying while busy)."""
    dirs = sorted((dp for dp, _d, _f in os.walk(top)), key=lambda p: p.count("/"), reverse=True)
    for d in dirs:
        for pid in _procs(d):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for d in dirs:
        for _ in range(500):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)
        else:
            raise RuntimeError(f"cannot remove {d} (procs {_procs(d)})")


@contextmanager
def v2_group(*path: str, cpu_max: dict[str, str] | None = None) -> Iterator[str]:
    """A unique top group under the cgroup2 mount with sub-groups ``path`` (nested); yields the leaf.

    ``cpu_max`` maps a relative dir ("" = the top) to its cpu.max. ``+cpu`` is enabled in every
    non-leaf group's subtree_control. Everything is removed (processes killed) on exit.
    """
    top = os.path.join(UNIFIED, unique_name())
    dirs = [top]
    for p in path:
        dirs.append(os.path.join(dirs[-1], p))
    try:
        for i, d in enumerate(dirs):
            os.mkdir(d)
            if i < len(dirs) - 1:
                write(os.path.join(d, "cgroup.subtree_control"), "+cpu")
        for rel, value in (cpu_max or {}).items():
            write(os.path.join(top, rel, "cpu.max"), value)
        yield dirs[-1]
    finally:
        if os.path.isdir(top):
            remove_tree(top)


@contextmanager
def burner_in(group: str, cmd: list[str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A CPU burner moved into ``group`` (before it execs: the shell moves itself, then execs)."""
    argv = cmd or BURNER
    p = subprocess.Popen(["sh", "-c", f'echo $$ > "$0/cgroup.procs" && exec "$@"', group, *argv])
    try:
        deadline = time.monotonic() + 10
        while p.pid not in _procs(group):
            assert p.poll() is None, f"burner exited with {p.returncode}"
            assert time.monotonic() < deadline, "burner never reached its group"
            time.sleep(0.01)
        yield p
    finally:
        p.kill()
        p.wait()
