"""``scan --notify URL``: one JSON POST per committed run, with its alerts and where to look.

Sent after the commit, so nothing here can undo or fail a run: a slow, failing or unreachable
endpoint costs at most ``budget_s`` seconds (the POST runs in a daemon thread the scan stops
waiting for) and ends as one line. The URL may carry a token (in its userinfo, path or query):
only its scheme, host and port are ever printed.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..storage.redaction import redact

ATTEMPTS = 3
FIRST_BACKOFF_S = 0.5  # then doubled: 0.5 s, 1 s between the three tries
BUDGET_S = 20.0  # all tries together; the scan has committed and only waits this long


class WebhookError(ValueError):
    """A --notify value that is not an http(s) URL."""


def shown_url(url: str) -> str:
    """What may be printed of a webhook URL: scheme, host and port, never a token."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def check_webhook_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"expected an http:// or https:// URL, got {shown_url(url)!r}")
    return url


def run_payload(summary: Any, explorer: str | None) -> dict[str, Any]:
    """The POSTed JSON: the run, its counts, alerts and model/threshold changes, and links."""
    return {
        "event": "vip2scan.run",
        "run_id": summary.run_id, "status": summary.status, "night": summary.scan_date,
        "out": summary.out, "model_id": summary.model_id, "counts": summary.counts,
        "alerts": summary.alerts, "alert_changes": summary.alert_changes,
        "record": summary.record_uri, "explorer": explorer,
    }


@dataclass
class Delivery:
    ok: bool
    line: str  # what the scan prints: one line, no secrets


def _post_once(url: str, body: bytes, timeout_s: float) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "vip2scan-notify"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - http(s) only
        response.read(65536)
        return int(response.status)


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    text = str(exc) or type(exc).__name__
    return redact(text.splitlines()[0] if text.splitlines() else text)[:200]


def post_json(url: str, payload: dict[str, Any], budget_s: float = BUDGET_S,
              attempts: int = ATTEMPTS, backoff_s: float = FIRST_BACKOFF_S) -> Delivery:
    """POST ``payload``; a 2xx answer is delivered, anything else is retried with backoff
    (4xx other than 408/429 are not retried) until ``attempts`` or ``budget_s`` run out."""
    body = json.dumps(payload, default=str).encode()
    where = shown_url(url)
    deadline = time.monotonic() + budget_s
    outcome: dict[str, Any] = {"status": None, "why": "no answer", "tries": 0}

    def deliver() -> None:
        delay = backoff_s
        for attempt in range(attempts):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            outcome["tries"] = attempt + 1
            try:
                outcome["status"] = _post_once(url, body, left)
                return
            except urllib.error.HTTPError as exc:
                outcome["why"] = _why(exc)
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    return
            except (OSError, ValueError, urllib.error.URLError) as exc:  # refused, reset, timeout
                outcome["why"] = _why(exc)
            if attempt + 1 < attempts:
                time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
                delay *= 2

    thread = threading.Thread(target=deliver, name="vip2scan-notify", daemon=True)
    thread.start()
    thread.join(budget_s + 0.5)
    if outcome["status"] is not None:
        return Delivery(True, f"notify: posted the run's {len(payload.get('alerts') or [])} "
                              f"alert(s) to {where} (HTTP {outcome['status']})")
    why = "gave up waiting" if thread.is_alive() else outcome["why"]
    return Delivery(False, f"warning: notify to {where} failed after {outcome['tries']} "
                           f"tries in {budget_s:g} s ({why}); the run is committed")
