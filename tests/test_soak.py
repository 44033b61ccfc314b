"""The fault soak, short: 5 cycles on a real 4-host fleet, one fault each, every kind
different, judged by the soak's independent check (files and processes read directly,
never `inv verify`). The full run is `python benchmarks/soak.py` (see benchmarks/SOAK.md)."""

from __future__ import annotations

import sys
import time

from conftest import REPO_ROOT, require_sshd

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import soak  # noqa: E402

# Five kinds that cover the lock (SIGKILL in prepare and in activate), the interrupt
# path (SIGTERM), a host that is gone and an automatic health rollback.
KINDS = ("sigkill_prepare", "sigkill_activate", "sigterm", "unreachable_host",
         "health_failing")


def test_short_soak_leaves_every_host_consistent_with_no_human() -> None:
    require_sshd()
    started = time.monotonic()
    tally = soak.run_soak(cycles=5, max_seconds=90, seed=7, kinds=KINDS)
    table = soak.table(tally, 7, KINDS)
    assert tally.cycles == 5, table
    assert set(tally.faults) == set(KINDS), table
    assert (tally.inconsistent, tally.leaked_locks, tally.interventions) == (0, 0, 0), table
    assert time.monotonic() - started < 150, table
