"""Priority classes and the per-(resource, priority) counters they share one in-flight count through.

A ``PriorityClass`` is configuration; a ``Partition`` is its live share of the
limit; a ``Slot`` counts the requests of one (resource, priority) pair.
``Partitions`` resolves names to slots with bounded state: at most
``max_resources`` resources (then ``OTHER_RESOURCE``) times the class names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from flowctl.errors import ConfigError

__all__ = [
    "DEFAULT_PRIORITIES",
    "OTHER_RESOURCE",
    "PRIORITIES",
    "Partition",
    "Partitions",
    "Priority",
    "PriorityClass",
    "Slot",
]

Priority = str
"""A priority class name: ``"critical"``, ``"default"`` or ``"sheddable"`` (or a configured one)."""

OTHER_RESOURCE = "other"
"""Resource name that absorbs new resources once ``max_resources`` distinct ones were seen."""

_ROUNDING_SLACK = 1e-9


@dataclass(frozen=True, slots=True)
class PriorityClass:
    """How much of the shared limit a priority class may use while the limiter is hot.

    - ``share``: the class is admitted while in-flight (all classes, including
      this request) stays within ``max(1, ceil(share * max_inflight))``.
    - ``trigger_scale``: a bypass trigger sheds the class only when its value
      is at least ``threshold * trigger_scale``.
    - ``level``: while the period gate paces admissions, the class is admitted
      only while the period's use stays under ``1 - 0.5 * level`` of what the
      gate allows (-1 to 1: 0.5 gives three quarters; <= 0: all of it).
    - ``reserve``: while hot, the class is shed only at its ceiling, not at its
      share of the limit (while no ceiling is known, at its share): the queue
      allowance is its reserve. The ceiling
      (always on) is ``ceil(pipe + pipe_sigmas * sqrt(pipe) + queue_allowance * max(1, share))``
      in flight, ``pipe`` the in-flight the group carries at its CPU capacity without
      queueing (see ``flowctl.limiter.stages.CeilingStage``).
    """

    share: float
    trigger_scale: float
    level: float = 0.0
    reserve: bool = False


DEFAULT_PRIORITIES: Mapping[str, PriorityClass] = {
    "critical": PriorityClass(share=3.0, trigger_scale=5.0, level=-1.0, reserve=True),
    "default": PriorityClass(share=1.0, trigger_scale=2.0, level=0.0),
    "sheddable": PriorityClass(share=0.5, trigger_scale=1.0, level=0.5),
}
"""Sheddable goes first (half the limit; bypass triggers at their threshold; three quarters of
what the period gate allows), default gets exactly the BBR limit (2x threshold), critical goes
last (only at its ceiling, which has 3x the queue allowance; 5x threshold; never paced)."""

PRIORITIES: tuple[str, ...] = tuple(DEFAULT_PRIORITIES)
"""The default class names, most important first; a limiter's own are ``Limiter.priorities``."""


class Partition:
    """A priority class's live state: its policy, its in-flight limit while hot (``limit``) and its
    always-on in-flight ceiling (``ceiling``, inf until the group's CPU capacity is known)."""

    __slots__ = ("name", "share", "trigger_scale", "level", "reserve", "limit", "ceiling")

    def __init__(self, name: str, policy: PriorityClass) -> None:
        self.name = name
        self.share = policy.share
        self.trigger_scale = policy.trigger_scale
        self.level = policy.level
        self.reserve = policy.reserve
        self.limit = 1.0
        self.ceiling = math.inf


