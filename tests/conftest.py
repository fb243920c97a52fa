"""Shared pytest configuration. Real-component gates live in tests/realenv.py."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import cgroup2, realenv

V2_DIR = Path(__file__).resolve().parent / "v2"
SWITCH_PROBE = "test_cgroup2_switch.py"


def pytest_sessionstart(session: pytest.Session) -> None:
    """A machine a crashed live v2 session left switched is restored first (opt-in; see tests/cgroup2.py)."""
    cgroup2.recover_at_session_start(lambda msg: print(f"tests/conftest.py: {msg}", file=sys.stderr))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The live v2 tests (tests/v2) and the switch probe run first: the cpu controller is switched before
    any other test could leave a file open in the v1 cpu hierarchy (an open file keeps it from unmounting)."""
    items.sort(key=lambda item: 0 if V2_DIR in item.path.parents or item.path.name == SWITCH_PROBE else 1)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per capability this machine's kernel refused (tests/realenv.py ``machine_lacks``)."""
    for capability, reason in sorted(realenv.LACKED.items()):
        terminalreporter.write_line(f"machine lacks {capability}: {reason}", yellow=True)


def _our_groups() -> set[str]:
    try:
        return {n for n in os.listdir(cgroup2.V1_CPU) if n.startswith(cgroup2.OUR_PREFIX)}
    except OSError:
        return set()


@pytest.fixture(autouse=True)
def no_group_left_behind() -> Iterator[None]:
    """A test that leaves an empty ``flowctl-*`` group in the v1 cpu hierarchy fails here, by name (the group
    is removed): a leak would otherwise surface later, in the cgroup2 switch probe of the next session.
    Groups still holding processes (a module fixture's workload) are not judged."""
    before = _our_groups()
    yield
    leaked = []
    for name in sorted(_our_groups() - before):
        path = os.path.join(cgroup2.V1_CPU, name)
        try:
            os.rmdir(path)  # only an empty group goes: EBUSY for one that still holds processes
        except OSError:
            continue
        leaked.append(path)
    if leaked:
        pytest.fail(f"this test left empty cgroups behind (removed now): {', '.join(leaked)}", pytrace=False)
