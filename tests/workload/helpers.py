"""Shared helpers for the workload tests: unique names, leftovers checks, a tiny CPU burner."""

from __future__ import annotations

import os
import uuid

BURNER = ["sh", "-c", "while :; do :; done"]


def unique_name() -> str:
    return f"flowctl-test-{uuid.uuid4().hex[:8]}"


def v1_dirs(name: str) -> list[str]:
    """Where a group named ``name`` would be in this process's v1 hierarchies (existing or not)."""
    from flowctl.workload.cgroupfs import find_hierarchies

    h = find_hierarchies()
    return [os.path.join(d, name) for d in h.v1.values()]


def existing(paths: list[str]) -> list[str]:
    return [p for p in paths if os.path.exists(p)]


def lxcfs_leftovers(lxcfs_dir: str) -> list[str]:
    """Mounts or processes still tied to ``lxcfs_dir`` (an lxcfs we started): empty means clean."""
    left: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            if lxcfs_dir in line:
                left.append(f"mount: {line.strip()}")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if lxcfs_dir in cmdline:
            left.append(f"process {entry}: {cmdline}")
    if os.path.exists(lxcfs_dir):
        left.append(f"directory {lxcfs_dir}")
    return left


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")
