"""Shared pieces of the haproxy engine tests: the recorded ``show stat`` / ``show info`` of the real
HAProxy 2.6 (tests/sidecar/fixtures/haproxy, taken from a run of the engine with 18 requests at a
fixed limit of 2), a fake admin socket API, and a config on loopback."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sidecar.config import HostPort, SidecarConfig
from sidecar.haproxy.runtime import Stats, parse_info, parse_stat

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "haproxy")


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


def recorded(stat: str = "show_stat_after.csv", *, pid: int | None = None,
             override: dict[tuple[str, str], dict[str, str]] | None = None) -> Stats:  # fmt: skip
    """A recorded ``Stats``; ``override`` maps (proxy, name) to columns replaced in that row."""
    rows = parse_stat(fixture(stat))
    info = parse_info(fixture("show_info.txt"))
    if pid is not None:
        info["Pid"] = str(pid)
    for key, fields in (override or {}).items():
        row = rows[key]
        rows[key] = replace(row, fields={**row.fields, **fields})
    return Stats(rows, info)


class FakeRuntime:
    """``RuntimeApi`` over canned ``Stats``: records every command list it is asked to apply."""

    def __init__(self, stats: Stats) -> None:
        self.next = stats
        self.applied: list[list[str]] = []
        self.fail: str | None = None

    async def stats(self) -> Stats:
        if self.fail is not None:
            from flowctl.errors import DataPlaneError

            raise DataPlaneError(self.fail)
        return self.next

    async def apply(self, commands: Sequence[str]) -> None:
        self.applied.append(list(commands))


def loopback_config(**overrides: Any) -> SidecarConfig:
    base = SidecarConfig(listen=HostPort("127.0.0.1", 0), admin=HostPort("127.0.0.1", 0), upstream="http://127.0.0.1:8080",
                         probe_interval_s=0.2, log_level="warning")  # fmt: skip
    return replace(base, **overrides)
