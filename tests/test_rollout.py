"""Bad days, on a real 4-host fleet: batches, canary, failure policies, unreachable and
frozen hosts, a full disk, concurrent deploys, interrupts, hostile inputs.

Every scenario ends by checking each host's own /health and `current`, and that no
lock is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from deploytools.sandbox import Fleet, SimHost
from tests.support.apprepo import AppRepo
from tests.support.cli import Background, Cli
from tests.support.fleets import cli_for, make_fleet
from tests.support.layout import current_release, health_releases, release_dirs
from tests.support.procfs import process_tree


@pytest.fixture(scope="module")
def fleet4() -> Iterator[Fleet]:
    yield from make_fleet(4)


@pytest.fixture(scope="module")
def rcli(fleet4: Fleet, app_repo: AppRepo, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = cli_for(fleet4, app_repo, tmp_path_factory)
    data = yaml.safe_load(cli.inventory.read_text())
    data["ssh"]["command_timeout"] = 8  # a hung host must not hold the run for long
    cli.inventory.write_text(yaml.safe_dump(data))
    app_repo.commit("base")
    cli("deploy", "--hosts", "prod", check=True)
    return cli


def variant(cli: Cli, tmp_path: Path, hosts: dict[str, dict] | None = None,
            **defaults: object) -> Path:
    """A copy of the inventory with per-host and default overrides."""
    data = yaml.safe_load(cli.inventory.read_text())
    data["defaults"].update(defaults)
    for name, extra in (hosts or {}).items():
        data["groups"]["prod"]["hosts"][name].update(extra)
    path = tmp_path / f"inv-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def fail_new_release(host: SimHost) -> dict:
    """Per-host health settings that only the release running now passes: a new release
    fails its check there, and a rollback to the running one passes."""
    version = host.health()["version"]
    return {"health": {"expect_json": {"version": version}, "timeout": 1}}


def pids(fleet: Fleet) -> dict[str, int | None]:
    return {h.name: (h.health() or {}).get("pid") for h in fleet.hosts}


def no_locks(fleet: Fleet) -> bool:
    return not any((h.deploy_to / ".deploytools" / "lock").exists() for h in fleet.hosts)


def assert_consistent(fleet: Fleet) -> None:
    """Each host serves exactly the release its `current` points to."""
    for host in fleet.hosts:
        assert (host.health() or {}).get("release") == current_release(host.deploy_to), host.name


def test_serial_failure_keeps_good_batches_by_default(rcli: Cli, fleet4: Fleet,
                                                      app_repo: AppRepo, tmp_path: Path) -> None:
    old = current_release(fleet4.hosts[0].deploy_to)
    before = pids(fleet4)
    app_repo.commit("serial-1")
    inventory = variant(rcli, tmp_path, {"web2": fail_new_release(fleet4.host("web2"))})
    done = rcli("deploy", "--hosts", "prod", "--serial", "1", "--inventory", str(inventory))
    assert done.returncode == 4, done.stdout + done.stderr  # partial: mixed releases
    assert "rolled_back" in done.stdout and "rollback_failed" not in done.stdout
    new = current_release(fleet4.hosts[0].deploy_to)
    assert new != old
    assert health_releases(fleet4) == {"web1": new, "web2": old, "web3": old, "web4": old}
    after = pids(fleet4)
    assert after["web3"] == before["web3"] and after["web4"] == before["web4"]  # untouched
    assert "batch 2/4: web2" in done.stdout and "batch 3/4" not in done.stdout
    assert no_locks(fleet4)
    rcli("deploy", "--hosts", "prod", check=True)  # converge again


def test_serial_failure_with_rollback_all(rcli: Cli, fleet4: Fleet, app_repo: AppRepo,
                                          tmp_path: Path) -> None:
    old = current_release(fleet4.hosts[0].deploy_to)
    app_repo.commit("serial-2")
    inventory = variant(rcli, tmp_path, {"web2": fail_new_release(fleet4.host("web2"))})
    done = rcli("deploy", "--hosts", "prod", "--serial", "1", "--on-failure", "rollback-all",
                "--inventory", str(inventory))
    assert done.returncode == 3, done.stdout + done.stderr
    assert health_releases(fleet4) == {h.name: old for h in fleet4.hosts}
    assert "rollback-all" in done.stdout
    assert no_locks(fleet4)


def test_failing_canary_switches_nobody_else(rcli: Cli, fleet4: Fleet, app_repo: AppRepo,
                                             tmp_path: Path) -> None:
    old = current_release(fleet4.hosts[0].deploy_to)
    before = pids(fleet4)
    app_repo.commit("canary")
    inventory = variant(rcli, tmp_path, {"web1": fail_new_release(fleet4.host("web1"))})
    done = rcli("deploy", "--hosts", "prod", "--canary", "--inventory", str(inventory))
    assert done.returncode == 3, done.stdout + done.stderr
    assert health_releases(fleet4) == {h.name: old for h in fleet4.hosts}
    after = pids(fleet4)
    assert all(after[n] == before[n] for n in ("web2", "web3", "web4"))


def test_unreachable_host_and_max_failures(rcli: Cli, fleet4: Fleet, app_repo: AppRepo) -> None:
    old = current_release(fleet4.hosts[0].deploy_to)
    web3 = fleet4.host("web3")
    web3.stop_sshd()
    try:
        app_repo.commit("unreachable")
        done = rcli("deploy", "--hosts", "prod")
        assert done.returncode == 6, done.stdout + done.stderr
        assert "web3" in done.stderr and "refused" in done.stderr
        assert health_releases(fleet4) == {h.name: old for h in fleet4.hosts}
        assert no_locks(fleet4)

        done = rcli("deploy", "--hosts", "prod", "--max-failures", "1")
        assert done.returncode == 6, done.stdout + done.stderr
        new = current_release(fleet4.hosts[0].deploy_to)
        assert new != old
        assert health_releases(fleet4) == {"web1": new, "web2": new, "web3": old, "web4": new}
    finally:
        web3.start_sshd()
    rcli("deploy", "--hosts", "prod", check=True)


def sshd_processes(host: SimHost) -> list[int]:
    """The host's listening sshd and every session process under it."""
    assert host.sshd_pid
    return process_tree(host.sshd_pid)


