"""Failure paths on a real 2-host fleet: the controller killed with SIGKILL in prepare and
in activate, locks left by runs that are gone, SIGTERM in rollback and clear-cache, and
rollback targets in the order releases served. No test here ever runs `inv unlock`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from deploytools.remote.locking import start_ticks
from deploytools.sandbox import Fleet
from tests.support.apprepo import AppRepo
from tests.support.cli import Background, Cli
from tests.support.fleets import cli_for, deployed, make_fleet
from tests.support.layout import current_release, health_releases, release_dirs


@pytest.fixture(scope="module")
def fleet2() -> Iterator[Fleet]:
    yield from make_fleet(2)


@pytest.fixture(scope="module")
def base_cli(fleet2: Fleet, app_repo: AppRepo, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return cli_for(fleet2, app_repo, tmp_path_factory)


def assert_consistent(fleet: Fleet) -> None:
    """Every host: current is a complete release, its app answers for it, no lock left."""
    served = health_releases(fleet)
    for host in fleet.hosts:
        assert served[host.name] == current_release(host.deploy_to), served
        assert not (host.deploy_to / ".deploytools" / "lock").exists()


def kill_when(run: Background, needle: str) -> str:
    """SIGKILL the run once it printed `needle`; returns the release id it was deploying."""
    run.wait_for(lambda line: needle in line)
    run.proc.send_signal(signal.SIGKILL)
    _, out = run.finish()
    return re.search(r"release (\S+): \d+ files", out).group(1)


@pytest.mark.parametrize("point", ["after_prepare", "after_switch"])
def test_controller_killed_mid_step_needs_no_human(
        point: str, base_cli: Cli, fleet2: Fleet, app_repo: AppRepo, tmp_path: Path,
        background: Callable[..., Background]) -> None:
    before = deployed(base_cli, app_repo, f"before-{point}")
    slow = base_cli.with_settings(tmp_path / "slow.yaml", hooks={point: ["sleep 2"]})
    app_repo.commit(f"killed-{point}")
    killed = kill_when(background(slow, "deploy", "--hosts", "prod"), f"{point} hook")
    # at once, with no unlock: waits for the orphaned agents, then deploys
    after = deployed(base_cli, app_repo, f"after-{point}")
    assert_consistent(fleet2)
    for host in fleet2.hosts:
        assert current_release(host.deploy_to) == after
        names = [p.name for p in release_dirs(host.deploy_to)]
        assert before in names
        history = (host.deploy_to / ".deploytools" / "history.jsonl").read_text()
        assert '"outcome": "abandoned"' in history
        # prepared, never activated: discarded; activated (healthy): kept
        assert (killed in names) == (point == "after_switch"), names


def dead_pid() -> tuple[int, str]:
    proc = subprocess.Popen(["true"])
    ticks = start_ticks(proc.pid)
    proc.wait()
    return proc.pid, ticks or "1"


def plant_lock(fleet: Fleet, agent_pid: int, agent_start: str) -> None:
    for host in fleet.hosts:
        lock = host.deploy_to / ".deploytools" / "lock"
        lock.mkdir(parents=True)
        (lock / "owner.json").write_text(json.dumps({
            "user": "ci", "controller": "gone-runner", "pid": 1, "action": "deploy",
            "release": "20260101T000000Z-dead", "token": "t" * 32,
            "acquired_at": time.time(), "agent_pid": agent_pid, "agent_start": agent_start}))


def test_a_lock_whose_agent_is_gone_is_taken_over_and_a_live_one_is_not(
        base_cli: Cli, fleet2: Fleet, app_repo: AppRepo) -> None:
    deployed(base_cli, app_repo, "lock-base")
    pid, ticks = dead_pid()
    plant_lock(fleet2, pid, ticks)
    app_repo.commit("after-dead-lock")
    done = base_cli("deploy", "--hosts", "prod")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "taking it over" in done.stdout
    assert_consistent(fleet2)

    live = subprocess.Popen(["sleep", "60"])
    try:
        plant_lock(fleet2, live.pid, start_ticks(live.pid) or "")
        app_repo.commit("live-lock")
        done = base_cli("deploy", "--hosts", "prod")
        assert done.returncode == 5, done.stdout + done.stderr
    finally:
        live.kill()
        live.wait()
    # its agent is gone now: the next run proceeds by itself
    done = base_cli("deploy", "--hosts", "prod")
    assert done.returncode == 0, done.stdout + done.stderr


def test_second_rollback_goes_further_back_never_to_the_release_rolled_back_from(
        base_cli: Cli, fleet2: Fleet, app_repo: AppRepo) -> None:
    a = deployed(base_cli, app_repo, "order-a")
    b = deployed(base_cli, app_repo, "order-b")
    c = deployed(base_cli, app_repo, "order-c")
    base_cli("rollback", "--hosts", "prod", check=True)
    assert {current_release(h.deploy_to) for h in fleet2.hosts} == {b}
    d = deployed(base_cli, app_repo, "order-d")
    base_cli("rollback", "--hosts", "prod", check=True)
    # by name it would be c, the release rolled back from; by service it is b
    assert {current_release(h.deploy_to) for h in fleet2.hosts} == {b}
    base_cli("rollback", "--hosts", "prod", check=True)
    assert {current_release(h.deploy_to) for h in fleet2.hosts} == {a}
    assert c and d


def test_keep_releases_keeps_the_release_that_served_before_current(
        base_cli: Cli, fleet2: Fleet, app_repo: AppRepo, tmp_path: Path) -> None:
    keep1 = base_cli.with_settings(tmp_path / "keep1.yaml", keep_releases=1)
    a = deployed(keep1, app_repo, "keep-a")
    deployed(keep1, app_repo, "keep-b")
    keep1("rollback", "--hosts", "prod", check=True)  # back to a; b is newer by name
    d = deployed(keep1, app_repo, "keep-d")  # a served before d: kept whatever its name
    for host in fleet2.hosts:
        names = [p.name for p in release_dirs(host.deploy_to)]
        assert a in names and d in names, names
    keep1("rollback", "--hosts", "prod", check=True)
    assert {current_release(h.deploy_to) for h in fleet2.hosts} == {a}


@pytest.mark.parametrize("task", [("rollback",), ("clear-cache", "--restart")])
def test_sigterm_in_rollback_and_clear_cache_finishes_unlocks_and_exits_130(
        task: tuple[str, ...], base_cli: Cli, fleet2: Fleet, app_repo: AppRepo,
        tmp_path: Path, background: Callable[..., Background]) -> None:
    deployed(base_cli, app_repo, f"term-a-{task[0]}")
    deployed(base_cli, app_repo, f"term-b-{task[0]}")
    slow = base_cli.with_settings(tmp_path / "slow.yaml", hooks={"after_restart": ["sleep 2"]})
    run = background(slow, *task, "--hosts", "prod")
    run.wait_for(lambda line: "after_restart hook" in line)
    run.proc.send_signal(signal.SIGTERM)
    code, out = run.finish()
    assert code == 130, out
    assert_consistent(fleet2)
    assert os.path.exists(fleet2.hosts[0].deploy_to / "current")


def with_host_hooks(cli: Cli, tmp_path: Path, host: str, host_hooks: dict,
                    **defaults: object) -> Cli:
    own = cli.with_settings(tmp_path / f"inv-{time.monotonic_ns()}.yaml", **defaults)
    data = yaml.safe_load(own.inventory.read_text())
    data["groups"]["prod"]["hosts"][host]["hooks"] = host_hooks
    own.inventory.write_text(yaml.safe_dump(data))
    return own


def test_run_once_hook_moves_to_a_healthy_host_when_its_host_fails_prepare(
        base_cli: Cli, fleet2: Fleet, app_repo: AppRepo, tmp_path: Path) -> None:
    marker = tmp_path / "migrated"
    cli = with_host_hooks(base_cli, tmp_path, "web1", {"after_prepare": ["false"]},
                          hooks={"before_switch": [{"run": f"echo {{name}} > {marker}",
                                                    "run_once": True}]})
    app_repo.commit("run-once-moves")
    done = cli("deploy", "--hosts", "prod", "--max-failures", "1", "--json", "-")
    report = json.loads(done.stdout)
    assert done.returncode == 4, done.stderr
    assert marker.read_text().strip() == "web2"
    outcomes = {h["name"]: h["outcome"] for h in report["hosts"]}
    assert outcomes == {"web1": "failed", "web2": "healthy"}


def test_a_failed_run_once_hook_stops_the_run_whatever_max_failures_allows(
        base_cli: Cli, fleet2: Fleet, app_repo: AppRepo, tmp_path: Path) -> None:
    before = deployed(base_cli, app_repo, "run-once-base")
    cli = base_cli.with_settings(tmp_path / "run-once.yaml", hooks={"after_prepare": [
        {"run": 'test "{name}" != web1', "run_once": True}]})
    app_repo.commit("run-once-fails")
    done = cli("deploy", "--hosts", "prod", "--max-failures", "1", "--json", "-")
    report = json.loads(done.stdout)
    assert done.returncode == 3, done.stderr
    assert {h["name"]: h["outcome"] for h in report["hosts"]} == {"web1": "failed",
                                                                   "web2": "skipped"}
    assert {current_release(h.deploy_to) for h in fleet2.hosts} == {before}
    assert_consistent(fleet2)
