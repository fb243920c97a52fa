"""The haproxy engine: HAProxy as the sidecar's data plane, driven by flowctl (docs/haproxy.md).

Modules: ``render`` (the generated haproxy.cfg), ``runtime`` (the admin socket:
commands, ``show stat`` / ``show info`` parsing), ``control`` (what to set:
the admission rule, and the Limiter fed HAProxy's completions), ``process``
(the supervised child), ``metrics`` (HAProxy's figures under flowctl names),
``engine`` (``HaproxySidecar``: the wiring and the control loop). Nothing runs
at import.
"""
