"""Faults the tests and benchmarks/soak.py inject into the sandbox.

They break things on purpose (an app that dies at import, an sshd that hangs before
its banner), so they live with the tests rather than in the shipped package.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from deploytools.sandbox import SimHost, write_sample_app
from deploytools.sandbox.processes import _pid_state

CRASH_ON_IMPORT = '\n\nraise RuntimeError("boom: crash on import")\n'


def write_crashing_app(dest: Path, version: str = "v1", **options: Any) -> None:
    """The sample app (see write_sample_app) whose views module raises at import, so
    the app dies at start: exercises spawn-error rollbacks."""
    write_sample_app(dest, version, **options)
    with (Path(dest) / "sampleapp" / "views.py").open("a", encoding="utf-8") as out:
        out.write(CRASH_ON_IMPORT)


def write_malformed_health_app(dest: Path, version: str, mode: str,
                               **options: Any) -> None:
    """The sample app whose /health answers "garbage" (not HTTP at all) or "truncated"
    (a short body): the sample app's views.HEALTH_MODE, which it honours."""
    write_sample_app(dest, version, **options)
    with (Path(dest) / "sampleapp" / "views.py").open("a", encoding="utf-8") as out:
        out.write(f"\nHEALTH_MODE = {mode!r}\n")


def _running_sshd_pid(sim: SimHost) -> int:
    proc = sim._sshd_proc
    if proc is None or proc.poll() is not None:
        raise RuntimeError(f"{sim.name}: sshd is not running")
    return proc.pid


def freeze_sshd(sim: SimHost) -> None:
    """SIGSTOP the listener: connects still complete (kernel backlog) but no banner
    ever comes, which is what a hung or black-holed host looks like to a client."""
    pid = _running_sshd_pid(sim)
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 2.0
    while _pid_state(pid) not in ("T", "t") and time.monotonic() < deadline:
        time.sleep(0.005)  # SIGSTOP is asynchronous; make the freeze observable


def thaw_sshd(sim: SimHost) -> None:
    """SIGCONT the listener; queued connections then get their banners."""
    os.kill(_running_sshd_pid(sim), signal.SIGCONT)
