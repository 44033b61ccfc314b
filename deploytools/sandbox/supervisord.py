"""The per-host supervisord: its config text and an XML-RPC proxy over its socket."""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploytools.sandbox.env import _is_root

if TYPE_CHECKING:
    from deploytools.sandbox.host import SimHost


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over a unix socket, for the sandbox (the controller side: the agent has
    its own client, remote/xmlrpc_lite.py, which imports far less)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self.unix_path = path
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return UnixHTTPConnection(self.unix_path, self.timeout)


def supervisor_proxy(socket_path: Path | str, timeout: float = 5.0) -> xmlrpc.client.ServerProxy:
    """An XML-RPC proxy to a supervisord unix socket (stdlib only; answers in ~1 ms,
    where one ``supervisorctl`` call costs ~100 ms of interpreter start-up)."""
    return xmlrpc.client.ServerProxy(
        "http://localhost/RPC2", transport=UnixTransport(str(socket_path), timeout)
    )


# A program without an app server, for fleets that only measure deploying (scale runs):
# it execs, runs in the release it was started from and uses no port or memory to speak of.
IDLE_COMMAND = "sleep 2147483647"


def _supervisord_conf_text(sim: SimHost, python: str, app_server: bool = True) -> str:
    program_common = [
        f"directory={sim.deploy_to / 'current'}",
        "autostart=false",
        "autorestart=true",
        "startsecs=1",
        "startretries=1",
        "stopwaitsecs=5",
        "stopasgroup=true",
        "killasgroup=true",
    ]
    if not app_server:
        return supervisord_conf_text(sim, IDLE_COMMAND, IDLE_COMMAND, program_common)
    return supervisord_conf_text(
        sim, f"{python} app.py --bind {sim.address} --port {sim.app_port}",
        f"{python} worker.py", program_common)


def supervisord_conf_text(sim: SimHost, app_command: str, worker_command: str,
                          program_common: list[str], worker_procs: int = 1) -> str:
    """A host's whole supervisord.conf: the daemon on the host's socket, and the
    ``app`` and ``worker`` programs with their settings and log files."""
    root = sim.root
    lines = [
        "[unix_http_server]",
        f"file={sim.supervisor_socket}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"pidfile={root / 'supervisord.pid'}",
        f"logfile={sim.supervisord_log}",
        "logfile_maxbytes=10MB",
        "logfile_backups=0",
        f"childlogdir={root / 'childlogs'}",
        "nodaemon=true",
        f"identifier={sim.name}",
    ]
    if _is_root():
        lines.append("user=root")  # silences the "running as root" CRIT line; no-op
    lines += [
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{sim.supervisor_socket}",
        "",
        "[program:app]",
        f"command={app_command}",
        *program_common,
        f"stdout_logfile={root / 'app.out.log'}",
        f"stderr_logfile={root / 'app.err.log'}",
        "",
        "[program:worker]",
        f"command={worker_command}",
        *program_common,
    ]
    if worker_procs > 1:
        lines += [
            f"numprocs={worker_procs}",
            "process_name=%(program_name)s_%(process_num)d",
            f"stdout_logfile={root / 'worker-%(process_num)d.out.log'}",
            f"stderr_logfile={root / 'worker-%(process_num)d.err.log'}",
        ]
    else:
        lines += [
            f"stdout_logfile={root / 'worker.out.log'}",
            f"stderr_logfile={root / 'worker.err.log'}",
        ]
    return "\n".join(lines) + "\n"
