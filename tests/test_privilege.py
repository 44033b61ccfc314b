"""Least privilege against the real fleet: a non-root deploy user owning deploy_to, the
program run by a root supervisord as that user, and the three ways to reach supervisord
(see tests/support/privilege.py): a group socket, `sudo supervisorctl` only, and `become`."""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from deploytools.sandbox import Fleet
from tests.support import privilege
from tests.support.apprepo import AppRepo
from tests.support.cli import Cli
from tests.support.faults import write_crashing_app
from tests.support.fleets import cli_for, make_fleet

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a Unix user")


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    for started in make_fleet(1):
        try:
            privilege.set_mode(started, "ctl")
            yield started
        finally:
            privilege.cleanup(started)


@pytest.fixture(scope="module")
def cli(fleet: Fleet, app_repo: AppRepo, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return cli_for(fleet, app_repo, tmp_path_factory)


def ctl_command(fleet: Fleet, sudo: bool = True) -> str:
    return ("sudo -n " if sudo else "") + str(privilege.supervisorctl_path(fleet))


def app_uid(fleet: Fleet) -> int:
    with fleet.hosts[0].supervisor_rpc() as rpc:
        pid = rpc.supervisor.getProcessInfo("app")["pid"]
    assert pid, "app is not running"
    return os.stat(f"/proc/{pid}").st_uid


def assert_only_supervisorctl_under_sudo(fleet: Fleet) -> None:
    commands = [c for c in privilege.sudo_commands(fleet) if not c.startswith("list ")]
    assert commands, "sudo was never used"
    ctl = str(privilege.supervisorctl_path(fleet))
    assert all(c.startswith(ctl + " ") for c in commands), commands


def in_mode(fleet: Fleet, cli: Cli, tmp_path: Path, mode: str, top: dict | None = None,
            **defaults: object) -> Cli:
    """The fleet reshaped for `mode`, the sudo log emptied, and a Cli on an inventory of
    its own with these settings (so no test inherits another's)."""
    privilege.set_mode(fleet, mode)
    privilege.sudo_log(fleet).unlink(missing_ok=True)
    own = cli.with_settings(tmp_path / "inventory.yaml", **defaults)
    if top:
        data = yaml.safe_load(own.inventory.read_text())
        data.update(top)
        own.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    return own


def test_sudo_supervisorctl_only(fleet: Fleet, cli: Cli, app_repo: AppRepo,
                                 tmp_path: Path) -> None:
    """Root-only socket, sudo for supervisorctl only: deploy, verify, rollback and
    clear-cache --restart pass, and the app runs as the deploy user."""
    cli = in_mode(fleet, cli, tmp_path, "ctl",
                  supervisor={"programs": ["app"], "supervisorctl": ctl_command(fleet)})
    app_repo.commit("v1")
    cli("deploy", "--hosts", "prod", check=True)
    first = fleet.hosts[0].health()["release"]
    app_repo.commit("v2")
    cli("deploy", "--hosts", "prod", check=True)
    assert app_uid(fleet) == pwd.getpwnam(privilege.USER).pw_uid
    done = cli("verify", "--hosts", "prod", check=True)
    assert "process app" in done.stdout
    cli("rollback", "--hosts", "prod", check=True)
    assert fleet.hosts[0].health()["release"] == first
    cli("clear-cache", "--hosts", "prod", "--restart", check=True)
    assert fleet.hosts[0].health()["release"] == first
    assert app_uid(fleet) == pwd.getpwnam(privilege.USER).pw_uid
    assert_only_supervisorctl_under_sudo(fleet)


def test_crash_through_supervisorctl_is_explained_and_rolled_back(
        fleet: Fleet, cli: Cli, app_repo: AppRepo, tmp_path: Path) -> None:
    """A program that dies at import: through sudo supervisorctl the failure still names
    supervisor's state and the app's last stderr line, and the host is rolled back."""
    cli = in_mode(fleet, cli, tmp_path, "ctl",
                  supervisor={"programs": ["app"], "supervisorctl": ctl_command(fleet)})
    app_repo.commit("v-good")
    cli("deploy", "--hosts", "prod", check=True)
    good = fleet.hosts[0].health()["release"]
    app_repo.commit("v-crash", writer=write_crashing_app)
    done = cli("deploy", "--hosts", "prod")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "BACKOFF" in done.stderr or "FATAL" in done.stderr or "EXITED" in done.stderr
    assert "boom: crash on import" in done.stderr
    assert fleet.hosts[0].health()["release"] == good
    assert_only_supervisorctl_under_sudo(fleet)


def test_socket_refused_falls_back_to_sudo_rule(fleet: Fleet, cli: Cli, app_repo: AppRepo,
                                                tmp_path: Path) -> None:
    """supervisorctl configured without sudo: the socket refuses (root-only), the sudo
    rule exists, so supervisorctl runs through `sudo -n`."""
    cli = in_mode(fleet, cli, tmp_path, "ctl",
                  supervisor={"programs": ["app"], "supervisorctl": ctl_command(fleet, False)})
    app_repo.commit("v3")
    cli("deploy", "--hosts", "prod", check=True)
    assert fleet.hosts[0].health()["release"].endswith(app_repo.git("rev-parse", "--short=7",
                                                                     "HEAD"))
    assert_only_supervisorctl_under_sudo(fleet)


def test_no_access_at_all_is_one_clear_line(fleet: Fleet, cli: Cli, tmp_path: Path) -> None:
    cli = in_mode(fleet, cli, tmp_path, "ctl", supervisor={"programs": ["app"]})
    done = cli("deploy", "--hosts", "prod", "--json", "-")
    assert done.returncode != 0
    assert "Permission denied" in done.stdout + done.stderr
    assert "no sudo rule" in done.stdout + done.stderr


def test_become(fleet: Fleet, cli: Cli, app_repo: AppRepo, tmp_path: Path) -> None:
    """`become: true` at the top of the inventory runs the agent through sudo -n."""
    cli = in_mode(fleet, cli, tmp_path, "become", top={"become": True},
                  supervisor={"programs": ["app"]})
    app_repo.commit("v4")
    done = cli("deploy", "--hosts", "prod", check=True)
    assert "deprecated" not in done.stdout + done.stderr
    assert any("timeout" in c for c in privilege.sudo_commands(fleet))
    assert app_uid(fleet) == pwd.getpwnam(privilege.USER).pw_uid


def test_deprecated_supervisor_sudo(fleet: Fleet, cli: Cli, app_repo: AppRepo,
                                    tmp_path: Path) -> None:
    """`supervisor.sudo: true` still works (it means become) and warns exactly once."""
    cli = in_mode(fleet, cli, tmp_path, "become", supervisor={"programs": ["app"], "sudo": True})
    app_repo.commit("v5")
    done = cli("deploy", "--hosts", "prod", check=True)
    assert (done.stdout + done.stderr).count("supervisor.sudo is deprecated") == 1


def test_group_socket(fleet: Fleet, cli: Cli, app_repo: AppRepo, tmp_path: Path) -> None:
    """Socket chown=root:USER chmod=0770: XML-RPC as the deploy user, no sudo at all."""
    cli = in_mode(fleet, cli, tmp_path, "group", supervisor={"programs": ["app"]})
    app_repo.commit("v6")
    cli("deploy", "--hosts", "prod", check=True)
    done = cli("verify", "--hosts", "prod", check=True)
    assert "process app" in done.stdout
    assert privilege.sudo_commands(fleet) == []
    assert app_uid(fleet) == pwd.getpwnam(privilege.USER).pw_uid


def test_program_of_another_user_is_said_unseen(fleet: Fleet, cli: Cli, app_repo: AppRepo,
                                                tmp_path: Path) -> None:
    """The program runs as `nobody`: the deploy user may not read its /proc cwd. Deploy
    and verify pass (no false alarm) and verify says what it could not see."""
    cli = in_mode(fleet, cli, tmp_path, "group", supervisor={"programs": ["app"]})
    privilege.set_mode(fleet, "group", program_user="nobody")
    try:
        app_repo.commit("v7")
        cli("deploy", "--hosts", "prod", check=True)
        assert app_uid(fleet) == pwd.getpwnam("nobody").pw_uid
        done = cli("verify", "--hosts", "prod", "--json", "-", check=True)
        rows = json.loads(done.stdout)["hosts"][0]["checks"]
        process = next(r for r in rows if r["check"] == "process app:app")
        assert process["ok"], process
        assert "not seen" in process["detail"] and "not readable here" in process["detail"]
    finally:
        privilege.set_mode(fleet, "group")


