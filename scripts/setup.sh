#!/usr/bin/env bash
# One-shot, idempotent set-up for a fresh Debian 12 machine:
#   - as root, installs the Debian packages the real-component tests and demos use;
#   - creates .venv and installs flowctl with its test and bench extras.
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(lxcfs prometheus nginx wrk redis-server haproxy)
BINS=(lxcfs prometheus nginx wrk redis-server haproxy)
missing=()
for i in "${!BINS[@]}"; do
    command -v "${BINS[$i]}" >/dev/null 2>&1 || [ -x "/usr/sbin/${BINS[$i]}" ] || [ -x "/usr/bin/${BINS[$i]}" ] || missing+=("${DEBS[$i]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        # Keep package scripts from starting services (nginx, prometheus, lxcfs, redis, haproxy): tests start their own.
        policy=/usr/sbin/policy-rc.d
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"
            trap 'rm -f "$policy"' EXIT
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: not root, so not installing ${missing[*]}; tests that need them will skip" >&2
    fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing python3-venv (ensurepip is missing)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
        echo "setup: $PY cannot create virtualenvs (ensurepip missing); run as root or: apt-get install python3-venv" >&2
        exit 1
    fi
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $PY"
    "$PY" -m venv .venv
fi
stamp=.venv/.flowctl-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing flowctl[test,bench,quota] into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test,bench,quota]'
    touch "$stamp"
fi
