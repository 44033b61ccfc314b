"""A real HAProxy in front of a sandbox fleet, and a bounded loopback load generator.

Used by the balancer tests and benchmarks/zero_downtime.py. HAProxy runs in the
foreground as our child, with its own config and runtime socket, and is stopped by
PID. The load generator only ever targets the loopback frontend, and stops by itself
after a fixed count or duration, whichever comes first.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploytools.balancer import ServerStat, ask_socket, parse_show_stat
from deploytools.sandbox import Fleet, SimHost

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


# --------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    sent: int
    failed: int
    errors: dict[str, int]
    latencies: list[float]
    seconds: float

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    def summary(self) -> dict[str, float | int]:
        return {"sent": self.sent, "failed": self.failed,
                "p50_ms": round(self.percentile(50) * 1000, 1),
                "p99_ms": round(self.percentile(99) * 1000, 1),
                "max_ms": round(max(self.latencies, default=0) * 1000, 1),
                "mean_ms": round(statistics.fmean(self.latencies) * 1000, 1)
                if self.latencies else 0.0}


@dataclass
class LoadGenerator:
    """Steady GET / requests to a loopback frontend, one connection per request, from
    `threads` threads at `rate` requests/s in all; bounded by `max_requests` and
    `max_seconds`. A non-2xx answer, a reset, a refusal or a timeout is a failure."""

    port: int
    rate: float = 50.0
    threads: int = 4
    max_requests: int = 5000
    max_seconds: float = 120.0
    timeout: float = 5.0
    path: str = "/"
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)
    _sent: int = 0
    _failed: int = 0
    _errors: dict[str, int] = field(default_factory=dict)
    _latencies: list[float] = field(default_factory=list)
    _started: float = 0.0

    def start(self) -> LoadGenerator:
        self._started = time.monotonic()
        for index in range(self.threads):
            worker = threading.Thread(target=self._loop, args=(index,), daemon=True,
                                      name=f"load-{index}")
            worker.start()
            self._workers.append(worker)
        return self

    @property
    def sent(self) -> int:
        return self._sent

    def _take_slot(self) -> bool:
        with self._lock:
            if self._sent >= self.max_requests or self._stop.is_set() or \
                    time.monotonic() - self._started > self.max_seconds:
                return False
            self._sent += 1
            return True

    def _loop(self, index: int) -> None:
        interval = self.threads / self.rate
        next_at = time.monotonic() + index * interval / self.threads
        while self._take_slot():
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at = max(next_at + interval, time.monotonic())
            self._one()

    def _one(self) -> None:
        started = time.monotonic()
        error = None
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                conn.request("GET", self.path, headers={"Connection": "close"})
                response = conn.getresponse()
                response.read()
                if not 200 <= response.status < 300:
                    error = f"HTTP {response.status}"
            finally:
                conn.close()
        except OSError as exc:
            error = type(exc).__name__
        except http.client.HTTPException as exc:
            error = type(exc).__name__
        elapsed = time.monotonic() - started
        with self._lock:
            self._latencies.append(elapsed)
            if error:
                self._failed += 1
                self._errors[error] = self._errors.get(error, 0) + 1

    def wait_for(self, count: int, timeout: float) -> None:
        """Keep the load going until at least `count` requests were sent (bounded)."""
        deadline = time.monotonic() + timeout
        while self._sent < count and time.monotonic() < deadline and \
                any(w.is_alive() for w in self._workers):
            time.sleep(0.05)

    def stop(self) -> LoadResult:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout + 5)
        with self._lock:
            done = len(self._latencies)
            return LoadResult(done, self._failed, dict(self._errors), list(self._latencies),
                              time.monotonic() - self._started)