def test_frozen_host_times_out_and_the_rest_stays_consistent(
        rcli: Cli, fleet4: Fleet, app_repo: AppRepo, tmp_path: Path,
        background: Callable[..., Background]) -> None:
    web2 = fleet4.host("web2")
    rcli.inventory = variant(rcli, tmp_path, hooks={"before_switch": ["sleep 1"]})
    app_repo.commit("frozen")
    started = time.monotonic()
    run = background(rcli, "deploy", "--hosts", "prod")
    frozen: list[int] = []
    try:
        run.wait_for(lambda line: "[web2] before_switch hook" in line)
        frozen = sshd_processes(web2)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        code, out = run.finish()
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert time.monotonic() - started < 60
    assert code == 6, out
    assert "web2" in out and "timed out" in out
    others = [h for h in fleet4.hosts if h.name != "web2"]
    for host in others:
        assert (host.health() or {}).get("release") == current_release(host.deploy_to)
        assert not (host.deploy_to / ".deploytools" / "lock").exists()
    rcli("unlock", "--hosts", "web2", "--force", check=True)
    assert no_locks(fleet4)
    rcli("deploy", "--hosts", "prod", check=True)


def test_a_step_past_its_time_limit_is_ended_on_the_host(
        rcli: Cli, fleet4: Fleet, app_repo: AppRepo, tmp_path: Path) -> None:
    """ssh.command_timeout bounds every step on the host itself: the agent reports the
    limit, ends the step's processes (the hung hook too), and the host's next step
    (history and unlock) runs in a fresh agent session."""
    before = health_releases(fleet4)
    inventory = variant(rcli, tmp_path, hosts={"web3": {"hooks": {"before_switch": [
        {"run": "sleep 47", "timeout": 600}]}}})
    data = yaml.safe_load(inventory.read_text())
    data["ssh"]["command_timeout"] = 3
    inventory.write_text(yaml.safe_dump(data))
    app_repo.commit("slow hook")
    done = rcli("deploy", "--hosts", "prod", "--inventory", str(inventory))
    assert done.returncode == 3, done.stdout
    assert "[web3]" in done.stdout and "hit its time limit (ssh.command_timeout)" in done.stdout
    assert "timed out" not in done.stdout  # the host answered; it was not lost
    assert health_releases(fleet4) == before  # before_switch failed: nobody switched
    assert_consistent(fleet4)
    assert no_locks(fleet4), done.stdout
    hung = [pid for pid in fleet4.host("web3").session_pids()
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"47"]]
    for pid in hung:
        os.kill(pid, signal.SIGKILL)
    assert not hung, "the hook outlived its step"


def test_disk_full_during_prepare(rcli: Cli, fleet4: Fleet, app_repo: AppRepo) -> None:
    web4 = fleet4.host("web4")
    before = health_releases(fleet4)
    app_repo.commit("bigger", extra_modules=120)
    # A filesystem with room for bytes but only 60 inodes: unpacking runs out mid-way.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m,nr_inodes=60", "tmpfs",
                    str(web4.deploy_to)], check=True)
    try:
        done = rcli("deploy", "--hosts", "prod")
        assert done.returncode == 3, done.stdout + done.stderr
        assert "web4" in done.stderr and "disk full" in done.stderr
        assert health_releases(fleet4) == before
        leftovers = os.listdir(web4.deploy_to / "releases")  # hidden partials included
        assert leftovers == [], leftovers  # no partial release left behind
        assert no_locks(fleet4)
    finally:
        subprocess.run(["umount", str(web4.deploy_to)], check=True)
    assert health_releases(fleet4) == before


