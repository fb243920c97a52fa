"""Where the CPU truth comes from: cgroup v1/v2, lxcfs and host readers, and the Sampler.

``make_signal(view)`` builds a (not yet started) ``Sampler`` for one view:
"container" (cgroup files: the truth), "host" (/proc: what cgroup-blind tools
see) or "lxcfs" (lxcfs views). Importing this package does no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flowctl.cpu.sampler import DEFAULT_INTERVAL_S, DEFAULT_LIMITS_INTERVAL_S, DEFAULT_TAU_S, Sampler
from flowctl.cpu.sources import ContainerSource, CpuSource, HostSource, LxcfsSource
from flowctl.errors import ConfigError

__all__ = ["FALLBACK_ORDER", "VIEWS", "ContainerSource", "HostSource", "LxcfsSource", "Sampler", "make_signal", "make_source"]

VIEWS: tuple[str, ...] = ("container", "host", "lxcfs")
#: The order views fall back in when one fails (see ``Sampler``).
FALLBACK_ORDER: tuple[str, ...] = ("lxcfs", "container", "host")


def make_source(view: str = "container", *, root: str = "/", pid: int | str = "self",
                cgroup_path: str | None = None, lxcfs_dir: str | None = None) -> CpuSource:
    """The source for ``view``; ConfigError for an unknown view."""
    if view == "container":
        return ContainerSource(root, pid, cgroup_path=cgroup_path)
    if view == "host":
        return HostSource(root)
    if view == "lxcfs":
        return LxcfsSource(lxcfs_dir, root=root)
    raise ConfigError(f"view: expected one of {', '.join(VIEWS)}, got {view!r}")


def make_signal(
    view: str = "container",
    *,
    root: str = "/",
    pid: int | str = "self",
    interval_s: float = DEFAULT_INTERVAL_S,
    tau_s: float = DEFAULT_TAU_S,
    limits_interval_s: float = DEFAULT_LIMITS_INTERVAL_S,
    cgroup_path: str | None = None,
    lxcfs_dir: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    fallback: bool = True,
) -> Sampler:
    """A Sampler for ``view`` (not started: ``async with`` it, or call ``sample()``).

    ``pid`` (an int) reads another process through /proc/PID/{cgroup,mountinfo,root};
    ``cgroup_path`` reads a cgroup directory directly. ConfigError on a bad view, interval or tau.
    ``fallback``: when the view fails, read the next one that works (``FALLBACK_ORDER``:
    lxcfs -> container -> host) until it comes back; False for a comparison view.
    """
    source = make_source(view, root=root, pid=pid, cgroup_path=cgroup_path, lxcfs_dir=lxcfs_dir)
    fallbacks: list[CpuSource] = []
    if fallback:
        for name in FALLBACK_ORDER[FALLBACK_ORDER.index(view) + 1:]:
            fallbacks.append(make_source(name, root=root, pid=pid, cgroup_path=cgroup_path, lxcfs_dir=lxcfs_dir))
    return Sampler(source, interval_s=interval_s, tau_s=tau_s, limits_interval_s=limits_interval_s, clock=clock,
                   fallbacks=fallbacks)
