"""benchmarks/run.py against an existing fleet: `--inventory`, as a user runs it.

A small sandbox fleet stands in for the real one, but the benchmark only gets its
inventory, so every host interaction (reset, release listing, /health, the baseline)
goes over the real ssh client with the inventory's settings, not the sandbox's
shortcuts. The hosts' /usr/bin/python3 has no supervisor, so the inventory names a
supervisorctl command, as a real inventory would for a host without one on PATH."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploytools.sandbox import Fleet
from tests.support.cli import REPO_ROOT
from tests.support.fleets import make_fleet


@pytest.fixture(scope="module")
def fleet2() -> Iterator[Fleet]:
    yield from make_fleet(2)


def test_inventory_mode_runs_every_case_over_ssh(fleet2: Fleet, tmp_path: Path) -> None:
    repo = tmp_path / "app"
    inventory = fleet2.write_inventory(
        tmp_path / "inventory.yaml", source={"repo": str(repo)},
        supervisor={"programs": ["app"],
                    "supervisorctl": f"{sys.executable} -m supervisor.supervisorctl"})
    out = tmp_path / "out"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "run.py"), "--inventory", str(inventory),
         "--repo", str(repo), "--repeat", "1", "--modules", "20", "--scale", "0", "--settle", "0",
         "--out", str(out)],
        capture_output=True, text=True, timeout=180, check=False)
    wall = time.monotonic() - started
    print(f"inventory-mode run: {wall:.1f} s\n{done.stderr}")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    meta = results["meta"]
    assert meta["inventory"] == str(inventory.resolve())
    assert meta["sizes"] == [2]
    fleet = meta["fleets"]["2"]
    assert fleet["hosts"] == 2
    assert fleet["startsecs"] == [{"app": 1}]
    assert fleet["python_version"][0].startswith("CPython ")
    assert all(r["ok"] for r in results["records"]), results["records"]
    assert {r["case"] for r in results["records"]} >= {"dt_fresh", "sh_fresh", "sh_one_change"}
    assert "Inventory: `" in done.stdout and "startsecs app=1" in done.stdout
