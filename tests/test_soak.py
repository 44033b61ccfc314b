"""The fault soak, short: 6 cycles on a real 4-host fleet, one fault each, every kind
different, judged by the soak's independent check (files and processes read directly,
never `inv verify`). The full run is `python benchmarks/soak.py` (see benchmarks/SOAK.md)."""

from __future__ import annotations

import sys
import time

from tests.support.cli import REPO_ROOT
from tests.support.fleets import require_sshd

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import soak  # noqa: E402

# Six kinds that cover the lock (SIGKILL in prepare and in activate), the interrupt
# path (SIGTERM), a host that is gone, and two that the first long soak found broken: a
# health endpoint answering garbage and a disk filling up mid-deploy. (A failing health
# check is covered by test_rollout; a frozen host costs 25-50 s a cycle, so only the
# benchmark runs it.)
KINDS = ("sigkill_prepare", "sigkill_activate", "sigterm", "unreachable_host",
         "malformed_health", "disk_full")


def test_short_soak_leaves_every_host_consistent_with_no_human() -> None:
    require_sshd()
    started = time.monotonic()
    tally = soak.run_soak(cycles=len(KINDS), max_seconds=90, seed=7, kinds=KINDS)
    table = soak.table(tally, 7, KINDS)
    assert tally.cycles == len(KINDS), table
    assert set(tally.faults) == set(KINDS), table
    assert (tally.inconsistent, tally.leaked_locks, tally.interventions) == (0, 0, 0), table
    assert time.monotonic() - started < 150, table
