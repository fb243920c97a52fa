"""The runtime API client: parsing what HAProxy 2.6 printed, and one exchange over a fake admin socket."""

from __future__ import annotations

import asyncio
import os

import pytest

from flowctl.errors import DataPlaneError
from sidecar.haproxy.runtime import Runtime, parse_info, parse_rt, parse_stat, set_map, set_maxconn, split_answers
from tests.sidecar.haproxy.helpers import fixture


def test_show_stat_rows_by_proxy_and_name() -> None:
    rows = parse_stat(fixture("show_stat_loaded.csv"))
    assert set(rows) >= {("flowctl", "FRONTEND"), ("app", "upstream"), ("app", "BACKEND"), ("streams", "upstream"),
                         ("shed_critical", "BACKEND"), ("shed_default", "BACKEND"), ("shed_sheddable", "BACKEND")}  # fmt: skip
    server = rows[("app", "upstream")]
    assert server.num("scur") == 2 and server.num("slim") == 2  # maxconn 2: two in service
    assert rows[("app", "BACKEND")].num("qcur") == 4  # four critical requests queued
    assert rows[("flowctl", "FRONTEND")].num("qcur") == 0 and not rows[("flowctl", "FRONTEND")].has("qcur")  # empty column


def test_responses_sum_every_status_class() -> None:
    rows = parse_stat(fixture("show_stat_after.csv"))
    assert rows[("app", "upstream")].responses() == 4
    assert rows[("app", "BACKEND")].num("hrsp_5xx") - rows[("app", "upstream")].num("hrsp_5xx") == 2  # queue timeouts
    assert [rows[(f"shed_{p}", "BACKEND")].num("req_tot") for p in ("critical", "default", "sheddable")] == [1, 6, 5]


def test_show_info() -> None:
    info = parse_info(fixture("show_info.txt"))
    assert info["Version"].startswith("2.6.")
    assert info["Pid"].isdigit()


def test_show_stat_without_header_is_an_error() -> None:
    with pytest.raises(DataPlaneError):
        parse_stat("Unknown command\n")


def test_split_answers_of_one_exchange() -> None:
    # as HAProxy 2.6 answered "set maxconn ...;set map ...;set maxconn server app/nope 3;show info"
    raw = "\n\nNo such server.\n\nName: HAProxy\nPid: 42\n\n"
    assert split_answers(raw, 4) == ["", "", "No such server.", "Name: HAProxy\nPid: 42"]
    assert split_answers("", 2) == ["", ""]


def test_set_maxconn_never_sends_zero_which_haproxy_reads_as_unlimited() -> None:
    assert set_maxconn("app", "upstream", 3) == "set maxconn server app/upstream 3"
    for n in (0, -1):
        with pytest.raises(ValueError):
            set_maxconn("app", "upstream", n)
    assert set_map("/run/a.map", "default", 4) == "set map /run/a.map default 4"


async def test_one_exchange_over_a_unix_socket(tmp_path: object) -> None:
    got: list[bytes] = []
    info = fixture("show_info.txt").rstrip("\n") + "\n\n"
    answers = ["\n" + info, info]  # set (nothing to say), show info; then show info alone

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.readline())
        writer.write(answers.pop(0).encode())
        await writer.drain()
        writer.close()

    path = os.path.join(str(tmp_path), "admin.sock")
    server = await asyncio.start_unix_server(serve, path)
    try:
        rt = Runtime(path)
        out = await rt.send(["set maxconn server app/upstream 3", "show info"])
        assert got == [b"set maxconn server app/upstream 3;show info\n"]
        assert out[0] == "" and out[1].startswith("Name: HAProxy")
        with pytest.raises(DataPlaneError, match="refusing"):
            await rt.send(["show info;shutdown sessions server app/upstream"])
        with pytest.raises(DataPlaneError, match="refusing"):
            await rt.send(["show info\nshow stat"])
        with pytest.raises(DataPlaneError, match="answered"):
            await rt.apply(["show info"])  # a set command answers nothing; anything else is an error
    finally:
        server.close()
        await server.wait_closed()
    with pytest.raises(DataPlaneError, match="admin.sock"):
        await Runtime(path, timeout_s=0.5).stats()  # nobody listens any more


def test_flowctl_rt_parses_as_two_integers_or_none() -> None:
    assert parse_rt("123456 78\n") == (123456, 78)
    assert parse_rt("Unknown command: 'flowctl'\n") is None
    assert parse_rt("") is None and parse_rt("-1 2") is None
