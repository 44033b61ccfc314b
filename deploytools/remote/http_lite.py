"""A small HTTP/1.0 client over plain sockets (stdlib only, cheap to import).

Why not `http.client`/`urllib`: importing them pulls in email.*, ssl and more, ~30 ms of
CPU on every host for the one or two requests an agent session makes (supervisord's
XML-RPC, a health check). The agent's needs are narrow: one request per connection to
`unix://PATH` or `http://HOST[:PORT]`, a deadline on the whole exchange, the status,
headers and (a bounded part of) the body. HTTP/1.0, so that servers answer without
chunking; a chunked answer is decoded anyway. https and anything else unusual is left to
urllib by the caller (remote/health.py).
"""

from __future__ import annotations

import socket
import time
from typing import Dict, NamedTuple, Optional, Tuple


class ResponseError(Exception):
    """The answer was not a well-formed HTTP response."""


class Response(NamedTuple):
    status: int
    reason: str
    headers: Dict[str, str]  # lower-cased names; a repeated header keeps its last value
    body: bytes


def split_url(url: str) -> Tuple[str, int, str]:
    """(host, port, path with query) of `http://HOST[:PORT][/PATH]`; ValueError if not."""
    if not url.startswith("http://"):
        raise ValueError("not an http:// URL: %r" % url)
    rest = url[len("http://"):].split("#", 1)[0]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    hostport, path = rest[:cut], rest[cut:]
    if not path.startswith("/"):
        path = "/" + path
    host, port = hostport, 80
    if not hostport.endswith("]") and ":" in hostport:  # not a bare [v6] address
        host, _, text = hostport.rpartition(":")
        if text and not text.isdigit():
            raise ValueError("bad port in %r" % url)
        port = int(text) if text else 80
    host = host.strip("[]")
    if not host or "@" in host:
        raise ValueError("no plain host in %r" % url)
    return host, port, path


def connect(url: str, deadline: float) -> socket.socket:
    """A connected socket to `unix://PATH` or `http://HOST[:PORT]` (errors are OSError:
    a PermissionError on a unix socket stays one, for supervisor.connect)."""
    timeout = max(deadline - time.monotonic(), 0.001)
    if url.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(url[len("unix://"):])
        except BaseException:
            sock.close()
            raise
        return sock
    host, port, _ = split_url(url)
    return socket.create_connection((host, port), timeout)


def _expected_size(raw: bytearray) -> Optional[int]:
    """How long the whole response is, once its headers are in and give a Content-Length
    (None while unknown: read on, to EOF if need be)."""
    end = raw.find(b"\r\n\r\n")
    for line in raw[:end].split(b"\r\n")[1:] if end >= 0 else ():
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return end + 4 + int(value)
    return None


def read_response(sock: socket.socket, deadline: float, limit: int) -> bytes:
    """Up to EOF, the end of a Content-Length body, or `limit` bytes of body (a server
    that keeps the connection open despite `Connection: close` costs no timeout, nor
    does an endless body)."""
    raw = bytearray()
    expected: Optional[int] = None
    head_end = -1
    while expected is None or len(raw) < expected:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
        if head_end < 0:
            head_end = raw.find(b"\r\n\r\n")
        if head_end >= 0 and len(raw) - head_end - 4 >= limit:
            break
        if head_end < 0 and len(raw) > limit:
            raise ResponseError("no end of HTTP headers in %d bytes" % len(raw))
        if expected is None:
            expected = _expected_size(raw)
    return bytes(raw)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while True:
        line, sep, body = body.partition(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ResponseError("bad chunk size %r" % line[:40]) from None
        if not sep or size == 0:
            return bytes(out)
        out += body[:size]
        body = body[size + 2:]


def parse_response(raw: bytes, limit: int) -> Response:
    """The status, headers and body of a response read by read_response; a body shorter
    than its Content-Length (and not cut at `limit`) is an error."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ResponseError("incomplete HTTP response (%d bytes)" % len(raw))
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ResponseError("bad HTTP status line %r" % lines[0][:100])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    encoding = headers.get("transfer-encoding", "identity").lower()
    if encoding == "chunked":
        body = _dechunk(body)
    elif encoding != "identity":
        raise ResponseError("unsupported Transfer-Encoding %r" % headers["transfer-encoding"])
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise ResponseError("bad Content-Length %r" % headers["content-length"]) from None
        if len(body) < min(length, limit):
            raise ResponseError("truncated response: %d of %d bytes" % (len(body), length))
        body = body[:length]
    return Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, body[:limit])


def exchange(url: str, request: bytes, timeout: float, limit: int) -> Response:
    """Send one request on a new connection and read its answer; `timeout` bounds the
    whole exchange. Raises OSError (timeouts included), ValueError or ResponseError."""
    deadline = time.monotonic() + timeout
    sock = connect(url, deadline)
    try:
        sock.sendall(request)
        raw = read_response(sock, deadline, limit)
    finally:
        sock.close()
    return parse_response(raw, limit)


def get(url: str, timeout: float, limit: int) -> Response:
    """GET an http:// URL (no proxy, no redirects followed: the caller decides)."""
    host, port, path = split_url(url)
    if ":" in host:
        host = "[%s]" % host
    host_header = host if port == 80 else "%s:%d" % (host, port)
    request = ("GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: deploytools\r\n"
               "Accept: */*\r\nConnection: close\r\n\r\n" % (path, host_header))
    return exchange(url, request.encode("latin-1"), timeout, limit)
