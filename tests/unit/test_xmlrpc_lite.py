"""The agent's own XML-RPC client: its codec against xmlrpc.client's, its HTTP handling
against canned answers, and that the agent no longer imports xmlrpc.client at all."""

from __future__ import annotations

import socket
import subprocess
import threading
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploytools.remote import xmlrpc_lite
from deploytools.remote.supervisor import Fault, Supervisor, SupervisorError

ROOT = Path(__file__).resolve().parents[2]
NESTED = {"name": "app", "pid": 4242, "negative": -2 ** 31, "ok": True, "off": False,
          "ratio": 0.25, "none": None, "list": [1, "two", [3.5, {"deep": ["x"]}], []],
          "empty": {}, "text": "a < b && c > d \"q\" 'a' ]]> \n\t end",
          "unicode": "héllo wörld — ✓ 日本 \U0001f600"}


def response(value: object) -> bytes:
    """A methodResponse as supervisord writes it (it uses xmlrpc.client.dumps)."""
    return xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True).encode()


def test_call_round_trips_through_xmlrpc_client() -> None:
    """What we send, xmlrpc.client (supervisord's own parser) reads back unchanged."""
    sent = xmlrpc_lite.dumps_call("supervisor.x", (NESTED, "é\r\n", 2 ** 40))
    params, method = xmlrpc.client.loads(sent)
    assert method == "supervisor.x"
    assert params == (NESTED, "é\r\n", 2 ** 40)  # 2 ** 40 as <i8>


def test_response_decodes_nested_values_entities_and_unicode() -> None:
    assert xmlrpc_lite.loads_response(response(NESTED)) == NESTED
    assert xmlrpc_lite.loads_response(response(["<&>", ""])) == ["<&>", ""]


def test_untyped_nil_base64_datetime_and_i4() -> None:
    body = (b"<?xml version='1.0'?><methodResponse><params><param><value><array><data>"
            b"<value>plain &amp; &#233;</value><value><nil/></value><value><i4>-7</i4></value>"
            b"<value><base64>aGk=</base64></value>"
            b"<value><dateTime.iso8601>20261203T14:00:00</dateTime.iso8601></value>"
            b"<value><boolean>1</boolean></value><value><double>1e3</double></value><value/>"
            b"</data></array></value></param></params></methodResponse>")
    assert xmlrpc_lite.loads_response(body) == [
        "plain & é", None, -7, b"hi", "20261203T14:00:00", True, 1000.0, ""]


def test_control_characters_in_a_log_tail_do_not_break_the_answer() -> None:
    """supervisord passes a program's raw stderr (ANSI colours) into its XML."""
    body = response(["\x1b[31mboom\x1b[0m\n", 0, False]).replace(b"&#27;", b"\x1b")
    assert b"\x1b" in body
    assert xmlrpc_lite.loads_response(body) == ["?[31mboom?[0m\n", 0, False]


def test_fault_is_raised_with_code_and_string() -> None:
    body = xmlrpc.client.dumps(xmlrpc.client.Fault(10, "BAD_NAME: nope")).encode()
    with pytest.raises(Fault) as caught:
        xmlrpc_lite.loads_response(body)
    assert (caught.value.faultCode, caught.value.faultString) == (10, "BAD_NAME: nope")
    assert str(caught.value) == str(xmlrpc.client.Fault(10, "BAD_NAME: nope"))


@pytest.mark.parametrize("body", [
    b"", b"not xml", b"<methodResponse><params><param><value><int>x</int></value>",
    b"<methodResponse><params></params></methodResponse>",
    b"<methodCall><params><param><value>1</value></param></params></methodCall>",
    b"<methodResponse><params><param><value><bogus/></value></param></params></methodResponse>",
    b"<methodResponse><params><param><value><boolean>2</boolean></value></param></params>"
    b"</methodResponse>",
    b"<methodResponse><fault><value>nope</value></fault></methodResponse>",
])
def test_malformed_response_is_a_response_error(body: bytes) -> None:
    with pytest.raises(xmlrpc_lite.ResponseError):
        xmlrpc_lite.loads_response(body)


