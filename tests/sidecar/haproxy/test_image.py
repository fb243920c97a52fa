"""Dockerfile.haproxy: the sidecar image plus Debian's haproxy, the engine switched on, still non-root."""

from __future__ import annotations

from pathlib import Path

from tests.sidecar.conftest import REPO


def instructions() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    buf = ""
    for line in (Path(REPO) / "Dockerfile.haproxy").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def test_the_haproxy_variant_builds_on_the_sidecar_image() -> None:
    ins = instructions()
    assert ins[0] == ("ARG", "BASE=flowctl:0.1.0") and ins[1] == ("FROM", "${BASE}")
    run = " ".join(a for i, a in ins if i == "RUN")
    assert "apt-get install" in run and " haproxy" in run and "rm -rf /var/lib/apt/lists" in run
    users = [a for i, a in ins if i == "USER"]
    assert users[-1] == "10001:10001"  # root only to install the package
    assert ("ENV", "FLOWCTL_ENGINE=haproxy") in ins
