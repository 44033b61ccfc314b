"""One frame for every task over a fleet (`FleetRun`) and the one exit-code rule.

A task is a short body inside `with FleetRun(...) as fleet:`. The frame owns what every
task shares and must never get wrong: one `HostRun` per host, the run id and timings,
Ctrl-C / SIGTERM (the first finishes the steps in flight and stops at the next phase;
the second aborts, frees idle hosts and names those that may be mid-step), the
wrap-up of every locked host (history, cleanup, unlock), closing every connection,
and the exit code. Steps live in steps.py; what a failure means for the rest of the
fleet is the task's (flow.py, operations.py).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from deploytools import steps
from deploytools.connection import Connector, ssh_connector
from deploytools.console import Console
from deploytools.errors import ExitCode
from deploytools.hoststate import (
    DONE,
    HEALTHY,
    LOCK_HELD,
    ROLLBACK_FAILED,
    UNCHANGED,
    UNREACHABLE,
    HostRun,
)
from deploytools.inventory import Host
from deploytools.rollout import Interrupts, RolloutPolicy, StopRule, in_parallel

# Tasks that never switch a release: a problem they find is a finding (exit 7), not a
# failed deploy.
READ_ONLY = frozenset({"verify", "status", "check", "releases", "unlock"})


@dataclass
class RunResult:
    """What a task reports: per-host outcomes and the exit code derived from them."""

    action: str
    run_id: str
    release_id: str | None
    runs: list[HostRun]
    exit_code: ExitCode
    started_at: float
    ended_at: float
    extra: dict[str, Any] = field(default_factory=dict)


def exit_code(action: str, runs: list[HostRun], interrupted: bool = False) -> ExitCode:
    """The one exit code for a fleet's end state (see ExitCode for the meanings).

    An interrupted run exits 130 unless it left the fleet partial: that is the more
    urgent news for a pipeline."""
    code = _end_state(action, runs)
    return ExitCode.INTERRUPTED if interrupted and code != ExitCode.PARTIAL else code


def _end_state(action: str, runs: list[HostRun]) -> ExitCode:
    states = [HEALTHY if r.state in (UNCHANGED, DONE) else r.state for r in runs]
    if ROLLBACK_FAILED in states:
        return ExitCode.PARTIAL
    if all(s == HEALTHY for s in states):
        return ExitCode.OK
    if UNREACHABLE in states:
        return ExitCode.UNREACHABLE
    if LOCK_HELD in states:
        return ExitCode.LOCKED
    if action in READ_ONLY:
        return ExitCode.VERIFY_FAILED
    if HEALTHY in states:
        return ExitCode.PARTIAL
    return ExitCode.FAILED_ROLLED_BACK


class FleetRun:
    """The frame of one task over the selected hosts (see the module docstring)."""

    def __init__(self, action: str, hosts: list[Host], console: Console, *,
                 policy: RolloutPolicy | None = None, dry_run: bool = False,
                 connector: Connector | None = None) -> None:
        self.action = action
        self.console = console
        self.run_id = secrets.token_hex(6)
        self.started = time.time()
        self.policy = policy or RolloutPolicy()
        self.dry_run = dry_run
        make = connector or ssh_connector(dry_run)
        self.runs = [HostRun(host, dry_run=dry_run, connector=make) for host in hosts]
        self.interrupts = Interrupts(console)
        self.stop = StopRule(self.policy, len(self.runs), console)
        self.stop.interrupts = self.interrupts
        self._cleanups: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ frame

    def __enter__(self) -> FleetRun:
        self.interrupts.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if kind is not None:
                self.abandon()
        finally:
            for cleanup in reversed(self._cleanups):
                with contextlib.suppress(Exception):
                    cleanup()
            for run in self.runs:
                if run.conn is not None:
                    run.conn.close()
            self.interrupts.__exit__(kind, exc, tb)

    def on_exit(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` when the task ends, however it ends (before connections close)."""
        self._cleanups.append(cleanup)

    @property
    def interrupted(self) -> bool:
        return self.interrupts.requested

    def active(self) -> list[HostRun]:
        return steps.active(self.runs)

    def each(self, step: Callable[[HostRun], None], runs: list[HostRun] | None = None,
             failed_state: str | None = None) -> None:
        """`step` on every given host (default: those still taking part) at once."""
        targets = self.active() if runs is None else runs
        if failed_state is None:
            in_parallel(targets, step, self.console)
        else:
            in_parallel(targets, step, self.console, failed_state=failed_state)

    def lock(self, release: str | None, lock_wait: float = 0, need_bytes: int = 0) -> bool:
        """Preflight and lock every host still taking part (the first alone, then the
        rest: two runs started at once never split the fleet). False when the run
        stops here."""
        owner = steps.lock_owner(self.run_id, self.action, release)
        steps.lock_fleet(self.active(), self.console, lambda r: steps.check_and_lock(
            r, self.console, owner, lock_wait, need_bytes=need_bytes))
        return not self.halted("preflight")

    def halted(self, phase: str) -> bool:
        """After a phase: does the run stop here (failure budget spent, interrupted)?"""
        return self.stop.halted(self.runs, phase)

    # ------------------------------------------------------------------ ending

    def finish(self, release_id: str | None = None, extra: dict[str, Any] | None = None,
               summary: bool = True) -> RunResult:
        """Wrap up every locked host (history, cleanup, unlock), then the exit code."""
        for run in self.runs:
            run.timings["total"] = time.monotonic() - run.started
        # A host that timed out or vanished cannot be wrapped up: its lock stays, reported.
        self.each(lambda r: steps.wrap_up(r, self.console, self.action, self.run_id,
                                          release_id),
                  [r for r in self.runs if r.lock_token and r.state != UNREACHABLE])
        if summary:
            self.console.summary(self.runs)
        if self.dry_run and self.action not in READ_ONLY:
            self.console.info("dry run: nothing was changed on any host")
        return RunResult(self.action, self.run_id, release_id, self.runs,
                         exit_code(self.action, self.runs, self.interrupted),
                         self.started, time.time(), extra or {})

    def abandon(self) -> None:
        """A hard abort (second Ctrl-C, or a bug): say what may be inconsistent, free
        what we can.

        Hosts with a remote step in flight keep their lock: the step may still be
        switching them, and their agents unlock by themselves when it ends. Every other
        lock is released so the next run is not blocked for nothing.
        """
        in_flight = [r for r in self.runs if r.in_flight]
        idle = [r for r in self.runs
                if r.lock_token and not r.in_flight and r.conn is not None]
        if idle:
            with contextlib.suppress(BaseException):
                in_parallel(idle, lambda r: steps.unlock_host(r, self.console), self.console)
        if in_flight:
            self.console.error(
                "aborted while a remote step was running on "
                f"{', '.join(r.name for r in in_flight)}: those hosts may be mid-step; "
                "their agents finish it (a switch ends healthy or rolled back) and "
                "unlock by themselves. Check them with `inv verify`.")
