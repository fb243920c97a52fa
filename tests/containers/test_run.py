"""flowctl inside `podman run --cpus 0.5 --memory 256m`: inspect, an in-process app that sheds, and lxcfs views."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.containers.conftest import APPS, LXCFS_FILES
from tests.containers.podman import RUN, podman, unique, wait_http

pytestmark = pytest.mark.real

LIMITS = ["--cpus", "0.5", "--memory", "256m"]
MIB = 1024 * 1024
BURNER = "python -c 'while True: pass'"


def _inspect_with_burner(image: str, names: dict[str, list[str]], *extra: str) -> dict[str, Any]:
    """``flowctl inspect --json`` in a limited container while a burner there uses all of its quota."""
    name = unique("inspect")
    names["container"].append(name)
    script = f"{BURNER} & sleep 0.5; flowctl inspect --json --interval 1; kill $!"
    out = podman("run", "--rm", "--name", name, *RUN, *LIMITS, *extra, "--entrypoint", "sh", image, "-c", script)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_inspect_reads_half_a_cpu_and_256_mib(flowctl_image: str, names: dict[str, list[str]]) -> None:
    r = _inspect_with_burner(flowctl_image, names)
    assert r["errors"] == []
    assert r["effective"] == {**r["effective"], "cpus": 0.5, "source": "quota"}
    assert r["cgroup"]["version"] == 1 and r["cgroup"]["limit_cores"] == 0.5
    assert r["cgroup"]["memory_limit_bytes"] == 256 * MIB
    assert r["cgroup"]["utilization"] > 0.8  # the burner saturates the 0.5-CPU budget ...
    assert r["host"]["cpus"] == os.cpu_count()  # ... while the host view counts every CPU of the machine
    assert r["lxcfs"] is None


def test_lxcfs_views_mounted_as_the_daemonset_does(flowctl_image: str, lxcfs_dir: str, names: dict[str, list[str]]) -> None:
    mounts = [a for f in LXCFS_FILES for a in ("-v", f"{lxcfs_dir}/{f}:/{f}:ro")]
    r = _inspect_with_burner(flowctl_image, names, *mounts)
    assert r["lxcfs"] is not None, r
    assert r["lxcfs"]["cpus"] == 1  # lxcfs rounds 0.5 up to a whole CPU; the cgroup reader does not
    assert r["lxcfs"]["mem_total_bytes"] == 256 * MIB
    assert r["cgroup"]["limit_cores"] == 0.5 and r["effective"]["cpus"] == 0.5
    assert r["host"]["virtualized"] is True  # /proc inside is lxcfs's, and inspect says so
    name = unique("cpucount")
    names["container"].append(name)
    out = podman("run", "--rm", "--name", name, *RUN, *LIMITS, *mounts, "--entrypoint", "python", flowctl_image,
                 "-c", "import os; print(os.cpu_count())")  # fmt: skip
    assert out.stdout.strip() == "1"  # a cgroup-blind tool sees lxcfs's one CPU, not the machine's


async def _load(url: str, clients: int, duration_s: float) -> Counter[int]:
    statuses: Counter[int] = Counter()
    end = time.monotonic() + duration_s
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as s:

        async def one() -> None:
            while time.monotonic() < end:
                try:
                    async with s.get(url) as r:
                        await r.read()
                        statuses[r.status] += 1
                except aiohttp.ClientError:
                    statuses[0] += 1

        await asyncio.gather(*(one() for _ in range(clients)))
    return statuses


def _published(name: str, port: int) -> str:
    return podman("port", name, str(port)).stdout.strip().splitlines()[0]


def test_in_process_app_reads_the_limits_and_sheds_under_a_burner(flowctl_image: str, names: dict[str, list[str]]) -> None:
    name = unique("inproc")
    names["container"].append(name)
    podman("run", "-d", "--name", name, *RUN, *LIMITS, "-p", "127.0.0.1::8080", "-v", f"{APPS}:/apps:ro",
           "--entrypoint", "python", flowctl_image, "/apps/app.py", "8080", "--protect")  # fmt: skip
    base = f"http://{_published(name, 8080)}"
    wait_http(f"{base}/limits")
    with urllib.request.urlopen(f"{base}/limits", timeout=5) as r:
        details = json.loads(r.read())
    assert details["limit_cores"] == 0.5 and details["limit_source"] == "quota"
    assert details["details"]["memory_limit_bytes"] == 256 * MIB

    podman("exec", "-d", name, "sh", "-c", BURNER)
    statuses = asyncio.run(_load(f"{base}/burn?ms=5", clients=32, duration_s=6.0))
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert statuses[200] > 0 and statuses[503] > 0, statuses
    assert "flowctl_cpu_limit_cores 0.5" in metrics
    shed = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line.startswith("flowctl_shed_total{")}
    assert sum(shed.values()) == statuses[503], (shed, statuses)
    print(f"in-process app at --cpus 0.5 with a burner, 32 clients x 6 s: {dict(statuses)}; shed by reason {shed}")
