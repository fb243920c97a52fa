"""``bench.ports``: ports for the benchmarks' servers."""

from __future__ import annotations

import socket

from bench.ports import free_ports


def test_free_ports_are_distinct_and_free() -> None:
    # 200 ports taken one by one from ~28k ephemeral ones collide about half the time (the birthday
    # bound); held together they cannot.
    ports = free_ports(200)
    assert len(set(ports)) == 200
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # released: a server can listen on it
