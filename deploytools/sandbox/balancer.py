"""A real HAProxy in front of a sandbox fleet, run as our child and stopped by PID.

Used by the balancer tests and benchmarks/zero_downtime.py: its own config and
runtime socket, in the foreground.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from deploytools.balancer import ServerStat, ask_socket, parse_show_stat
from deploytools.sandbox.fleet import Fleet
from deploytools.sandbox.host import SimHost

HAPROXY = "/usr/sbin/haproxy"


def haproxy_path() -> str | None:
    return HAPROXY if os.access(HAPROXY, os.X_OK) else shutil.which("haproxy")


def haproxy_config(socket_path: Path, port: int, servers: list[SimHost],
                   backend: str = "app") -> str:
    """No retries and no redispatch (a request sent to a stopped server fails, as it
    does at most sites once a connection is refused mid-request), HTTP checks off so
    that only the drain keeps traffic away; TCP checks notice a host that is down."""
    lines = [
        "global",
        f"    stats socket {socket_path} mode 600 level admin",
        "    maxconn 2000",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 10s",
        "    timeout server 10s",
        "    retries 0",
        "    no option redispatch",
        "    option http-server-close",
        "",
        "frontend web",
        f"    bind 127.0.0.1:{port}",
        f"    default_backend {backend}",
        "",
        f"backend {backend}",
        "    balance roundrobin",
        "    default-server check inter 1s fall 3 rise 2",
    ]
    lines += [f"    server {h.name} {h.address}:{h.app_port}" for h in servers]
    return "\n".join(lines) + "\n"


@dataclass
class HAProxy:
    """One HAProxy process of ours."""

    root: Path
    port: int
    socket: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def ask(self, command: str) -> str:
        return ask_socket(str(self.socket), command)

    def servers(self) -> dict[tuple[str, str], ServerStat]:
        return parse_show_stat(self.ask("show stat"))

    def statuses(self, backend: str = "app") -> dict[str, str]:
        return {s: st.status for (b, s), st in self.servers().items() if b == backend}

    def wait_all_up(self, timeout: float = 15.0, backend: str = "app") -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            states = self.statuses(backend)
            if all(v == "UP" for v in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop by PID: SIGTERM (hard stop), then SIGKILL after 5 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_haproxy(root: Path, port: int, servers: list[SimHost],
                  socket_path: Path | None = None) -> HAProxy:
    """Start HAProxy in the foreground (-db) and wait until its runtime socket answers."""
    binary = haproxy_path()
    if binary is None:
        raise RuntimeError("haproxy is not installed: run .ci/install (apt-get install haproxy)")
    root.mkdir(parents=True, exist_ok=True)
    socket_path = socket_path or root / "admin.sock"
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    config = root / "haproxy.cfg"
    config.write_text(haproxy_config(socket_path, port, servers))
    log = (root / "haproxy.log").open("ab")
    proxy = HAProxy(root, port, socket_path)
    proxy.proc = subprocess.Popen([binary, "-f", str(config), "-db"], stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            proxy.servers()
            return proxy
        except OSError:
            if proxy.proc.poll() is not None or time.monotonic() > deadline:
                proxy.stop()
                raise RuntimeError("haproxy did not start: "
                                   + (root / "haproxy.log").read_text()[-500:]) from None
            time.sleep(0.05)


def haproxy_for(fleet: Fleet, root: Path, port: int, names: list[str] | None = None,
                socket_path: Path | None = None) -> HAProxy:
    hosts = [fleet.host(n) for n in names] if names else list(fleet.hosts)
    return start_haproxy(root, port, hosts, socket_path)
