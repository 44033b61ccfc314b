"""What each request costs the host, measured by the agent itself (stdlib only, 3.8+).

On a fleet the controller cannot see a host's CPU, and on a simulated fleet the hosts'
processes blur together, so the agent reports per request: its own CPU, the CPU of the
programs it ran (tar, compile workers, hooks, supervisorctl), and the CPU of the sshd
process that carries its session (decryption of the upload is the host's other big
cost). supervisord's share is measured around the restart (see agent.restart). Values
are None where the host does not let us read them (no /proc, another user's sshd).
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any, Dict, Optional

from deploytools.remote import processes


def process_cpu(pid: int) -> Optional[float]:
    """user+system CPU seconds of a process, None if /proc does not show it."""
    return processes.cpu_seconds(processes.stat_fields(pid))


def session_sshd() -> Optional[int]:
    """The nearest sshd ancestor (the session's unprivileged child, which does the
    crypto; timeout, sudo and a shell may sit in between); None when the agent does
    not run under sshd or /proc hides it."""
    for pid in processes.ancestors(os.getppid()):
        if processes.command_name(pid).startswith("sshd"):
            return pid
    return None


_extra: Dict[str, float] = {}  # measured inside a request by its op (see add)


def add(key: str, before: Optional[float], after: Optional[float]) -> None:
    """Count another process's CPU between two readings into the running request's
    cost (supervisord's, around a restart); nothing when either reading failed."""
    if before is not None and after is not None:
        count(key, after - before)


def count(key: str, amount: float) -> None:
    """Add to one of the running request's own figures (files written)."""
    _extra[key] = _extra.get(key, 0) + amount


def _own() -> "tuple[float, float]":
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


class Meter:
    """CPU spent between `start` and `stop`, by whom (rounded to milliseconds)."""

    sshd_pid = session_sshd() if os.path.isdir("/proc") else None

    def __init__(self) -> None:
        _extra.clear()
        self.agent, self.children = _own()
        self.sshd = process_cpu(self.sshd_pid) if self.sshd_pid else None

    def stop(self) -> Dict[str, Any]:
        agent, children = _own()
        sshd = process_cpu(self.sshd_pid) if self.sshd_pid else None
        return {
            "agent_cpu_s": round(agent - self.agent, 3),
            "children_cpu_s": round(children - self.children, 3),
            "sshd_cpu_s": None if sshd is None or self.sshd is None
            else round(sshd - self.sshd, 3),
            **{key: round(value, 3) for key, value in _extra.items()},
        }


def startup() -> Dict[str, Any]:
    """What the agent cost before its first request: interpreter start and loading."""
    agent, children = _own()
    sshd = process_cpu(Meter.sshd_pid) if Meter.sshd_pid else None
    return {"agent_cpu_s": round(agent, 3), "children_cpu_s": round(children, 3),
            "sshd_cpu_s": None if sshd is None else round(sshd, 3)}


class _Profile:
    """The agent's own cProfile (DEPLOYTOOLS_PROFILE on the controller): from the first
    request that asks for it to `finish`, returned as base64 of pstats' marshal form with
    every result (the stats so far: a run that ends early, a no-op under
    --skip-unchanged, never sends `finish`)."""

    def __init__(self) -> None:
        self._profiler: Any = None

    def start(self) -> None:
        if self._profiler is None:
            import cProfile

            self._profiler = cProfile.Profile(time.thread_time)  # CPU, not waiting
            self._profiler.enable()

    def running(self) -> bool:
        return self._profiler is not None

    def stats(self, stop: bool) -> str:
        """The stats so far; profiling goes on unless `stop`."""
        import base64
        import marshal

        profiler = self._profiler
        profiler.create_stats()  # disables it
        data = base64.b64encode(marshal.dumps(profiler.stats)).decode()
        if stop:
            self._profiler = None
        else:
            profiler.enable()
        return data


profile = _Profile()
