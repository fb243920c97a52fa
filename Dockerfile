# flowctl sidecar: an adaptive-limiting HTTP reverse proxy (see docs/sidecar.md).
#   docker build -t flowctl:0.1.0 .
#   docker run --rm -p 8000:8000 flowctl:0.1.0 --upstream=http://app:8080 --watch=process:myapp
# Arguments go to `flowctl sidecar` (flags, or FLOWCTL_* environment variables).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY flowctl ./flowctl
COPY sidecar ./sidecar
# The "speed" extra adds uvloop, which the sidecar uses when present; "quota" the Redis client (--quota-store).
RUN pip install '.[speed,quota]' && rm -rf /src

RUN groupadd --system --gid 10001 flowctl \
    && useradd --system --uid 10001 --gid flowctl --no-create-home --shell /usr/sbin/nologin flowctl
USER 10001:10001
WORKDIR /

# Proxy on :8000 (all interfaces); admin (/metrics /healthz /readyz /debug/limiter)
# on 127.0.0.1:9901 unless FLOWCTL_ADMIN or --admin says otherwise (Kubernetes
# probes and Prometheus need --admin=0.0.0.0:9901, as in deploy/k8s).
ENV FLOWCTL_LISTEN=0.0.0.0:8000
EXPOSE 8000 9901

# The admin port is read from FLOWCTL_ADMIN when set (flags given to `docker run`
# are not visible here; keep the admin port at 9901 or set FLOWCTL_ADMIN).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('FLOWCTL_ADMIN', '127.0.0.1:9901').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"]

# SIGTERM starts the graceful drain (readyz 503, no new connections, in-flight
# requests finish within --drain-seconds), then the process exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["flowctl", "sidecar"]
