"""Child-process helpers: liveness, log tails, wait-or-kill, orphan cleanup (by PID only)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def _tail(path: Path, lines: int = 20) -> str:
    """Last lines of a log, for error messages that explain themselves."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no {path.name})"
    picked = text.strip().splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in picked) if picked else f"(empty {path.name})"


def _pid_alive(pid: int) -> bool:
    """True if pid names a live process; zombies count as gone (they hold no resources)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _pid_state(pid) not in (None, "Z", "X")


def _pid_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return None




def _wait_or_kill(proc: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait for a child until deadline, then SIGKILL it; always reap (no zombies)."""
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def _kill_orphan(pid: int) -> None:
    """SIGKILL a program left behind by a killed supervisord, with its process group
    (supervisord makes every program a group leader; stopasgroup relies on that)."""
    if not _pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