class Slot:
    """Counters of one (resource, priority) pair: the opaque handle ``Limiter.slot`` returns."""

    __slots__ = ("resource", "partition", "admitted", "dry_run_shed", "released", "completed", "shed", "shed_by", "dry_by")

    def __init__(self, resource: str, partition: Partition) -> None:
        self.resource = resource
        self.partition = partition
        self.admitted = 0  # admissions (tokens or slot admits)
        self.dry_run_shed = 0  # admissions a dry-run limiter would have shed
        self.released = 0  # releases of any kind
        self.completed = 0  # releases that finished a request (success, dropped, a data plane's completed): the CPU cost's count
        self.shed = 0  # rejections
        self.shed_by: dict[str, int] = {}  # rejections by trigger
        self.dry_by: dict[str, int] = {}  # dry-run "would shed" by trigger

    @property
    def inflight(self) -> int:
        return self.admitted + self.dry_run_shed - self.released


def check_priorities(priorities: Mapping[str, PriorityClass], default_priority: str) -> None:
    """Raise ``ConfigError`` unless the classes are usable and ``default_priority`` is one of them."""
    if not priorities:
        raise ConfigError("priorities must name at least one class")
    for name, pc in priorities.items():
        if not (pc.share > 0 and pc.trigger_scale >= 1 and -1 <= pc.level <= 1):
            raise ConfigError(
                f"priorities[{name!r}] needs share > 0, trigger_scale >= 1 and level in [-1, 1], got {pc!r}"
            )
    if default_priority not in priorities:
        raise ConfigError(f"default_priority {default_priority!r} is not one of {sorted(priorities)}")


class Partitions:
    """The configured classes and every slot, with names bounded (see the module docstring)."""

    def __init__(self, priorities: Mapping[str, PriorityClass], default_priority: str, max_resources: int) -> None:
        check_priorities(priorities, default_priority)
        if max_resources < 1:
            raise ConfigError(f"max_resources must be >= 1, got {max_resources!r}")
        self.max_resources = int(max_resources)
        self.by_name: dict[str, Partition] = {n: Partition(n, pc) for n, pc in priorities.items()}
        self.default = self.by_name[default_priority]
        self.slots: dict[tuple[str, str], Slot] = {}  # (resource, class name) -> slot
        # the fast lookup: (resource, None or class name as asked) -> slot, for known resources only
        self.lookup: dict[tuple[str, str | None], Slot] = {}
        self._resources: set[str] = set()

    def resolve(self, resource: str, priority: str | None) -> Slot:
        """Find or create the slot for a pair (None or an unknown priority counts as the default class)."""
        part = None if priority is None else self.by_name.get(priority)
        known = part is not None or priority is None
        if part is None:
            part = self.default
        if resource not in self._resources:
            if len(self._resources) >= self.max_resources:
                resource, known = OTHER_RESOURCE, False
            else:
                self._resources.add(resource)
        key = (resource, part.name)  # bounded: known resources (or OTHER_RESOURCE) x class names
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = Slot(resource, part)
        if known:  # bounded too: known resources x (class names + None)
            self.lookup[(resource, priority)] = slot
        return slot

    def set_limit(self, limit: float) -> None:
        """Give every class its share of the algorithm's ``limit``: ``max(1, ceil(share * limit))``."""
        for part in self.by_name.values():
            share = part.share * limit
            part.limit = math.inf if share == math.inf else float(max(1, math.ceil(share - _ROUNDING_SLACK)))

    def set_ceiling(self, chance: float | None, queue: int | None) -> None:
        """Every class's ceiling: ``max(1, ceil(chance + queue * max(1, share)))``, ``chance`` being the
        in-flight Poisson arrivals bring at capacity (``pipe + pipe_sigmas * sqrt(pipe)``); inf when
        ``chance`` or ``queue`` is None."""
        for part in self.by_name.values():
            if chance is None or queue is None:
                part.ceiling = math.inf
            else:
                part.ceiling = float(max(1, math.ceil(chance + queue * max(1.0, part.share) - _ROUNDING_SLACK)))

    def ceilings(self) -> dict[str, float]:
        return {name: part.ceiling for name, part in self.by_name.items()}

    def limits(self) -> dict[str, float]:
        return {name: part.limit for name, part in self.by_name.items()}
