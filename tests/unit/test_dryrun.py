"""The dry-run backend describes every change instead of making it."""

from __future__ import annotations

from deploytools import dryrun
from deploytools.remote import protocol


def test_dry_run_descriptions() -> None:
    request = protocol.Activate(
        deploy_to="/srv/a", target="r2", fallback="r1",
        supervisor={"programs": ["web", "worker"]}, health={"url": "http://{host}:8000/h"},
        values={"host": "10.1.1.1"},
        hooks={"after_restart": [{"run": "warm", "run_once": True}]}, run_once_here=False)
    lines = dryrun.describe(request)
    assert "stop web, worker, wait until stopped; start, wait until RUNNING" in lines
    assert lines[0] == "switch /srv/a/current -> releases/r2 (atomic rename)"
    assert "health check http://10.1.1.1:8000/h" in lines
    assert not any("warm" in line for line in lines)  # run_once elsewhere
    assert lines[-1].startswith("on failure: switch back to r1")
    assert dryrun.pretend(request)["outcome"] == "healthy"


def test_dry_run_sends_only_read_only_requests() -> None:
    """The request type's flag decides: a dry run answers mutating ones itself."""
    assert not protocol.Releases(deploy_to="/srv/a").mutating
    assert protocol.Unlock(deploy_to="/srv/a").mutating
    assert dryrun.describe(protocol.Unlock(deploy_to="/srv/a", force=True)) == [
        "remove the deploy lock (forced)"]