def test_two_deploys_at_once_exactly_one_proceeds(rcli: Cli, fleet4: Fleet, app_repo: AppRepo,
                                                  background: Callable[..., Background]) -> None:
    app_repo.commit("race")
    runs = [background(rcli, "deploy", "--hosts", "prod") for _ in range(2)]
    results = [run.finish() for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 5], results
    loser = next(out for code, out in results if code == 5)
    assert "deploy lock held by" in loser and "pid" in loser
    assert no_locks(fleet4)
    assert_consistent(fleet4)


def test_sigint_during_prepare_changes_nothing(rcli: Cli, fleet4: Fleet, app_repo: AppRepo,
                                               tmp_path: Path,
                                               background: Callable[..., Background]) -> None:
    before = health_releases(fleet4)
    releases_before = {h.name: [p.name for p in release_dirs(h.deploy_to)]
                       for h in fleet4.hosts}
    rcli.inventory = variant(rcli, tmp_path, hooks={"after_prepare": ["sleep 1"]})
    app_repo.commit("interrupt-prepare")
    run = background(rcli, "deploy", "--hosts", "prod")
    run.wait_for(lambda line: "after_prepare hook" in line)
    run.proc.send_signal(signal.SIGINT)
    code, out = run.finish()
    assert code == 130, out
    assert health_releases(fleet4) == before
    assert {h.name: [p.name for p in release_dirs(h.deploy_to)]
            for h in fleet4.hosts} == releases_before
    assert no_locks(fleet4)


def test_sigint_during_switch_phase_ends_consistent(
        rcli: Cli, fleet4: Fleet, app_repo: AppRepo, tmp_path: Path,
        background: Callable[..., Background]) -> None:
    rcli.inventory = variant(rcli, tmp_path, hooks={})
    app_repo.commit("interrupt-switch")
    run = background(rcli, "deploy", "--hosts", "prod", "--serial", "1")
    run.wait_for(lambda line: "switched current" in line)
    run.proc.send_signal(signal.SIGINT)
    code, out = run.finish()
    assert code in (130, 4), out
    assert "interrupted" in out
    assert_consistent(fleet4)
    assert no_locks(fleet4)
    rcli("verify", "--hosts", "prod", check=True)
    rcli("deploy", "--hosts", "prod", check=True)


# ----------------------------------------------------------------- hostile inputs


@pytest.fixture
def lone_host() -> Iterator[Fleet]:
    yield from make_fleet(1)


def test_hostile_deploy_to_is_taken_literally(lone_host: Fleet, app_repo: AppRepo,
                                              tmp_path: Path) -> None:
    host = lone_host.hosts[0]
    hostile = host.deploy_to.parent / "we ird;$(touch PWNED)'q\"`id`"
    hostile.mkdir()
    host.deploy_to.rmdir()
    host.deploy_to.symlink_to(hostile)  # supervisord's directory= follows it
    inventory = lone_host.write_inventory(tmp_path / "inv.yaml",
                                          source={"repo": str(app_repo.path)})
    data = yaml.safe_load(inventory.read_text())
    data["groups"]["prod"]["hosts"]["web1"]["deploy_to"] = str(hostile)
    inventory.write_text(yaml.safe_dump(data))
    cli = Cli(inventory)
    cli("deploy", "--hosts", "prod", check=True)
    assert (hostile / "current").is_symlink()
    assert host.health()["release"] == current_release(hostile)
    assert not list(Path("/").glob("PWNED")) and not list(Path.cwd().glob("PWNED"))
    assert not list(Path.home().glob("PWNED")) and not list(hostile.parent.glob("PWNED"))
    cli("verify", "--hosts", "prod", check=True)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("deploy_to", "/srv/../etc/app", "without '..'"),
    ("deploy_to", "/", "system directory"),
    ("shared", {"dirs": ["../../etc"]}, "relative path inside the release"),
    ("shared", {"files": ["/etc/passwd"]}, "relative path inside the release"),
])
def test_hostile_paths_are_refused(rcli: Cli, tmp_path: Path, key: str, value: object,
                                   message: str) -> None:
    inventory = variant(rcli, tmp_path, **{key: value})
    done = rcli("deploy", "--hosts", "prod", "--inventory", str(inventory))
    assert done.returncode == 2 and message in done.stderr
