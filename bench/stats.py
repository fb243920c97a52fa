"""Small statistics shared by the benchmark reports.

``wilson_interval``: the interval reported beside every "k of n cells pass" figure.
"""

from __future__ import annotations

import math

__all__ = ["Z_95", "wilson_interval"]

Z_95 = 1.959963984540054  # the standard normal quantile of 0.975: a two-sided 95% interval


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval (lo, hi) for a proportion seen as ``k`` successes in ``n`` trials.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at k = 0 or k = n
    (8 of 8 gives about (0.68, 1.0), not (1.0, 1.0)). It treats the trials as independent.
    ``n`` = 0 gives (0.0, 1.0): nothing is known."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    den = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / den
    half = z / den * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return lo, hi
