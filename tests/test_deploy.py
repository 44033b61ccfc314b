"""`inv deploy` / `inv rollback` / `inv releases` end to end, against a real 3-host fleet.

Tests in this module share one fleet; each sets up the releases it asserts on
(`serving_release`, its own deploys), so any test runs alone and in any order.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from deploytools.inventory import load_inventory
from deploytools.remote import protocol
from deploytools.sandbox import Fleet, SimHost
from deploytools.transport import HostConnection, agent_digest
from tests.support.apprepo import AppRepo
from tests.support.cli import Cli
from tests.support.faults import write_crashing_app
from tests.support.fleets import deploy_broken_module, serving_release
from tests.support.layout import current_release, health_releases, release_dirs


def release_ids(fleet: Fleet) -> set[str | None]:
    return {current_release(h.deploy_to) for h in fleet.hosts}


def only(values: set[str | None]) -> str:
    assert len(values) == 1, values
    value = values.pop()
    assert value
    return value


def test_fresh_deploy_to_three_hosts(cli: Cli, fleet3: Fleet, app_repo: AppRepo) -> None:
    sha = app_repo.commit("v1")
    done = cli("deploy", "--hosts", "prod", check=True)
    release = only(release_ids(fleet3))
    assert release.endswith("-" + sha[:7])
    assert health_releases(fleet3) == {h.name: release for h in fleet3.hosts}
    shipped = set(app_repo.git("ls-files").splitlines())
    for host in fleet3.hosts:
        assert os.readlink(host.deploy_to / "current") == f"releases/{release}"  # relative
        release_dir = host.deploy_to / "releases" / release
        manifest = json.loads((release_dir / ".deploytools" / "release.json").read_text())
        assert set(manifest["files"]) == shipped
        assert manifest["revision"] == sha and manifest["id"] == release
        assert manifest["bytecode"]["mode"] == "precompile"
        assert (release_dir / "REVISION").read_text().strip() == sha
        assert list((release_dir / "sampleapp" / "__pycache__").glob("views.*.pyc"))
        assert not (release_dir / ".git").exists()
        assert f"[{host.name}]" in done.stdout  # per-host progress lines
    assert "healthy" in done.stdout.split("outcome", 1)[1]  # summary table


def test_second_deploy_keeps_previous_release(cli: Cli, fleet3: Fleet,
                                              app_repo: AppRepo) -> None:
    first = serving_release(cli, fleet3, app_repo)
    first_pids = {h.name: h.health()["pid"] for h in fleet3.hosts}
    app_repo.commit("v2")
    cli("deploy", "--hosts", "prod", check=True)
    second = only(release_ids(fleet3))
    assert second != first
    for host in fleet3.hosts:
        answer = host.health()
        assert answer["release"] == second and answer["version"] == "v2"
        assert answer["pid"] != first_pids[host.name]  # really restarted
        assert (host.deploy_to / "releases" / first).is_dir()


def test_failing_health_rolls_every_host_back(cli: Cli, fleet3: Fleet,
                                              app_repo: AppRepo) -> None:
    good = serving_release(cli, fleet3, app_repo)
    before = {p.name for p in release_dirs(fleet3.hosts[0].deploy_to)}
    app_repo.commit("v3-broken", health_status=500)
    done = cli("deploy", "--hosts", "prod")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for host in fleet3.hosts:
        assert host.name in done.stderr and "HTTP 500" in done.stderr
    assert health_releases(fleet3) == {h.name: good for h in fleet3.hosts}
    assert release_ids(fleet3) == {good}
    (new,) = [p for p in release_dirs(fleet3.hosts[0].deploy_to) if p.name not in before]
    assert "HTTP 500" in (new / ".deploytools" / "FAILED").read_text()


def test_crash_at_import_reports_supervisor_reason(cli: Cli, fleet3: Fleet,
                                                    app_repo: AppRepo) -> None:
    good = serving_release(cli, fleet3, app_repo)
    app_repo.commit("v4-crash", writer=write_crashing_app)
    done = cli("deploy", "--hosts", "prod")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    # supervisor's own words (state) and the app's last stderr line
    assert "BACKOFF" in done.stderr or "FATAL" in done.stderr or "EXITED" in done.stderr
    assert "boom: crash on import" in done.stderr
    assert health_releases(fleet3) == {h.name: good for h in fleet3.hosts}


def test_syntax_error_fails_before_any_switch(cli: Cli, fleet3: Fleet, app_repo: AppRepo) -> None:
    good = serving_release(cli, fleet3, app_repo)
    releases_before = sorted(p.name for p in release_dirs(fleet3.hosts[0].deploy_to))
    done = deploy_broken_module(cli, app_repo, "def ok():\n    return 1\n\ndef bad(:\n    pass\n",
                                "v-syntax")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "sampleapp/broken.py line 4" in done.stderr and "SyntaxError" in done.stderr
    assert release_ids(fleet3) == {good}
    assert sorted(p.name for p in release_dirs(fleet3.hosts[0].deploy_to)) == \
        releases_before  # nothing half-built left behind


def test_releases_lists_current_and_failed(cli: Cli, fleet3: Fleet, app_repo: AppRepo) -> None:
    current = serving_release(cli, fleet3, app_repo)
    app_repo.commit("v-listed-broken", health_status=500)
    assert cli("deploy", "--hosts", "prod").returncode == 3
    report = cli.report("releases", "--hosts", "prod")
    for host, row in zip(fleet3.hosts, report["hosts"]):
        assert row["name"] == host.name and row["release"] == current
        on_disk = {p.name: (p / ".deploytools" / "FAILED").exists()
                   for p in release_dirs(host.deploy_to)}
        listed = {r["id"]: bool(r["failed"]) for r in row["releases"]}
        assert listed == on_disk and any(listed.values())
    done = cli("releases", "--hosts", "prod", check=True)
    assert f"* {current}" in done.stdout and "FAILED" in done.stdout


def test_rollback_skips_failed_releases(cli: Cli, fleet3: Fleet, app_repo: AppRepo) -> None:
    expected = serving_release(cli, fleet3, app_repo)
    app_repo.commit("v-rollback-broken", health_status=500)
    assert cli("deploy", "--hosts", "prod").returncode == 3  # a failed release in between
    app_repo.commit("v-rollback-good")
    cli("deploy", "--hosts", "prod", check=True)
    good_before = only(release_ids(fleet3))
    cli("rollback", "--hosts", "prod", check=True)
    assert release_ids(fleet3) == {expected}
    assert health_releases(fleet3) == {h.name: expected for h in fleet3.hosts}
    # and forward again to a named release
    cli("rollback", "--hosts", "prod", "--to", good_before, check=True)
    assert health_releases(fleet3) == {h.name: good_before for h in fleet3.hosts}


def test_rollback_refuses_a_failed_release(cli: Cli, fleet3: Fleet, app_repo: AppRepo) -> None:
    serving_release(cli, fleet3, app_repo)
    before = {p.name for p in release_dirs(fleet3.hosts[0].deploy_to)}
    app_repo.commit("v-refused-broken", health_status=500)
    assert cli("deploy", "--hosts", "prod").returncode == 3
    (failed,) = [p.name for p in release_dirs(fleet3.hosts[0].deploy_to) if p.name not in before]
    done = cli("rollback", "--hosts", "prod", "--to", failed)
    assert done.returncode != 0
    assert "marked failed" in done.stderr


def test_keep_releases_counts_only_good_ones(cli: Cli, fleet3: Fleet, app_repo: AppRepo,
                                             tmp_path: Path) -> None:
    keep3 = cli.with_settings(tmp_path / "keep3.yaml", keep_releases=3)
    for number in range(5):
        broken = number == 3
        app_repo.commit(f"k{number}", health_status=500 if broken else 200)
        done = keep3("deploy", "--hosts", "prod")
        assert done.returncode == (3 if broken else 0), done.stdout + done.stderr
    current = only(release_ids(fleet3))
    for host in fleet3.hosts:
        releases = sorted(release_dirs(host.deploy_to))
        good = [p.name for p in releases if not (p / ".deploytools" / "FAILED").exists()]
        assert len(good) == 3 and current in good, [p.name for p in releases]
        assert len(releases) == 3  # the failed one, older than current, is gone too


def test_same_commit_twice_in_a_row_gets_distinct_release_ids(cli: Cli, fleet3: Fleet,
                                                              app_repo: AppRepo) -> None:
    first = serving_release(cli, fleet3, app_repo)
    app_repo.commit("v-twice")
    cli("deploy", "--hosts", "prod", check=True)
    second = only(release_ids(fleet3))
    cli("deploy", "--hosts", "prod", check=True)
    third = only(release_ids(fleet3))
    assert len({first, second, third}) == 3


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d["groups"]["prod"]["hosts"]["web1"].update(colour="red"),
         "groups.prod.hosts.web1.colour"),
        (lambda d: d["groups"]["prod"]["hosts"]["web2"].update(port="twenty-two"),
         "groups.prod.hosts.web2.port"),
        (lambda d: d["defaults"].update(keep_releases="three"), "defaults.keep_releases"),
    ],
)
def test_broken_inventory_exits_2_with_one_line(cli: Cli, tmp_path: Path, edit,
                                                needle: str) -> None:
    data = yaml.safe_load(cli.inventory.read_text())
    edit(data)
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(data))
    done = cli("deploy", "--hosts", "prod", "--inventory", str(broken))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(broken) in lines[0] and needle in lines[0], lines


def test_missing_inventory_and_unknown_host(cli: Cli, tmp_path: Path) -> None:
    done = cli("deploy", "--hosts", "prod", "--inventory", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "inventory file not found" in done.stderr
    assert "Traceback" not in done.stderr
    done = cli("deploy", "--hosts", "web7")
    assert done.returncode == 2
    assert "'web7'" in done.stderr and "prod (group)" in done.stderr and "web1" in done.stderr


def test_unknown_host_key_is_refused(cli: Cli, fleet3: Fleet, tmp_path: Path) -> None:
    data = yaml.safe_load(cli.inventory.read_text())
    other = tmp_path / "known_hosts"
    lines = fleet3.known_hosts.read_text().splitlines()
    other.write_text("\n".join(lines[1:]) + "\n")  # web1's key missing
    data["ssh"]["known_hosts"] = str(other)
    inventory = tmp_path / "inv.yaml"
    inventory.write_text(yaml.safe_dump(data))
    before = health_releases(fleet3)
    done = cli("deploy", "--hosts", "prod", "--inventory", str(inventory))
    assert done.returncode == 6, done.stdout + done.stderr
    assert "web1" in done.stderr and "unknown host key" in done.stderr
    assert health_releases(fleet3) == before  # nobody switched


def test_first_contact_opt_in_records_keys_but_never_accepts_a_changed_one(
        cli: Cli, fleet3: Fleet, tmp_path: Path) -> None:
    data = yaml.safe_load(cli.inventory.read_text())
    fresh = tmp_path / "known_hosts"
    fresh.write_text("")
    data["ssh"].update(known_hosts=str(fresh), accept_new_host_keys=True)
    inventory = tmp_path / "inv.yaml"
    inventory.write_text(yaml.safe_dump(data))
    cli("check", "--hosts", "prod", "--inventory", str(inventory), check=True)
    recorded = fresh.read_text().splitlines()
    assert sorted(line.split()[0] for line in recorded) == sorted(h.address for h in fleet3.hosts)

    # web1's entry replaced by another host's key: a changed key is refused even so
    web1, web2 = fleet3.hosts[0], fleet3.hosts[1]
    key_of = {line.split()[0]: line.split(None, 1)[1] for line in recorded}
    fresh.write_text("".join(f"{addr} {key_of[web2.address if addr == web1.address else addr]}\n"
                             for addr in key_of))
    done = cli("check", "--hosts", "prod", "--inventory", str(inventory))
    assert done.returncode == 6
    assert "web1" in done.stderr and "CHANGED" in done.stderr


def agent_processes(host: SimHost) -> list[int]:
    """PIDs of this host's running agent interpreters (not their `timeout` wrappers)."""
    found = []
    for pid in host.session_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if agent_digest().encode() in argv and b"python" in argv[0]:
            found.append(pid)
    return found


def test_one_agent_session_serves_a_run_and_a_dead_one_is_replaced(
        cli: Cli, fleet3: Fleet) -> None:
    """Every request of a run goes to one agent process per host (one remote command);
    if that process dies between requests (OOM killer, an admin), the next request
    starts a new session instead of failing."""
    host = load_inventory(cli.inventory).hosts["web1"]
    conn = HostConnection(host)
    conn.open()
    try:
        request = protocol.Releases(deploy_to=host.deploy_to)
        first = conn.call(request).result
        # 1 command (2 when this agent version first meets the host: a retry, inline)
        commands, requests = conn.commands, conn.requests
        assert conn.call(request).result == first
        assert (conn.commands, conn.requests) == (commands, requests + 1)
        (pid,) = agent_processes(fleet3.host("web1"))
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid in agent_processes(fleet3.host("web1")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # let the channel see the session end
        assert conn.call(request).result == first
        assert (conn.commands, conn.requests) == (commands + 1, requests + 2)
    finally:
        conn.close()
