"""What each host's steps cost, on both ends: the `cost` of the JSON report.

The controller runs every host in its own thread, so a host's controller CPU is the
CPU of that thread (`time.thread_time`) plus that of its connection's paramiko
transport thread (which decrypts what the host sends), read from /proc/self/task.
The host's side (agent, the programs it ran, its sshd session, supervisord) is what
the agent measured for each request (remote/cost.py). Summed per operation, so a
phase that takes several requests (or retries) shows its whole price.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterator
from typing import Any, Protocol

from deploytools.remote import processes

HOST_KEYS = ("agent_cpu_s", "children_cpu_s", "sshd_cpu_s", "supervisord_cpu_s",
             "files_written")


def thread_cpu(native_id: int | None) -> float:
    """CPU seconds of one of our own threads (0 when unknown or /proc is missing)."""
    if not native_id:
        return 0.0
    return processes.cpu_seconds(processes.stat_fields(os.getpid(), native_id)) or 0.0


class Metered(Protocol):
    """A host connection as the cost book sees it (transport.HostConnection)."""

    bytes_sent: int

    def io_thread_id(self) -> int | None: ...


class CostBook:
    """Per operation: wall, controller CPU, bytes sent, and the host's reported costs."""

    def __init__(self) -> None:
        self.ops: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def measure(self, op: str, conn: Metered) -> Iterator[dict[str, Any]]:
        """Time the block on this thread and count what `conn` sent meanwhile; the block
        may fill the yielded dict with the agent's `cost` for the request."""
        host: dict[str, Any] = {}
        io_thread = conn.io_thread_id()
        wall, cpu, io_cpu, sent = (time.monotonic(), time.thread_time(),
                                   thread_cpu(io_thread), conn.bytes_sent)
        try:
            yield host
        finally:
            io_thread = io_thread or conn.io_thread_id()  # connect starts it
            self.add(op, wall_s=time.monotonic() - wall,
                     controller_cpu_s=time.thread_time() - cpu
                     + thread_cpu(io_thread) - io_cpu,
                     bytes_sent=conn.bytes_sent - sent)
            startup = host.pop("startup", None)
            if isinstance(startup, dict):
                self.add("agent_start", **startup)
            self.add(op, **host)

    def add(self, op: str, **values: Any) -> None:
        entry = self.ops.setdefault(op, {})
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                entry[key] = entry.get(key, 0) + value
            else:
                entry.setdefault(key, None)

    def report(self) -> dict[str, dict[str, Any]]:
        """Rounded, with every host key present (None: the host did not tell)."""
        out = {}
        for op, entry in self.ops.items():
            row = {key: (round(value, 3) if isinstance(value, float) else value)
                   for key, value in entry.items()}
            for key in HOST_KEYS:
                row.setdefault(key, None)
            out[op] = row
        return out


def run_cost() -> dict[str, Any]:
    """The whole controller process so far: CPU (its own and its children's, git and
    compile workers) and peak memory."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"controller_cpu_s": round(me.ru_utime + me.ru_stime + kids.ru_utime
                                      + kids.ru_stime, 3),
            "peak_rss_mb": round(max(me.ru_maxrss, kids.ru_maxrss) / 1024, 1)}
