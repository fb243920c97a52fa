"""What admission hands back: a ``Token`` (admitted) or a ``Rejection`` carrying its ``Reason``.

Both are values, never exceptions. The slot API (``Limiter.admit``) returns the
admission time instead of a Token; a dry-run "would shed" admission time is a
``DryRunStart``, a float that also carries the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Protocol

from flowctl.limiter.partitions import Slot

__all__ = ["Decision", "DryRunStart", "Reason", "Rejection", "Releaser", "Token", "new_reason"]


@dataclass(frozen=True)
class Reason:
    """Why a request was (or, in dry-run, would have been) shed. ``as_dict()`` is JSON-able.

    - ``trigger``: ``"queue"``, ``"cpu"``, ``"cool_off"``, ``"throttled"``, ``"pressure"``,
      ``"cpu_period"``, ``"limit"`` (ungated limiter) or a ``Trigger``'s name (e.g. ``"loop_lag"``).
    - ``stage``: the stage of admission that shed (docs/limiter.md, "How it decides"):
      ``"ceiling"``, ``"limit"``, ``"period"`` or ``"lag"``.
    - ``signal_name`` / ``signal_value`` / ``threshold``: what fired and its
      threshold (for bypass triggers, the threshold already scaled for the priority).
    - ``inflight``: in-flight before this request; ``max_inflight``: the
      algorithm's limit; ``priority_limit``: this priority's share of it.
    - ``cool_off``: the cool-off (from the last drop) was in force.
    - ``retry_after_s``: suggested client back-off.
    """

    trigger: str
    stage: str
    signal_name: str
    signal_value: float | None
    threshold: float | None
    inflight: int
    max_inflight: float
    priority: str
    resource: str
    cool_off: bool
    retry_after_s: float
    dry_run: bool
    priority_limit: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_object_new = object.__new__
_object_setattr = object.__setattr__


def new_reason(fields: dict[str, Any]) -> Reason:
    """A ``Reason`` from all its fields, without the frozen dataclass ``__init__`` (one
    ``object.__setattr__`` per field, ~2 us): the same frozen instance, its ``__dict__`` set at once."""
    reason: Reason = _object_new(Reason)
    _object_setattr(reason, "__dict__", fields)
    return reason


class DryRunStart(float):
    """An admission time (clock seconds) a dry-run limiter would have shed; ``reason`` says why."""

    __slots__ = ("reason",)

    reason: Reason


class Releaser(Protocol):
    """What a ``Token`` releases itself through (the ``Limiter``)."""

    _tokens_leaked: int

    def success(self, slot: Slot, start: float) -> float: ...

    def ignore(self, slot: Slot, start: float) -> float: ...

    def dropped(self, slot: Slot, start: float) -> float: ...


class Token:
    """An admitted request. Release it exactly once with ``success()``, ``ignore()`` or ``dropped()``.

    Each returns the request's RT in seconds (from ``start``, read in ``acquire``,
    to the release, on the limiter's clock). Further releases are no-ops returning
    None. ``with token:`` / ``async with token:`` release on exit: ``success()``
    normally, ``dropped()`` on ``TimeoutError``, ``ignore()`` on any other
    exception. A token garbage-collected unreleased is released with ``ignore()``
    and counted in ``tokens_leaked``. ``reason`` is set when a dry-run limiter
    would have shed this request.
    """

    __slots__ = ("_limiter", "_slot", "start", "reason")

    admitted = True

    def __init__(self, limiter: Releaser, slot: Slot, start: float, reason: Reason | None = None) -> None:
        self._limiter = limiter
        self._slot: Slot | None = slot
        self.start = start
        self.reason = reason

    @property
    def retry_after_s(self) -> float:
        return 0.0

    @property
    def released(self) -> bool:
        return self._slot is None

    @property
    def priority(self) -> str:
        return self._held().partition.name

    @property
    def resource(self) -> str:
        return self._held().resource

    def _held(self) -> Slot:
        slot = self._slot
        if slot is None:
            raise ValueError("token already released")
        return slot

    def success(self) -> float | None:
        """The request completed: its round-trip time feeds the limit algorithm.

        Returns that RT in seconds (acquire to now, on the limiter's clock), None if already released.
        """
        slot = self._slot
        if slot is None:
            return None
        self._slot = None
        return self._limiter.success(slot, self.start)

    def ignore(self) -> float | None:
        """The request failed for its own reasons: release without feeding its RT.

        Returns the RT all the same (for the caller's own metrics), None if already released.
        """
        slot = self._slot
        if slot is None:
            return None
        self._slot = None
        return self._limiter.ignore(slot, self.start)

    def dropped(self) -> float | None:
        """The request timed out or was dropped downstream: tell the algorithm it was dropped.

        Returns its RT in seconds, None if already released.
        """
        slot = self._slot
        if slot is None:
            return None
        self._slot = None
        return self._limiter.dropped(slot, self.start)

    def __del__(self) -> None:
        if self._slot is not None:
            try:
                self._limiter._tokens_leaked += 1
                self.ignore()
            except Exception:  # pragma: no cover - interpreter shutdown
                pass

    def _exit(self, exc: BaseException | None) -> None:
        if exc is None:
            self.success()
        elif isinstance(exc, TimeoutError):
            self.dropped()
        else:
            self.ignore()

    def __enter__(self) -> Token:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._exit(exc)

    async def __aenter__(self) -> Token:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit(exc)

    def __repr__(self) -> str:
        slot = self._slot
        state = "released" if slot is None else f"{slot.resource}/{slot.partition.name}"
        return f"<Token {state} start={self.start:.6f}{' dry_run' if self.reason else ''}>"


class Rejection:
    """A shed request: ``admitted`` is False and ``reason`` says why. Release methods are no-ops."""

    __slots__ = ("reason",)

    admitted = False

    def __init__(self, reason: Reason) -> None:
        self.reason = reason

    @property
    def retry_after_s(self) -> float:
        return self.reason.retry_after_s

    def success(self) -> None:
        return None

    def ignore(self) -> None:
        return None

    def dropped(self) -> None:
        return None

    def __enter__(self) -> Rejection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    async def __aenter__(self) -> Rejection:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def __repr__(self) -> str:
        r = self.reason
        return f"<Rejection {r.trigger} {r.resource}/{r.priority} inflight={r.inflight} retry_after_s={r.retry_after_s:g}>"


Decision = Token | Rejection
