"""The run model (one record per host) and how it is shown to people.

Each host moves through explicit states; the summary and the exit code are
derived from those states, never from log lines. Output is plain, prefixed,
timestamped lines, safe for pipelines and log files; secrets in URLs are masked.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from deploytools.inventory import Host
from deploytools.transport import HostConnection

# Host states, in the order a successful deploy passes through them.
PENDING = "pending"
CONNECTED = "connected"
LOCKED = "locked"
PREPARED = "prepared"
HEALTHY = "healthy"
# Terminal states other than healthy.
FAILED = "failed"  # failed before anything switched: the host serves what it served
ROLLED_BACK = "rolled_back"  # switched, failed, switched back and healthy again
ROLLBACK_FAILED = "rollback_failed"  # switched, failed, and could not be restored
UNREACHABLE = "unreachable"
LOCKED_OUT = "lock_held"
SKIPPED = "skipped"  # not attempted (an earlier failure stopped the run)


@dataclass
class HostRun:
    """Everything one run learned about and did to one host."""

    host: Host
    state: str = PENDING
    previous: str | None = None  # the release `current` pointed to before the run
    release: str | None = None  # the release `current` points to at the end
    error: str | None = None
    lock_token: str | None = None
    programs: list[dict[str, Any]] = field(default_factory=list)
    health: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    conn: HostConnection | None = None
    started: float = field(default_factory=time.monotonic)
    in_flight: bool = False  # a remote step is running right now

    @property
    def failed(self) -> bool:
        return self.state in (FAILED, ROLLED_BACK, ROLLBACK_FAILED, UNREACHABLE, LOCKED_OUT)

    def remaining_time(self) -> float:
        """What is left of this host's whole-run deadline (ssh.host_timeout)."""
        budget = float(self.host.settings["ssh"].get("host_timeout") or 3600)
        command = float(self.host.settings["ssh"].get("command_timeout") or 900)
        return max(1.0, min(command, budget - (time.monotonic() - self.started)))

    @property
    def name(self) -> str:
        return self.host.name

    def fail(self, state: str, error: str) -> None:
        self.state = state
        self.error = error

    @property
    def active(self) -> bool:
        """Still taking part: connected and not failed."""
        return self.state not in (FAILED, ROLLED_BACK, ROLLBACK_FAILED, UNREACHABLE, LOCKED_OUT,
                                  SKIPPED)


_SECRET_QUERY = re.compile(r"(?i)([?&](?:token|key|secret|password|passwd|auth|signature)"
                           r"[^=&]*=)[^&#]*")
_URL_USERINFO = re.compile(r"(?i)(\w+://[^/:@\s]+:)[^@/\s]+@")


def mask_secrets(text: str) -> str:
    """Hide passwords in URLs and token-like query values."""
    return _SECRET_QUERY.sub(r"\1***", _URL_USERINFO.sub(r"\1***@", text))


class Console:
    """Thread-safe progress output: `HH:MM:SS [host] message` lines."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self._lock = threading.Lock()

    def _write(self, line: str) -> None:
        with self._lock:
            self.stream.write(mask_secrets(line) + "\n")
            self.stream.flush()

    def line(self, text: str) -> None:
        """A line of a report (tables, verify rows): shown even when progress is quiet."""
        self._write(text)

    def info(self, message: str) -> None:
        if not self.quiet:
            self._write(f"{time.strftime('%H:%M:%S')} {message}")

    def host(self, name: str, message: str) -> None:
        if not self.quiet:
            self._write(f"{time.strftime('%H:%M:%S')} [{name}] {message}")

    def error(self, message: str) -> None:
        self._write(f"error: {message}")

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                 for r in [headers, ["-" * w for w in widths], *rows]]
        self._write("\n".join(lines))

    def summary(self, runs: list[HostRun]) -> None:
        rows = [[r.name, r.release or "-", r.state, f"{r.timings.get('total', 0):.1f}s",
                 r.error or ""] for r in runs]
        self._write("")
        self.table(["host", "release", "outcome", "time", "detail"], rows)
