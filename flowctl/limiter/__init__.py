"""Admission: is there room for this request now? A ``Token`` or a ``Rejection`` with its ``Reason``.

Modules, each with one job (dependencies point down this list):

- ``core``: ``Limiter``, composing the pieces below; ``acquire`` and the slot API
  (``slot`` / ``admit`` / ``success`` / ``ignore`` / ``dropped``) share one path.
- ``snapshot``: ``LimiterSnapshot``, the state for metrics and debug endpoints.
- ``policy``: ``Policy``, every constant of admission in one frozen value.
- ``gate``: ``HotGate``: is the service saturated now?
- ``period``: ``PeriodGate``: is there quota left in the group's current CFS period?
- ``triggers``: the ``Trigger`` protocol (e.g. event-loop lag) and how bypass triggers are polled.
- ``decisions``: ``Token``, ``Rejection``, ``Reason``, ``DryRunStart``.
- ``partitions``: ``PriorityClass`` and the per-(resource, priority) ``Slot`` counters.
"""

from __future__ import annotations

from flowctl.limiter.core import Limiter
from flowctl.limiter.decisions import Decision, DryRunStart, Reason, Rejection, Token
from flowctl.limiter.partitions import DEFAULT_PRIORITIES, OTHER_RESOURCE, PRIORITIES, Priority, PriorityClass, Slot
from flowctl.limiter.policy import DEFAULT_POLICY, Policy
from flowctl.limiter.snapshot import LimiterSnapshot
from flowctl.limiter.triggers import Trigger

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_PRIORITIES",
    "OTHER_RESOURCE",
    "PRIORITIES",
    "Decision",
    "DryRunStart",
    "Limiter",
    "LimiterSnapshot",
    "Policy",
    "Priority",
    "PriorityClass",
    "Reason",
    "Rejection",
    "Slot",
    "Token",
    "Trigger",
]
