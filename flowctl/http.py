"""Framework-neutral HTTP pieces every integration shares: the shed response and the metrics page.

The aiohttp integration (``flowctl.aiohttp``) and the sidecar (both of its
listeners) build their responses from these, so a shed looks the same
whichever way it was served.
"""

from __future__ import annotations

import json
import math
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from flowctl.limiter import Rejection

__all__ = ["metrics_page", "rejection_bytes", "rejection_parts"]

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
_BODY_HEADS: dict[tuple[str, str], bytes] = {}  # (trigger, stage) -> the body's bytes before its retry_after_s
_BODY_HEADS_KEPT = 256


def rejection_parts(decision: Rejection, *, reason_header: str | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """The headers and JSON body of a shed response.

    Headers: ``Retry-After`` (whole seconds, at least 1) and, with ``reason_header``, the
    trigger under that name. Body: ``{"error": "overloaded", "reason": <trigger>, "stage": <the
    stage that shed>, "retry_after_s": <float>}``. The status (503 or 429) is the integration's choice.
    """
    trigger = decision.reason.trigger
    retry_after_s = float(decision.retry_after_s)
    if not math.isfinite(retry_after_s) or retry_after_s < 0:
        retry_after_s = 1.0
    headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}
    if reason_header is not None:
        headers[reason_header] = trigger
    body = {"error": "overloaded", "reason": trigger, "stage": decision.reason.stage, "retry_after_s": round(retry_after_s, 3)}
    return headers, body


def rejection_bytes(decision: Rejection, *, reason_header: str | None = None) -> tuple[dict[str, str], bytes]:
    """The shed response as sent: ``rejection_parts``' headers plus ``Content-Type`` (JSON, UTF-8), and
    its body as ``json.dumps`` encodes it, byte for byte. For the hot path: everything but
    ``retry_after_s`` is encoded once per (trigger, stage)."""
    headers, body = rejection_parts(decision, reason_header=reason_header)
    headers["Content-Type"] = JSON_CONTENT_TYPE
    trigger, stage = decision.reason.trigger, decision.reason.stage
    key = (trigger, stage)
    head = _BODY_HEADS.get(key)
    if head is None:  # json.dumps writes a float as its repr: the body is head + repr + "}"
        text = json.dumps({"error": "overloaded", "reason": trigger, "stage": stage, "retry_after_s": 0.0})
        head = text[: -len("0.0}")].encode("utf-8")
        if len(_BODY_HEADS) < _BODY_HEADS_KEPT:
            _BODY_HEADS[key] = head
    return headers, head + repr(body["retry_after_s"]).encode("ascii") + b"}"


def metrics_page(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """``registry`` rendered in the exposition format the scraper's ``Accept`` header asks for,
    and that format's Content-Type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
