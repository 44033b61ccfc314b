"""HTTP health checks, run on the host right after a restart (stdlib only).

Running the check on the host keeps switch + restart + check in one SSH round
trip and reaches apps that only listen on the host's own addresses. The check
retries until its deadline: a freshly started app may need a moment to bind.
Placeholders ({host}, {release}, {revision}, ...) are filled in by the controller.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Optional, Tuple

from deploytools.remote import http_lite


def expand_placeholders(template: Any, values: Dict[str, str]) -> Any:
    """Fill {host}, {release}, {revision}, ... in strings, lists and maps (not str.format:
    user text may hold other braces)."""
    if isinstance(template, str):
        for key, value in values.items():
            template = template.replace("{%s}" % key, value)
        return template
    if isinstance(template, dict):
        return {k: expand_placeholders(v, values) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return [expand_placeholders(v, values) for v in template]
    return template


def _lookup(document: Any, dotted: str) -> Any:
    node = document
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(dotted)
    return node


def evaluate(status: int, body: bytes, spec: Dict[str, Any]) -> Optional[str]:
    """Why a response is unhealthy, or None when it meets every expectation."""
    expected_status = int(spec.get("expect_status") or 200)
    if status != expected_status:
        return "HTTP %d (expected %d)" % (status, expected_status)
    text = body.decode("utf-8", "replace")
    if spec.get("expect_text") and spec["expect_text"] not in text:
        return "body does not contain %r" % spec["expect_text"]
    expect_json = spec.get("expect_json") or {}
    if expect_json:
        try:
            document = json.loads(text)
        except ValueError:
            return "body is not JSON: %r" % text[:80]
        for key, want in expect_json.items():
            try:
                got = _lookup(document, key)
            except KeyError:
                return "JSON has no %r" % key
            if str(got) != str(want):
                return "%s is %r, expected %r" % (key, got, want)
    return None


def describe(spec: Dict[str, Any]) -> str:
    """What was expected beyond the status, for a passing row ("" when nothing was)."""
    parts = ["%s == %r" % (k, v) for k, v in sorted((spec.get("expect_json") or {}).items())]
    if spec.get("expect_text"):
        parts.append("body contains %r" % spec["expect_text"])
    return (", " + ", ".join(parts)) if parts else ""


_BODY_LIMIT = 65536
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 10  # as urllib


def _urllib_get(url: str, timeout: float) -> Tuple[int, bytes]:
    """https, credentials in the URL, non-ASCII: urllib's full client (never through a
    proxy from the environment: the app is checked where it runs)."""
    import http.client
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read(_BODY_LIMIT)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(_BODY_LIMIT) if exc.fp else b""
    except http.client.HTTPException as exc:  # a garbage status line, a truncated body
        raise http_lite.ResponseError(str(exc) or type(exc).__name__) from None


def _plain(url: str) -> bool:
    return url.startswith("http://") and url.isascii() and \
        "@" not in url.split("//", 1)[1].split("/", 1)[0]


def fetch(url: str, timeout: float) -> Tuple[int, bytes]:
    """Status and (the first 64 KiB of the) body of a GET, redirects followed as urllib
    does. Plain http:// (nearly every health URL: the app on the host itself) goes
    through http_lite, which costs no http.client import."""
    for _ in range(_MAX_REDIRECTS + 1):
        if not _plain(url):
            return _urllib_get(url, timeout)
        response = http_lite.get(url, timeout, _BODY_LIMIT)
        location = response.headers.get("location")
        if response.status not in _REDIRECTS or not location:
            return response.status, response.body
        from urllib.parse import urljoin  # only on a redirect

        url = urljoin(url, location)
    raise http_lite.ResponseError("more than %d redirects" % _MAX_REDIRECTS)


def check(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Poll the URL until healthy or the deadline passes; the last attempt explains failures."""
    url = spec["url"]
    timeout = float(spec.get("timeout") or 30)
    interval = float(spec.get("interval") or 1)
    request_timeout = float(spec.get("request_timeout") or 5)
    deadline = time.time() + timeout
    attempts = 0
    started = time.time()
    problem = "not checked"
    body = b""
    while True:
        attempts += 1
        status = 0
        try:
            status, body = fetch(url, request_timeout)
        except (OSError, ValueError, http_lite.ResponseError) as exc:
            reason = getattr(exc, "reason", exc)
            problem = "no answer: %s" % (reason if str(reason) else type(exc).__name__)
        if status:
            problem = evaluate(status, body, spec) or ""
            if not problem:
                return {"ok": True, "attempts": attempts, "status": status,
                        "seconds": round(time.time() - started, 3),
                        "body": body[:4096].decode("utf-8", "replace")}
        if time.time() + interval > deadline:
            return {"ok": False, "attempts": attempts, "status": status, "error": problem,
                    "seconds": round(time.time() - started, 3),
                    "body": body[:4096].decode("utf-8", "replace")}
        time.sleep(interval)
