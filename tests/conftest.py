"""Shared pytest configuration. Real-component gates live in tests/realenv.py."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import cgroup2, realenv

V2_DIR = Path(__file__).resolve().parent / "v2"
SWITCH_PROBE = "test_cgroup2_switch.py"


def pytest_sessionstart(session: pytest.Session) -> None:
    """A machine a crashed live v2 session left switched is restored first (opt-in; see tests/cgroup2.py).
    SIGINT gets Python's handler back when the session was started ignoring it (a background job of a
    non-interactive shell): the children the tests interrupt would inherit the ignore and never stop."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
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
    """The ``flowctl-*`` groups at the top of the v1 hierarchies our launcher uses (their paths)."""
    out = set()
    for root in cgroup2.V1_ROOTS:
        try:
            out |= {os.path.join(root, n) for n in os.listdir(root) if n.startswith(cgroup2.OUR_PREFIX)}
        except OSError:
            pass
    return out


@pytest.fixture(autouse=True)
def no_group_left_behind() -> Iterator[None]:
    """A test that leaves an empty ``flowctl-*`` group in a v1 hierarchy fails here, by name (the group is
    removed): a leak would otherwise surface later, in the cgroup2 switch probe of the next session.
    Groups still holding processes (a module fixture's workload) are not judged."""
    before = _our_groups()
    yield
    leaked = []
    for path in sorted(_our_groups() - before):
        try:
            os.rmdir(path)  # only an empty group goes: EBUSY for one that still holds processes
        except OSError:
            continue
        leaked.append(path)
    if leaked:
        pytest.fail(f"this test left empty cgroups behind (removed now): {', '.join(leaked)}", pytrace=False)
