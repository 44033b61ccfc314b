"""Starting simulated fleets for tests, and putting them in a known state before a test
asserts on it (so that no test depends on what an earlier one left behind)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from deploytools.sandbox import Fleet, sshd_path, start_fleet
from tests.support.apprepo import AppRepo
from tests.support.cli import Cli
from tests.support.layout import current_release


def require_sshd() -> None:
    """Integration tests need OpenSSH: missing it is a broken setup, never a skip."""
    if sshd_path() is None:
        pytest.fail("OpenSSH sshd is not installed: run .ci/run or apt-get install openssh-server")
    if shutil.which("ssh") is None:
        pytest.fail("the OpenSSH client is not installed: run .ci/run or apt-get install "
                    "openssh-client")


def make_fleet(count: int) -> Iterator[Fleet]:
    require_sshd()
    fleet = start_fleet(count)
    try:
        yield fleet
    finally:
        fleet.stop()


def cli_for(fleet: Fleet, app_repo: AppRepo, tmp_path_factory: pytest.TempPathFactory,
            **defaults: object) -> Cli:
    """A Cli whose inventory deploys `app_repo` to `fleet` (with these defaults)."""
    inventory = tmp_path_factory.mktemp("inv") / "inventory.yaml"
    fleet.write_inventory(inventory, source={"repo": str(app_repo.path)}, **defaults)
    return Cli(inventory)


def deployed(cli: Cli, app_repo: AppRepo, version: str, *args: str,
             **app_options: object) -> str:
    """Commit the sample app at `version` and deploy it to every host (must succeed);
    returns the release id, the state a test then asserts on."""
    app_repo.commit(version, **app_options)
    report = cli.report("deploy", "--hosts", "prod", *args)
    return report["run"]["release_id"]


def deploy_broken_module(cli: Cli, app_repo: AppRepo, source: str,
                         tag: str) -> subprocess.CompletedProcess[str]:
    """Deploy a commit that adds sampleapp/broken.py with `source`; the repository then
    drops it again, so later deploys are clean."""
    broken = app_repo.path / "sampleapp" / "broken.py"
    broken.write_text(source)
    app_repo.commit(tag)
    try:
        return cli("deploy", "--hosts", "prod")
    finally:
        broken.unlink()
        app_repo.commit(f"{tag}-fixed")


def serving_release(cli: Cli, fleet: Fleet, app_repo: AppRepo, version: str = "base") -> str:
    """The good release every host serves, deploying one first unless the fleet already
    agrees on a release that is not marked failed and that every app reports serving."""
    ids = {current_release(host.deploy_to) for host in fleet.hosts}
    if len(ids) == 1 and None not in ids:
        release = ids.pop()
        assert release is not None
        marked = any((host.deploy_to / "releases" / release / ".deploytools" / "FAILED").exists()
                     for host in fleet.hosts)
        if not marked and all((host.health() or {}).get("release") == release
                              for host in fleet.hosts):
            return release
    return deployed(cli, app_repo, version)
