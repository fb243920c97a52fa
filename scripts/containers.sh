#!/usr/bin/env bash
# Make real OCI containers work on this kind of machine (Debian 12, root, no registry access),
# for tests/containers and for docs/containers.md. Idempotent; a re-run with the images present
# takes about a second.
#
#   1. installs podman, runc, catatonit (pods' infra container) and debootstrap (Debian packages; as root);
#   2. writes flowctl's own containers.conf (the machine's /etc/containers files are not edited):
#      point podman at it with  export CONTAINERS_CONF=/var/lib/flowctl/containers.conf
#   3. builds two local base images without a registry:
#        localhost/debian-base:bookworm            debootstrap --variant=minbase bookworm
#                                                  (+ python3, python3-venv, ca-certificates),
#                                                  imported with `podman import`; the rootfs tarball
#                                                  is cached in /var/cache/flowctl
#        docker.io/library/python:3.11-slim-bookworm   a two-line Containerfile on it (a venv at
#                                                  /usr/local, so `python` and `pip` are on PATH):
#                                                  the stand-in for the Dockerfile's FROM line.
#
# The three settings podman 4.3 needs here, and why:
#   - runtime runc (in the conf below; `--runtime runc` on the command line does the same):
#     crun refuses this host's hybrid cgroup layout (v1 controllers plus an empty cgroup2 at
#     /sys/fs/cgroup/unified) with "cgroups in hybrid mode not supported".
#   - default_ulimits = [] (in the conf) and `--ulimit host` on `podman run`: the sandbox forbids
#     raising RLIMIT_NOFILE/NPROC, and podman's defaults (nofile 1048576, nproc) would try to.
#   - builds: `podman build --pull=never --network host -v /etc/ssl/certs:/etc/ssl/certs:ro`:
#     no registry is reachable (the base images are local), the build's pip needs the host's
#     network (only PyPI is reachable) and its CA certificates.
#
# Environment: FLOWCTL_CONTAINERS_CONF (default /var/lib/flowctl/containers.conf),
# FLOWCTL_CACHE (default /var/cache/flowctl), DEBIAN_MIRROR (default: the first deb.debian.org-like
# URI in apt's sources). Prints `export CONTAINERS_CONF=...` as its last line.
set -euo pipefail

CONF=${FLOWCTL_CONTAINERS_CONF:-/var/lib/flowctl/containers.conf}
CACHE=${FLOWCTL_CACHE:-/var/cache/flowctl}
BASE_IMAGE=localhost/debian-base:bookworm
PY_IMAGE=docker.io/library/python:3.11-slim-bookworm
TARBALL=$CACHE/debian-base-bookworm.tar

say() { echo "containers.sh: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    say "needs root (podman as root, apt-get, debootstrap)"
    exit 1
fi

# 1. Packages ---------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
# catatonit: the init of a pod's infra container (podman builds its pause image from it).
command -v catatonit >/dev/null 2>&1 || missing+=(catatonit)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then  # keep package scripts from starting services
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Our containers.conf (read instead of /etc/containers/containers.conf when CONTAINERS_CONF is set)
mkdir -p "$(dirname "$CONF")" "$CACHE"
tmp=$(mktemp "$CONF.XXXXXX")
cat > "$tmp" <<'EOF'
# Written by flowctl's scripts/containers.sh; used through CONTAINERS_CONF. See that script for why.
[containers]
# The sandbox forbids raising RLIMIT_NOFILE/NPROC: no default ulimits (run with --ulimit host).
default_ulimits = []

[engine]
# crun: "cgroups in hybrid mode not supported" on this v1 + empty-v2 layout; runc works.
runtime = "runc"
# No systemd here: podman manages cgroups itself and logs events to a file.
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
if ! cmp -s "$tmp" "$CONF" 2>/dev/null; then mv "$tmp" "$CONF"; else rm -f "$tmp"; fi
export CONTAINERS_CONF=$CONF

# 3. Base images ------------------------------------------------------------------------------
if ! podman image exists "$BASE_IMAGE"; then
    if [ ! -s "$TARBALL" ]; then
        mirror=${DEBIAN_MIRROR:-}
        if [ -z "$mirror" ]; then
            mirror=$(grep -rhoE '(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
                | head -n1 | awk '{print $2}' || true)
            mirror=${mirror:-http://deb.debian.org/debian}
        fi
        root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        say "debootstrap minbase bookworm from $mirror (about 45 s)"
        /usr/sbin/debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$root" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
            || { say "debootstrap failed; see $CACHE/debootstrap.log"; rm -rf "$root"; exit 1; }
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" --numeric-owner -cf "$TARBALL.part" .
        mv "$TARBALL.part" "$TARBALL"
        rm -rf "$root"
    fi
    say "importing $BASE_IMAGE"
    podman import -q --change 'CMD ["/bin/bash"]' "$TARBALL" "$BASE_IMAGE" >/dev/null
fi

if ! podman image exists "$PY_IMAGE"; then
    ctx=$(mktemp -d)
    cat > "$ctx/Containerfile" <<EOF
FROM $BASE_IMAGE
RUN python3 -m venv /usr/local
EOF
    say "building $PY_IMAGE (stand-in for the Dockerfile's base) on $BASE_IMAGE"
    podman build --pull=never --network host -t "$PY_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
fi

# podman leaves its (empty) parent groups behind; the cgroup v2 tests need an empty v1 cpu hierarchy.
for d in /sys/fs/cgroup/*/libpod_parent; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
done

echo "export CONTAINERS_CONF=$CONF"
