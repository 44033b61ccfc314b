"""The run model: one record per host, and the host's deadline.

Each host moves through explicit states; the summary and the exit code are
derived from those states, never from log lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from deploytools.connection import Connection, Connector, ssh_connector
from deploytools.inventory import Host

# Host states, in the order a successful deploy passes through them.
PENDING = "pending"
CONNECTED = "connected"
LOCKED = "locked"
PREPARED = "prepared"
HEALTHY = "healthy"
DONE = "ok"  # a task that ships nothing (releases, check, unlock) did its work on the host
# Terminal states other than healthy.
FAILED = "failed"  # failed before anything switched: the host serves what it served
ROLLED_BACK = "rolled_back"  # switched, failed, switched back and healthy again
ROLLBACK_FAILED = "rollback_failed"  # switched, failed, and could not be restored
UNREACHABLE = "unreachable"
LOCK_HELD = "lock_held"
SKIPPED = "skipped"  # not attempted (an earlier failure stopped the run)
UNCHANGED = "unchanged"  # already on the requested revision and verified (--skip-unchanged)


STEP_GRACE = 5.0  # seconds the controller waits past ssh.command_timeout


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
    conn: Connection | None = None
    connector: Connector = field(default_factory=ssh_connector)  # how `conn` is made
    started: float = field(default_factory=time.monotonic)
    busy: float = 0.0  # seconds spent in remote steps (what ssh.host_timeout bounds)
    in_flight: bool = False  # a remote step is running right now
    dry_run: bool = False  # describe changes instead of making them

    @property
    def failed(self) -> bool:
        return self.state in (FAILED, ROLLED_BACK, ROLLBACK_FAILED, UNREACHABLE, LOCK_HELD)

    def remaining_time(self) -> float:
        """What is left of this host's deadline (ssh.host_timeout). It counts the time
        the host spends in remote steps, not the time it waits for other batches: a
        host in the last `--serial` batch is not out of time before its turn."""
        budget = float(self.host.settings["ssh"].get("host_timeout") or 3600)
        command = float(self.host.settings["ssh"].get("command_timeout") or 900)
        # the agent ends a step at `command` itself and says so; the grace lets that
        # report arrive before the controller gives the host up as hung
        return max(1.0, min(command + STEP_GRACE, budget - self.busy))

    @property
    def name(self) -> str:
        return self.host.name

    def fail(self, state: str, error: str) -> None:
        self.state = state
        self.error = error

    @property
    def active(self) -> bool:
        """Still taking part: connected and not failed."""
        return not self.failed and self.state not in (SKIPPED, UNCHANGED)

