"""The agent's HTTP client (remote/http_lite.py) and the health check's use of it,
against real local servers: http.server for well-behaved answers, raw sockets for
the ill-behaved ones (chunked, kept open, endless, garbage)."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploytools.remote import health, http_lite


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's API
        routes: dict[str, tuple[int, dict[str, str], bytes]] = {
            "/health?x=1": (200, {}, b'{"ok": true, "path": "query"}'),
            "/down": (503, {}, b"draining"),
            "/moved": (302, {"Location": "/health?x=1"}, b""),
            "/away": (301, {"Location": f"http://127.0.0.1:{self.server.server_port}/down"}, b""),
            "/loop": (302, {"Location": "/loop"}, b""),
        }
        status, headers, body = routes.get(self.path, (404, {}, b"no such page"))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def raw_server(answer: Callable[[socket.socket], None]) -> tuple[str, threading.Thread]:
    """One connection answered by `answer` on a raw socket (then closed)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/x", thread


def test_status_body_query_and_redirects(server: str) -> None:
    assert health.fetch(f"{server}/health?x=1", 5) == (200, b'{"ok": true, "path": "query"}')
    assert health.fetch(f"{server}/down", 5) == (503, b"draining")
    assert health.fetch(f"{server}/moved", 5)[0] == 200  # relative Location
    assert health.fetch(f"{server}/away", 5) == (503, b"draining")  # absolute Location
    with pytest.raises(http_lite.ResponseError, match="redirects"):
        health.fetch(f"{server}/loop", 5)


def test_health_check_reads_json_through_it(server: str) -> None:
    result = health.check({"url": f"{server}/health?x=1", "expect_json": {"path": "query"},
                           "timeout": 2})
    assert result["ok"] and result["status"] == 200
    failed = health.check({"url": f"{server}/down", "timeout": 0.1, "interval": 0.1})
    assert not failed["ok"] and failed["error"] == "HTTP 503 (expected 200)"


def test_no_answer_is_named() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = health.check({"url": f"http://127.0.0.1:{port}/", "timeout": 0.1, "interval": 0.1})
    assert result["error"] == "no answer: [Errno 111] Connection refused"


def test_chunked_answer_is_decoded() -> None:
    url, thread = raw_server(lambda c: c.sendall(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nwiki\r\n6;ext=1\r\npedia \r\n0\r\n\r\n"))
    assert health.fetch(url, 5) == (200, b"wikipedia ")
    thread.join(5)


def test_a_connection_kept_open_or_an_endless_body_costs_no_timeout() -> None:
    release = threading.Event()

    def keep_open(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        release.wait(10)

    url, thread = raw_server(keep_open)
    assert health.fetch(url, 5) == (200, b"ok")
    release.set()
    thread.join(5)

    def endless(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
        with pytest.raises(OSError):
            while True:
                conn.sendall(b"x" * 65536)

    url, thread = raw_server(endless)
    status, body = health.fetch(url, 5)
    assert status == 200 and len(body) == 65536
    thread.join(5)


@pytest.mark.parametrize("answer, message", [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "bad HTTP status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "truncated response"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2", "incomplete HTTP response"),
])
def test_garbage_is_an_error_that_says_what(answer: bytes, message: str) -> None:
    url, thread = raw_server(lambda c: c.sendall(answer))
    result = health.check({"url": url, "timeout": 0.1, "interval": 0.1})
    assert result["error"].startswith("no answer: " + message), result
    thread.join(5)


def test_urls() -> None:
    assert http_lite.split_url("http://[::1]:8080/a?b#c") == ("::1", 8080, "/a?b")
    assert http_lite.split_url("http://host?q") == ("host", 80, "/?q")
    assert http_lite.split_url("http://h:81") == ("h", 81, "/")
    for bad in ("https://h/", "http://:80/", "http://h:x/"):
        with pytest.raises(ValueError):
            http_lite.split_url(bad)
    # what the light client does not do goes to urllib: TLS, credentials, non-ASCII
    assert health._plain("http://127.0.0.1:8000/health")
    assert not health._plain("https://app.internal/health")
    assert not health._plain("http://user:secret@app/health")
    assert not health._plain("http://app/gesundheit/ü")


def test_a_plain_health_check_imports_no_http_client() -> None:
    """The point of http_lite: the agent's health check costs no http.client/email/ssl
    import (~30 ms of CPU on every host)."""
    root = Path(__file__).resolve().parents[2]
    heavy = ("http.client", "urllib.request", "email", "ssl")
    code = (f"import sys; sys.path.insert(0, {str(root)!r})\n"
            "from deploytools.remote import health\n"
            "r = health.check({'url': 'http://127.0.0.1:9/health', 'timeout': 0.1})\n"
            "assert r['error'].startswith('no answer'), r\n"
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == []
