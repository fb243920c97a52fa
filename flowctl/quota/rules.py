"""Quota rules: what is counted, under which key, at what rate.

A rule is one line of ``field=value`` pairs separated by commas; the same text
is read from the sidecar's ``--quota`` flag, its TOML ``quota`` list and
``flowctl.aiohttp.setup(quotas=[...])``::

    key=header:X-Tenant,rate=100/s,burst=20
    key=path:/search,rate=6000/min,cost=2,name=search
    key=const:all,rate=5000/s,burst=500,bypass=critical

Fields:

- ``key`` (required): where a request's key comes from.
  ``header:NAME``: the header's value (a request without it is not counted by
  this rule); ``path:/PREFIX``: one key for every path that starts with the
  prefix (others are not counted); ``const:NAME``: one key for every request
  (a global limit).
- ``rate`` (required): ``COUNT/PERIOD``, COUNT a positive integer, PERIOD
  ``s``, ``min``, ``h`` or ``d`` (also ``sec``, ``second``, ``m``, ``minute``,
  ``hour``, ``day``), optionally with a whole multiplier: ``1/10s``.
- ``burst`` (default 0): how many requests may pass at once beyond the
  steady rate (GCRA burst tolerance = burst x period / count). In any
  window of length w at most ``count x w / period + burst`` requests pass.
- ``cost`` (default 1): the units one request debits (a weight), at most
  ``burst + 1`` (more could never pass).
- ``name``: the rule's label in metrics and in the ``RateLimit-Policy``
  header (default: the key's text, e.g. ``x-tenant`` for ``header:X-Tenant``).
- ``bypass``: priority classes this rule does not count, ``|``-separated
  (``bypass=critical``). Without it every class is counted.

``parse_rule`` raises ``ConfigError`` naming the rule and the field.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flowctl.errors import ConfigError

__all__ = ["KEY_SOURCES", "QuotaRule", "parse_rate", "parse_rule", "parse_rules"]

KEY_SOURCES = ("header", "path", "const")

_PERIOD_S = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hour": 3600,
    "d": 86400, "day": 86400,
}  # fmt: skip
_NAME_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,64}\Z")
_HEADER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}\Z")  # an HTTP token
_CONST_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
_CLASS_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_FIELDS = ("key", "rate", "burst", "cost", "name", "bypass")
#: key values longer than this are stored under a hash (a header value can be anything)
MAX_KEY_CHARS = 128


@dataclass(frozen=True, slots=True)
class QuotaRule:
    """One validated rule (see the module docstring). Times in seconds."""

    name: str
    source: str  # "header" | "path" | "const"
    arg: str  # the header name (lower case), the path prefix, or the constant key
    count: int  # requests (cost units) per period
    period_s: int
    burst: int = 0
    cost: float = 1.0
    bypass: frozenset[str] = field(default_factory=frozenset)

    @property
    def interval_s(self) -> float:
        """GCRA emission interval T: the steady time between two unit-cost requests."""
        return self.period_s / self.count

    @property
    def tolerance_s(self) -> float:
        """GCRA burst tolerance tau = T x burst."""
        return self.interval_s * self.burst

    def key_of(self, header: Callable[[str], str | None], path: str) -> str | None:
        """The request's key under this rule, or None when the rule does not count it.

        ``header(name)`` returns a request header's value (None when absent);
        ``name`` is given in lower case.
        """
        if self.source == "header":
            value = header(self.arg)
            if not value:
                return None
            if len(value) > MAX_KEY_CHARS:
                return "sha1:" + hashlib.sha1(value.encode("utf-8", "surrogateescape")).hexdigest()
            return value
        if self.source == "path":
            return self.arg if path.startswith(self.arg) else None
        return self.arg

    def spec(self) -> str:
        """The rule as text that ``parse_rule`` reads back to an equal rule."""
        unit = "s" if self.period_s == 1 else f"{self.period_s}s"
        parts = [f"key={self.source}:{self.arg}", f"rate={self.count}/{unit}", f"burst={self.burst}"]
        parts.append(f"cost={self.cost:g}")
        parts.append(f"name={self.name}")
        if self.bypass:
            parts.append("bypass=" + "|".join(sorted(self.bypass)))
        return ",".join(parts)


def parse_rate(text: str) -> tuple[int, int]:
    """``COUNT/PERIOD`` -> (count, period in whole seconds); ValueError explains a bad rate."""
    count_text, sep, period_text = text.strip().partition("/")
    if not sep:
        raise ValueError(f"expected COUNT/PERIOD like 100/s or 6000/min, got {text!r}")
    if not count_text.strip().isdigit() or int(count_text) <= 0:
        raise ValueError(f"COUNT must be a positive integer, got {count_text.strip()!r}")
    m = re.fullmatch(r"\s*(\d*)\s*([a-z]+)\s*", period_text.lower())
    if m is None or m.group(2) not in _PERIOD_S:
        raise ValueError(f"PERIOD must be s, min, h or d (optionally like 10s), got {period_text.strip()!r}")
    multiplier = int(m.group(1)) if m.group(1) else 1
    if multiplier <= 0:
        raise ValueError(f"PERIOD multiplier must be positive, got {period_text.strip()!r}")
    return int(count_text), multiplier * _PERIOD_S[m.group(2)]


def _parse_key(text: str) -> tuple[str, str]:
    source, sep, arg = text.partition(":")
    source = source.strip().lower()
    arg = arg.strip()
    if not sep or source not in KEY_SOURCES:
        raise ValueError(f"expected header:NAME, path:/PREFIX or const:NAME, got {text!r}")
    if source == "header":
        if not _HEADER_RE.match(arg):
            raise ValueError(f"not a header name: {arg!r}")
        return source, arg.lower()
    if source == "path":
        if not arg.startswith("/") or any(c in arg for c in " ,;?#\t") or len(arg) > MAX_KEY_CHARS:
            raise ValueError(f"a path prefix must start with '/' (no spaces, ',', ';', '?', '#'), got {arg!r}")
        return source, arg
    if not _CONST_RE.match(arg):
        raise ValueError(f"a constant key is 1-64 of A-Z a-z 0-9 _ . : -, got {arg!r}")
    return source, arg


def parse_rule(text: str) -> QuotaRule:
    """One rule from its text; ``ConfigError`` names the rule and what is wrong with it."""

    def bad(msg: str) -> ConfigError:
        return ConfigError(f"quota rule {text!r}: {msg}")

    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"quota rule must be non-empty text like 'key=header:X-Tenant,rate=100/s', got {text!r}")
    seen: dict[str, str] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep:
            raise bad(f"expected field=value, got {item.strip()!r}")
        if name not in _FIELDS:
            raise bad(f"unknown field {name!r} (fields: {', '.join(_FIELDS)})")
        if name in seen:
            raise bad(f"field {name!r} given twice")
        seen[name] = value.strip()
    for required in ("key", "rate"):
        if required not in seen:
            raise bad(f"missing {required}=")
    try:
        source, arg = _parse_key(seen["key"])
    except ValueError as e:
        raise bad(f"key: {e}") from None
    try:
        count, period_s = parse_rate(seen["rate"])
    except ValueError as e:
        raise bad(f"rate: {e}") from None
    burst_text = seen.get("burst", "0")
    if not burst_text.isdigit():
        raise bad(f"burst must be an integer >= 0, got {burst_text!r}")
    burst = int(burst_text)
    try:
        cost = float(seen.get("cost", "1"))
    except ValueError:
        raise bad(f"cost must be a positive number, got {seen['cost']!r}") from None
    if not (cost > 0 and cost < float("inf")):
        raise bad(f"cost must be a positive number, got {seen['cost']!r}")
    if cost > burst + 1:
        raise bad(f"cost {cost:g} exceeds burst + 1 = {burst + 1}: no request could ever pass (raise burst)")
    name = seen.get("name") or (arg if source != "path" else "path:" + arg)
    if not _NAME_RE.match(name):
        raise bad(f"name must be 1-64 of A-Z a-z 0-9 _ . : / -, got {name!r}")
    bypass: frozenset[str] = frozenset()
    if "bypass" in seen:
        classes = [c.strip() for c in seen["bypass"].split("|")]
        if not all(_CLASS_RE.match(c) for c in classes):
            raise bad(f"bypass must be priority class names separated by '|', got {seen['bypass']!r}")
        bypass = frozenset(classes)
    return QuotaRule(name, source, arg, count, period_s, burst, cost, bypass)


def parse_rules(rules: Iterable[str | QuotaRule]) -> tuple[QuotaRule, ...]:
    """Rules from text or ready ``QuotaRule``s; two rules with one name are a ``ConfigError``."""
    out = tuple(r if isinstance(r, QuotaRule) else parse_rule(r) for r in rules)
    names = [r.name for r in out]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"quota rules: two rules are named {n!r} (give one of them name=...)")
    return out
