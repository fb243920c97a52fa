"""flowctl sidecar: an adaptive-limiting HTTP reverse proxy (``python -m sidecar``, ``flowctl sidecar``).

Modules: ``config`` (flags > FLOWCTL_* env > TOML), ``headers`` (hop-by-hop
hygiene), ``proxy`` (the streaming forwarder), ``watch`` (whose CPU),
``probe`` (upstream readiness), ``admin`` (the admin listener), ``app``
(wiring, drain on SIGTERM). Nothing runs at import.
"""
