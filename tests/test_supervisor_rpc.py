"""The agent's XML-RPC client (remote/xmlrpc_lite.py) against a real supervisord, over
both of its servers: the unix socket and a TCP port with basic auth."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from deploytools.remote.supervisor import Fault, Supervisor, SupervisorError

PASSWORD = "pa ss:wörd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def supervisord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A supervisord with a unix socket and an authenticated TCP port, running one tiny
    program (not started); yields the two server URLs. Stopped by PID afterwards."""
    root = tmp_path_factory.mktemp("supervisord")
    sock = root / "s.sock"
    port = free_port()
    (root / "supervisord.conf").write_text("\n".join([
        "[unix_http_server]", f"file={sock}", "chmod=0700", "",
        "[inet_http_server]", f"port=127.0.0.1:{port}", "username=deployer",
        f"password={PASSWORD}", "",
        "[supervisord]", f"pidfile={root / 'supervisord.pid'}",
        f"logfile={root / 'supervisord.log'}", f"childlogdir={root}", "nodaemon=true", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[program:tiny]", "command=sleep 600", "autostart=false", "startsecs=0",
        "stopwaitsecs=2", f"stderr_logfile={root / 'tiny.err'}",
        f"stdout_logfile={root / 'tiny.out'}", "",
        "[program:slow]", "command=sleep 600", "autostart=false", "startsecs=2", "",
    ]), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-n", "-c",
         str(root / "supervisord.conf")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=str(root), start_new_session=True)
    urls = {"unix": f"unix://{sock}", "inet": f"http://127.0.0.1:{port}"}
    try:
        deadline = time.monotonic() + 20
        client = Supervisor({"serverurl": urls["unix"]}, timeout=2)
        while True:
            try:
                if client.ping() == "RUNNING":
                    break
            except SupervisorError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        yield urls
    finally:
        proc.send_signal(signal.SIGTERM)  # supervisord stops its programs first
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def client(urls: dict[str, str], kind: str, password: str = PASSWORD) -> Supervisor:
    if kind == "unix":
        return Supervisor({"serverurl": urls["unix"]}, timeout=10)
    return Supervisor({"serverurl": urls["inet"],
                       "supervisorctl": f"supervisorctl -u deployer -p '{password}'"},
                      timeout=10)


@pytest.mark.parametrize("kind", ["unix", "inet"])
def test_calls_start_stop_and_faults(supervisord: dict[str, str], kind: str) -> None:
    sup = client(supervisord, kind)
    assert sup.ping() == "RUNNING"
    assert sup.pid() > 0
    assert [(i["group"], i["name"]) for i in sup.all_info()] == [("slow", "slow"), ("tiny", "tiny")]
    assert sup.expand(["tiny"]) == ["tiny:tiny"]
    running = sup.start_all(["tiny:tiny"], timeout=10)
    assert running["tiny:tiny"]["pid"] > 0
    assert sup.info("tiny:tiny")["statename"] == "RUNNING"
    sup.start_all(["tiny:tiny"], timeout=10)  # ALREADY_STARTED is fine
    assert sup.stderr_tail("tiny:tiny") == ""
    sup.stop_all(["tiny:tiny"], timeout=10)
    assert sup.info("tiny:tiny")["statename"] in ("STOPPED", "EXITED")
    sup.stop_all(["tiny:tiny"], timeout=10)  # NOT_RUNNING is fine
    with pytest.raises(Fault) as caught:
        sup.call("startProcess", "nosuch", False)
    assert caught.value.faultCode == 10 and "BAD_NAME" in caught.value.faultString
    assert sup.call("readLog", 0, 100)  # untyped text and entities, whatever its log holds


def test_wrong_password_is_an_error_without_the_password(supervisord: dict[str, str]) -> None:
    with pytest.raises(SupervisorError) as caught:
        client(supervisord, "inet", password="wrong-secret").ping()
    message = str(caught.value)
    assert message.startswith(f"supervisord at {supervisord['inet']} is not reachable: ")
    assert "401" in message and "wrong-secret" not in message
    with pytest.raises(SupervisorError, match="401"):
        Supervisor({"serverurl": supervisord["inet"]}).ping()  # no credentials at all


def test_startsecs_read_from_supervisord(supervisord: dict[str, str]) -> None:
    """What start_all waits quietly for: the shortest startsecs of the programs; 0 when
    one is unknown."""
    client = Supervisor({"serverurl": supervisord["unix"]}, timeout=5)
    assert client.startsecs(["slow:slow"]) == 2
    assert client.startsecs(["slow:slow", "tiny:tiny"]) == 0
    assert client.startsecs(["slow:slow", "nope:nope"]) == 0
