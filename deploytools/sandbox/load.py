"""A bounded loopback load generator for the balancer tests and benchmarks.

It only ever targets the loopback frontend, and stops by itself after a fixed count or
duration, whichever comes first.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from dataclasses import dataclass, field


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
