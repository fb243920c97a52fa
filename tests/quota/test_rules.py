"""Quota rule parsing: a property over the grammar (spec() reads back equal), and clear errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowctl.errors import ConfigError
from flowctl.quota.rules import QuotaRule, parse_rate, parse_rule, parse_rules

names = st.from_regex(r"[A-Za-z0-9_.:/-]{1,20}", fullmatch=True)
headers = st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True)
prefixes = st.from_regex(r"/[a-z0-9/_.-]{0,20}", fullmatch=True)
consts = st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True)
keys = st.one_of(
    headers.map(lambda h: f"header:{h}"), prefixes.map(lambda p: f"path:{p}"), consts.map(lambda c: f"const:{c}")
)
units = st.sampled_from([("s", 1), ("sec", 1), ("min", 60), ("m", 60), ("h", 3600), ("hour", 3600), ("d", 86400)])


@st.composite
def rules(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    key = draw(keys)
    count = draw(st.integers(1, 10**6))
    unit, unit_s = draw(units)
    mult = draw(st.integers(1, 60))
    burst = draw(st.integers(0, 1000))
    cost = draw(st.integers(1, burst + 1))
    fields = [f"key={key}", f"rate={count}/{mult if mult > 1 else ''}{unit}", f"burst={burst}", f"cost={cost}"]
    name = draw(st.one_of(st.none(), names))
    if name is not None:
        fields.append(f"name={name}")
    bypass = draw(st.lists(st.sampled_from(["critical", "default", "sheddable"]), unique=True, max_size=2))
    if bypass:
        fields.append("bypass=" + "|".join(bypass))
    order = draw(st.permutations(fields))
    expected = {"count": count, "period_s": mult * unit_s, "burst": burst, "cost": float(cost),
                "bypass": frozenset(bypass), "name": name}  # fmt: skip
    return ",".join(order), expected


@given(rules())
def test_any_valid_rule_parses_to_what_it_says_and_reads_back(case: tuple[str, dict[str, object]]) -> None:
    text, expected = case
    rule = parse_rule(text)
    for field in ("count", "period_s", "burst", "cost", "bypass"):
        assert getattr(rule, field) == expected[field], field
    if expected["name"] is not None:
        assert rule.name == expected["name"]
    assert rule.interval_s == pytest.approx(rule.period_s / rule.count)
    assert rule.tolerance_s == pytest.approx(rule.interval_s * rule.burst)
    assert parse_rule(rule.spec()) == rule


@given(st.text(max_size=60))
def test_arbitrary_text_parses_or_raises_config_error(text: str) -> None:
    try:
        rule = parse_rule(text)
    except ConfigError as e:
        assert "quota rule" in str(e)
    else:
        assert isinstance(rule, QuotaRule)


def test_the_issue_examples() -> None:
    r = parse_rule("key=header:X-Tenant,rate=100/s,burst=20")
    assert (r.source, r.arg, r.count, r.period_s, r.burst, r.cost, r.name) == ("header", "x-tenant", 100, 1, 20, 1.0, "x-tenant")
    assert parse_rate("6000/min") == (6000, 60)
    assert parse_rate("1/10s") == (1, 10)
    g = parse_rule("key=const:global,rate=5000/s")
    assert g.key_of(lambda _: None, "/x") == "global"
    p = parse_rule("key=path:/search,rate=10/s")
    assert p.name == "path:/search"
    assert p.key_of(lambda _: None, "/search/q") == "/search" and p.key_of(lambda _: None, "/other") is None


def test_header_keys() -> None:
    r = parse_rule("key=header:X-Tenant,rate=1/s")

    def given(value: str | None) -> Callable[[str], str | None]:
        return lambda name: value if name == "x-tenant" else None

    assert r.key_of(given("acme"), "/") == "acme"
    assert r.key_of(given(None), "/") is None and r.key_of(given(""), "/") is None
    long = r.key_of(given("a" * 500), "/")
    assert long is not None and long.startswith("sha1:") and len(long) < 60


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "non-empty"),
        ("rate=100/s", "missing key="),
        ("key=header:X-Tenant", "missing rate="),
        ("key=cookie:sid,rate=1/s", "header:NAME, path:/PREFIX or const:NAME"),
        ("key=header:X Tenant,rate=1/s", "not a header name"),
        ("key=path:search,rate=1/s", "must start with '/'"),
        ("key=const:all,rate=100", "COUNT/PERIOD"),
        ("key=const:all,rate=0/s", "positive integer"),
        ("key=const:all,rate=1.5/s", "positive integer"),
        ("key=const:all,rate=10/week", "PERIOD must be"),
        ("key=const:all,rate=10/0s", "multiplier"),
        ("key=const:all,rate=1/s,burst=-1", "burst must be an integer"),
        ("key=const:all,rate=1/s,cost=0", "cost must be a positive number"),
        ("key=const:all,rate=1/s,cost=nan", "cost must be a positive number"),
        ("key=const:all,rate=1/s,cost=3", "exceeds burst + 1"),
        ("key=const:all,rate=1/s,size=3", "unknown field 'size'"),
        ("key=const:all,rate=1/s,rate=2/s", "given twice"),
        ("key=const:all,rate=1/s,name=a b", "name must be"),
        ("key=const:all,rate=1/s,bypass=a b", "bypass must be"),
        ("key=const:all;rate=1/s", "missing rate="),
        ("key=const:all,rate=1/s,burst", "expected field=value"),
    ],
)
def test_bad_rules_name_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="quota rule") as e:
        parse_rule(text)
    assert message in str(e.value)


def test_two_rules_with_one_name() -> None:
    with pytest.raises(ConfigError, match="two rules are named 'x-tenant'"):
        parse_rules(["key=header:X-Tenant,rate=1/s", "key=header:x-tenant,rate=5/min"])
