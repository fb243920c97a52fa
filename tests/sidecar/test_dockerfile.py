"""Keep the Dockerfile honest without a Docker engine: COPY sources, HEALTHCHECK, and the entrypoint after `pip install .`."""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.sidecar.conftest import REPO, Proc, start_sidecar_proc, upstream_proc  # noqa: F401

DOCKERFILE = Path(REPO) / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def _exec_form(args: str) -> list[str]:
    form: list[str] = json.loads(args)
    return form


def _ignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last matching rule wins)."""
    ignored = False
    for rule in (Path(REPO) / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        neg = rule.startswith("!")
        pat = rule[1:] if neg else rule
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
            ignored = not neg
    return ignored


def test_every_copy_source_exists_and_is_in_the_context() -> None:
    copies = [args for ins, args in instructions() if ins == "COPY"]
    assert copies, "no COPY in the Dockerfile"
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        for src in parts[:-1]:
            assert (Path(REPO) / src).exists(), f"COPY source {src} does not exist"
            assert not _ignored(src.rstrip("/")), f"COPY source {src} is excluded by .dockerignore"


def test_slim_base_non_root_user_healthcheck_entrypoint() -> None:
    ins = instructions()
    base = next(a for i, a in ins if i == "FROM")
    assert base.startswith("python:") and "slim" in base
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(i == "HEALTHCHECK" and "/healthz" in a for i, a in ins)
    assert _exec_form(next(a for i, a in ins if i == "ENTRYPOINT")) == ["flowctl", "sidecar"]
    # the packages pyproject builds are all copied
    assert {"flowctl", "sidecar", "pyproject.toml", "README.md"} <= {
        p.rstrip("/") for i, a in ins if i == "COPY" for p in shlex.split(a)[:-1]
    }


def test_healthcheck_command_passes_against_a_running_sidecar(upstream_proc: Proc) -> None:  # noqa: F811
    hc = next(a for i, a in instructions() if i == "HEALTHCHECK")
    cmd = _exec_form(hc[hc.index("CMD") + 3 :].strip())
    assert cmd[0] == "python"
    sc = start_sidecar_proc(upstream_proc.url)
    try:
        env = {**os.environ, "FLOWCTL_ADMIN": f"127.0.0.1:{sc.admin_port}"}
        ok = subprocess.run([sys.executable, *cmd[1:]], env=env, timeout=30, capture_output=True)
        assert ok.returncode == 0, ok.stderr
    finally:
        sc.stop()
    bad = subprocess.run([sys.executable, *cmd[1:]], env={**os.environ, "FLOWCTL_ADMIN": f"127.0.0.1:{sc.admin_port}"},
                         timeout=30, capture_output=True)  # fmt: skip
    assert bad.returncode != 0  # and it fails once the sidecar is gone


@pytest.mark.slow
def test_entrypoint_exists_after_plain_pip_install(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    build = tmp_path / "src"  # install from a copy of exactly what the Dockerfile copies
    build.mkdir()
    for ins, args in instructions():
        if ins != "COPY":
            continue
        *srcs, _ = shlex.split(args)
        for src in srcs:
            subprocess.run(["cp", "-r", str(Path(REPO) / src), str(build / src.rstrip("/"))], check=True)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "."], cwd=build, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    entry = _exec_form(next(a for i, a in instructions() if i == "ENTRYPOINT"))
    exe = env_dir / "bin" / entry[0]
    assert exe.exists(), f"{entry[0]} not installed"
    h = subprocess.run([str(exe), *entry[1:], "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert h.returncode == 0, h.stderr
    assert "--upstream" in h.stdout and "--drain-seconds" in h.stdout
    m = subprocess.run([str(py), "-m", "sidecar", "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert m.returncode == 0, m.stderr
