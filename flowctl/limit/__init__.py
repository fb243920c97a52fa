"""Pure limit algorithms: they take measurements and ``now`` and return numbers.

Every algorithm implements ``LimitAlgorithm`` (``flowctl.limit.base``):
``Bbr`` (Little's law, the default), ``FixedLimit`` and ``Gradient`` (peers
for benchmarks). Submodules are imported on demand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowctl.errors import ConfigError

if TYPE_CHECKING:
    from flowctl.limit.base import LimitAlgorithm

__all__ = ["ALGORITHMS", "FIXED_LIMIT", "make_algorithm"]

ALGORITHMS = ("bbr", "fixed", "gradient")
"""The algorithm names ``make_algorithm`` knows (the sidecar's ``--algorithm`` choices)."""


FIXED_LIMIT = 100
"""The ``fixed`` algorithm's limit unless given (the sidecar's ``--fixed-limit`` default too)."""


def make_algorithm(name: str, *, fixed_limit: int = FIXED_LIMIT) -> LimitAlgorithm:
    """A new algorithm by name: ``"bbr"`` (default options), ``"fixed"`` (``fixed_limit``) or ``"gradient"``."""
    if name == "bbr":
        from flowctl.limit.bbr import Bbr

        return Bbr()
    if name == "fixed":
        from flowctl.limit.fixed import FixedLimit

        return FixedLimit(fixed_limit)
    if name == "gradient":
        from flowctl.limit.gradient import Gradient

        return Gradient()
    raise ConfigError(f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")
