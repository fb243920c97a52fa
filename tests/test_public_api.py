"""The public API is curated: a sorted ``__all__`` whose names all exist."""

import flowctl


def test_all_is_sorted_and_unique() -> None:
    assert flowctl.__all__ == sorted(set(flowctl.__all__))


def test_every_exported_name_exists() -> None:
    missing = [name for name in flowctl.__all__ if not hasattr(flowctl, name)]
    assert missing == []


def test_public_names_are_exported() -> None:
    public = {n for n in vars(flowctl) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(flowctl, n)).__name__ == "module"}
    assert public - modules - {"annotations"} == set(flowctl.__all__)


def test_limiter_types_are_exported() -> None:
    """Names that public signatures return or take are importable from the package."""
    from flowctl.limit.base import LimitStats
    from flowctl.limiter import DEFAULT_PRIORITIES, Decision

    assert flowctl.LimitStats is LimitStats  # LimitAlgorithm.stats() returns it
    assert flowctl.Decision is Decision  # Limiter.acquire() returns it
    assert flowctl.DEFAULT_PRIORITIES is DEFAULT_PRIORITIES  # Limiter(priorities=...) default
    assert {"Decision", "DEFAULT_PRIORITIES", "LimitStats"} <= set(flowctl.__all__)
