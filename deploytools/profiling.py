"""`DEPLOYTOOLS_PROFILE=DIR`: a cProfile of the controller and of one host's agent.

Why an environment variable and not a flag: it is a tool for whoever measures
deploytools (benchmarks/run.py --profile), not part of any task's interface, and it must
reach every task alike. DIR receives `controller.pstats` (the main thread and every
host worker thread, merged; read with `python -m pstats`) and `agent-<host>.pstats`
for the first host that connects (its agent profiles itself from its first request to
`finish` and returns the stats so far with each answer). Paramiko's reader threads and the
compile workers are not in it: their cost is in the report's `cost`.
"""

from __future__ import annotations

import base64
import marshal
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # imported when profiling: every task start would pay for them
    import cProfile

PROFILE_ENV = "DEPLOYTOOLS_PROFILE"
T = TypeVar("T")
_lock = threading.Lock()
_profiles: list[cProfile.Profile] = []
_agent_claimed: list[str] = []
_active = threading.local()


def directory() -> Path | None:
    value = os.environ.get(PROFILE_ENV)
    return Path(value) if value else None


def claim_agent(host: str) -> bool:
    """True for the first host asking: its agent is the one profiled."""
    if directory() is None:
        return False
    with _lock:
        if _agent_claimed:
            return False
        _agent_claimed.append(host)
        return True


def profiled(work: Callable[[], T]) -> T:
    """Run `work` under this thread's profiler when profiling (once per thread: a
    nested call runs plainly, the outer profile already covers it)."""
    if directory() is None or getattr(_active, "on", False):
        return work()
    import cProfile

    profile = cProfile.Profile(time.thread_time)  # CPU: waiting on hosts is not cost
    _active.on = True
    try:
        profile.enable()
        try:
            return work()
        finally:
            profile.disable()
    finally:
        _active.on = False
        with _lock:
            _profiles.append(profile)


def write_controller() -> None:
    """Merge every thread's profile into DIR/controller.pstats."""
    where = directory()
    with _lock:
        profiles = list(_profiles)
    if where is None or not profiles:
        return
    import pstats

    where.mkdir(parents=True, exist_ok=True)
    stats = pstats.Stats(profiles[0])
    for profile in profiles[1:]:
        stats.add(profile)
    stats.dump_stats(str(where / "controller.pstats"))


def write_agent(host: str, stats: Any) -> None:
    """The stats an agent returned (base64 of marshal, as pstats writes them) as a file."""
    where = directory()
    if where is None or not isinstance(stats, str):
        return
    data = base64.b64decode(stats)
    marshal.loads(data)  # a broken answer must not become a file pstats chokes on
    where.mkdir(parents=True, exist_ok=True)
    (where / f"agent-{host}.pstats").write_bytes(data)