def test_encoding_refuses_what_xmlrpc_cannot_carry() -> None:
    with pytest.raises(TypeError):
        xmlrpc_lite.dumps_call("m", (object(),))
    with pytest.raises(TypeError):
        xmlrpc_lite.dumps_call("m", ({1: 2},))


def ok(body: bytes, length: bool = True) -> bytes:
    head = b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n"
    if length:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


@pytest.fixture()
def canned(tmp_path: Path) -> Iterator[tuple[str, list[bytes], list[bytes]]]:
    """A unix-socket server answering each connection with the next canned bytes and
    keeping what it was sent: (url, answers to fill, requests received)."""
    path = str(tmp_path / "rpc.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    answers: list[bytes] = []
    requests: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"</methodCall>" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                requests.append(data)
                conn.sendall(answers.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield "unix://" + path, answers, requests
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    thread.join(5)


def test_http_request_and_answers(canned: tuple[str, list[bytes], list[bytes]]) -> None:
    url, answers, requests = canned
    client = Supervisor({"serverurl": url, "supervisorctl": "supervisorctl -u bob -p s3cret"},
                        timeout=5)
    answers += [ok(response({"statename": "RUNNING"})),
                ok(response("to EOF"), length=False),
                ok(response("x")) + b"trailing junk past Content-Length"]
    assert client.ping() == "RUNNING"
    assert client.call("x") == "to EOF"
    assert client.call("x") == "x"
    head = requests[0].split(b"\r\n\r\n")[0].decode()
    assert head.startswith("POST /RPC2 HTTP/1.0\r\n")
    assert "Authorization: Basic Ym9iOnMzY3JldA==" in head  # bob:s3cret
    assert "Connection: close" in head and "Content-Type: text/xml" in head


@pytest.mark.parametrize("answer, words", [
    (b"HTTP/1.0 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", "HTTP status 401"),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 999\r\n\r\n<methodResponse>", "truncated"),
    (b"garbage\r\n\r\n", "bad HTTP status line"),
    (b"HTTP/1.0 200 OK\r\n", "incomplete HTTP response"),
    (ok(b"<html>not xml-rpc</html>"), "malformed XML-RPC"),
])
def test_bad_answers_are_supervisor_errors(canned: tuple[str, list[bytes], list[bytes]],
                                           answer: bytes, words: str) -> None:
    url, answers, _ = canned
    client = Supervisor({"serverurl": url, "supervisorctl": "supervisorctl -u u -p s3cret"})
    answers.append(answer)
    with pytest.raises(SupervisorError) as caught:
        client.ping()
    message = str(caught.value)
    assert message.startswith(f"supervisord at {url} is not reachable: ")
    assert words in message and "s3cret" not in message


def test_unreachable_socket_keeps_the_oserror_as_cause(tmp_path: Path) -> None:
    client = Supervisor({"serverurl": f"unix://{tmp_path / 'none.sock'}"})
    with pytest.raises(SupervisorError, match="is not reachable") as caught:
        client.ping()
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_timeout_bounds_the_call(tmp_path: Path) -> None:
    path = str(tmp_path / "silent.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)  # accepts (in the kernel) and never answers
        with pytest.raises(SupervisorError, match="timed out"):
            Supervisor({"serverurl": "unix://" + path}, timeout=0.2).ping()


def test_content_length_ends_the_read_on_a_connection_left_open(tmp_path: Path) -> None:
    path = str(tmp_path / "open.sock")
    done = threading.Event()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(ok(response("kept open")))
                done.wait(10)  # the client must not wait for this close

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            assert Supervisor({"serverurl": "unix://" + path}, timeout=5).call("x") == "kept open"
        finally:
            done.set()
            thread.join(5)


@pytest.mark.parametrize("python", ["/usr/bin/python3", "/usr/bin/pypy3"])
def test_agent_imports_no_http_client(python: str) -> None:
    """The point of xmlrpc_lite: ~30 ms of imports less on every host's agent start."""
    if not Path(python).exists():
        pytest.skip(f"{python} is not installed")
    heavy = ("http.client", "xmlrpc.client", "email", "ssl", "decimal")
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import deploytools.remote.agent; "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([python, "-S", "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == []


def test_supervisor_errors_name_the_clients_fault() -> None:
    assert Supervisor.errors == (xmlrpc_lite.Fault, SupervisorError)
