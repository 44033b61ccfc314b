"""How steps run across hosts: in parallel with a bounded pool, and in batches.

Fabric's ThreadingGroup joins without a deadline and SerialGroup keeps going after
a failure; here every step's errors become that host's state, and the flow decides
what a failure means for the rest of the fleet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from deploytools.errors import ConfigError, DeployToolsError, LockHeldError, UnreachableError
from deploytools.report import FAILED, LOCKED_OUT, UNREACHABLE, Console, HostRun

MAX_PARALLEL = 64
T = TypeVar("T")


def in_parallel(runs: Sequence[HostRun], step: Callable[[HostRun], None], console: Console,
                failed_state: str = FAILED) -> None:
    """Run `step` on every host at once (bounded pool); an exception fails that host only."""
    if not runs:
        return

    def guarded(run: HostRun) -> None:
        try:
            step(run)
        except UnreachableError as exc:
            run.fail(UNREACHABLE, str(exc))
        except LockHeldError as exc:
            run.fail(LOCKED_OUT, str(exc))
        except DeployToolsError as exc:
            run.fail(failed_state, str(exc))
        except Exception as exc:  # a bug or an unexpected library error: keep the others going
            run.fail(failed_state, f"{type(exc).__name__}: {exc}")
        if run.error:
            console.host(run.name, f"{run.state}: {run.error}")

    if len(runs) == 1:
        guarded(runs[0])
        return
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(runs))) as pool:
        list(pool.map(guarded, runs))


def parse_serial(value: str | int | None, total: int) -> int:
    """`--serial N` or `P%` -> batch size (at least 1); None -> the whole fleet."""
    if value in (None, "", 0, "0"):
        return max(total, 1)
    text = str(value).strip()
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            return max(1, math.floor(total * percent / 100))
        size = int(text)
        if size < 1:
            raise ValueError
        return size
    except ValueError:
        raise ConfigError(f"--serial expects a whole number or a percentage, got {value!r}") \
            from None


def batches(items: Sequence[T], size: int, canary: bool = False) -> list[list[T]]:
    """Split hosts into batches in inventory order; a canary goes alone first."""
    items = list(items)
    out: list[list[T]] = []
    if canary and items:
        out.append([items.pop(0)])
    out.extend(items[i:i + size] for i in range(0, len(items), size))
    return out
