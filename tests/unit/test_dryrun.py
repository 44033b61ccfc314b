"""The dry-run backend describes every change instead of making it."""

from __future__ import annotations

from deploytools import dryrun


def test_dry_run_descriptions() -> None:
    lines = dryrun.describe({"op": "activate", "deploy_to": "/srv/a", "target": "r2",
                             "fallback": "r1", "programs": ["web", "worker"],
                             "health": {"url": "http://{host}:8000/h"},
                             "values": {"host": "10.1.1.1"},
                             "hooks": {"after_restart": [{"run": "warm", "run_once": True}]},
                             "run_once_here": False})
    assert lines[0] == "switch /srv/a/current -> releases/r2 (atomic rename)"
    assert "health check http://10.1.1.1:8000/h" in lines
    assert not any("warm" in line for line in lines)  # run_once elsewhere
    assert lines[-1].startswith("on failure: switch back to r1")
    assert dryrun.pretend({"op": "activate", "target": "r2"})["outcome"] == "healthy"
