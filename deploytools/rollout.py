"""How steps run across hosts: in parallel with a bounded pool, and in batches.

Fabric's ThreadingGroup joins without a deadline and SerialGroup keeps going after
a failure; here every step's errors become that host's state, and the flow decides
what a failure means for the rest of the fleet.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

from deploytools.console import Console
from deploytools.errors import ConfigError, DeployToolsError, LockHeldError, UnreachableError
from deploytools.hoststate import FAILED, HEALTHY, LOCK_HELD, SKIPPED, UNREACHABLE, HostRun
from deploytools.profiling import profiled

MAX_PARALLEL = 64
T = TypeVar("T")
KEEP = "keep"
ROLLBACK_ALL = "rollback-all"
ON_FAILURE_CHOICES = (KEEP, ROLLBACK_ALL)


@dataclass(frozen=True)
class RolloutPolicy:
    """How a deploy moves through the fleet and what a failure means for the rest.

    Default `keep`: hosts already switched and healthy stay on the new release when a
    later batch fails (each failed host is rolled back on its own). Rolling every good
    host back too is a deliberate choice (`rollback-all`), because it restarts healthy
    hosts a second time; `keep` is Capistrano's and Ansible's behaviour, minus their
    half-switched hosts.
    """

    serial: str | int | None = None
    canary: bool = False
    max_failures: str | int = 0
    on_failure: str = KEEP
    batch_wait: float = 0  # seconds to pause between batches (--batch-wait)

    def __post_init__(self) -> None:
        if self.on_failure not in ON_FAILURE_CHOICES:
            raise ConfigError(f"--on-failure expects one of {', '.join(ON_FAILURE_CHOICES)}, "
                              f"got {self.on_failure!r}")


def parse_count(value: str | int | None, total: int, flag: str, minimum: int = 0) -> int:
    """`N` or `P%` of `total` (percentages round down)."""
    text = str(value if value is not None else 0).strip()
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 <= percent <= 100 or (minimum > 0 and percent == 0):
                raise ValueError
            return max(minimum, math.floor(total * percent / 100))
        count = int(text)
        if count < minimum:
            raise ValueError
        return count
    except ValueError:
        raise ConfigError(f"{flag} expects a whole number or a percentage, got {value!r}") \
            from None


class StopRule:
    """Decides after each phase whether the run goes on: failures beyond the budget
    (`--max-failures`) or an interrupt stop it; hosts not yet switched are then skipped."""

    def __init__(self, policy: RolloutPolicy, total: int, console: Console) -> None:
        self.budget = parse_count(policy.max_failures, total, "--max-failures")
        self.console = console
        self.interrupts: Interrupts | None = None

    def halted(self, runs: Sequence[HostRun], phase: str) -> bool:
        failed = [r for r in runs if r.failed]
        if self.interrupts is not None and self.interrupts.requested:
            reason = "interrupted"
        elif len(failed) > self.budget:
            reason = f"{phase} failed on {', '.join(r.name for r in failed)}"
        else:
            if failed:
                self.console.info(f"{phase}: {len(failed)} host(s) failed, within "
                                  f"--max-failures {self.budget}; continuing without them")
            return False
        self.console.info(f"{reason}: no further host will be switched")
        for run in runs:
            if run.active and run.state != HEALTHY:
                run.fail(SKIPPED, f"not switched: {reason}")
        return True


class Interrupts:
    """Ctrl-C / SIGTERM as a request, not a crash.

    The first signal lets every host finish its step in flight (a host mid-switch ends
    switched and healthy, or rolled back) and stops the run at the next phase boundary,
    which then unlocks and reports. A second signal aborts at once.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # os.write, not the console: a handler that takes the console's lock could wait
        # forever on the very thread it interrupted
        with contextlib.suppress(OSError):
            os.write(2, f"{signal.Signals(signum).name}: finishing the steps in flight, then "
                        "stopping (press Ctrl-C again to abort at once)\n".encode())

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def in_parallel(runs: Sequence[HostRun], step: Callable[[HostRun], None], console: Console,
                failed_state: str = FAILED) -> None:
    """Run `step` on every host at once (bounded pool); an exception fails that host only."""
    if not runs:
        return

    def guarded(run: HostRun) -> None:
        error_before = run.error
        try:
            profiled(lambda: step(run))
        except UnreachableError as exc:
            run.fail(UNREACHABLE, str(exc))
        except LockHeldError as exc:
            run.fail(LOCK_HELD, str(exc))
        except DeployToolsError as exc:
            run.fail(failed_state, str(exc))
        except Exception as exc:  # a bug or an unexpected library error: keep the others going
            run.fail(failed_state, f"{type(exc).__name__}: {exc}")
        if run.error and run.error != error_before:
            console.host(run.name, f"{run.state}: {run.error}")

    if len(runs) == 1:
        guarded(runs[0])
        return
    pool = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(runs)))
    try:
        list(pool.map(guarded, runs))
    except BaseException:
        # a second Ctrl-C aborts at once: never wait here for the steps in flight
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def parse_serial(value: str | int | None, total: int) -> int:
    """`--serial N` or `P%` -> batch size (at least 1); None -> the whole fleet."""
    if value in (None, "", 0, "0"):
        return max(total, 1)
    return parse_count(value, total, "--serial", minimum=1)


def batches(items: Sequence[T], size: int, canary: bool = False) -> list[list[T]]:
    """Split hosts into batches in inventory order; a canary goes alone first."""
    items = list(items)
    out: list[list[T]] = []
    if canary and items:
        out.append([items.pop(0)])
    out.extend(items[i:i + size] for i in range(0, len(items), size))
    return out
