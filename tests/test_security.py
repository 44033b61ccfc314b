"""Failure paths and security against a real 3-host fleet: planted agent caches,
symlinked shared parents, garbage health answers, credentials in the source URL.

Tests share one fleet and run in file order.
"""

from __future__ import annotations

import json
import marshal
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from deploytools.sandbox import Fleet, SimHost
from deploytools.transport import agent_digest
from tests.support.apprepo import AppRepo
from tests.support.cli import Cli
from tests.support.faults import write_malformed_health_app
from tests.support.fleets import cli_for, make_fleet, serving_release
from tests.support.layout import current_release, health_releases

INTRUDER_UID = 65534  # "nobody": another user than the SSH user (root)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    yield from make_fleet(3)


@pytest.fixture(scope="module")
def cli(fleet: Fleet, app_repo: AppRepo, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return cli_for(fleet, app_repo, tmp_path_factory)


def set_defaults(cli: Cli, **values: object) -> None:
    data = yaml.safe_load(cli.inventory.read_text())
    for key, value in values.items():
        if value is None:
            data["defaults"].pop(key, None)
        else:
            data["defaults"][key] = value
    cli.inventory.write_text(yaml.safe_dump(data, sort_keys=False))


def plant_agent(folder: Path, marker: Path, uid: int, dir_uid: int | None = None) -> Path:
    """A 'cached agent' whose code writes `marker`, under the name the bootstrap looks
    for, owned by `uid` (the folder by `dir_uid`, default `uid`), mode 0700/0600."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    name = f"agent-{agent_digest()}.{sys.implementation.cache_tag}"
    code = compile(f"open({str(marker)!r}, 'w').write('planted code ran')", "<x>", "exec")
    planted = folder / name
    planted.write_bytes(marshal.dumps([("deploytools.remote.agent", code)]))
    planted.chmod(0o600)
    os.chown(planted, uid, uid)
    os.chown(folder, dir_uid if dir_uid is not None else uid, -1)
    return planted


def test_planted_agent_cache_is_never_executed(cli: Cli, fleet: Fleet, app_repo: AppRepo,
                                               tmp_path: Path) -> None:
    """Every place a bootstrap might look holds a planted agent: a cache dir owned by
    another user, our own dir holding another user's file, a symlinked cache dir, and the
    old /tmp fallback. None runs; every host deploys, and the hosts whose cache was
    unusable still work (inline, uncached)."""
    marker = tmp_path / "pwned"
    web1, web2, web3 = fleet.hosts
    for host in fleet.hosts:
        shutil.rmtree(host.home / ".cache", ignore_errors=True)
    plant_agent(web1.home / ".cache" / "deploytools", marker, INTRUDER_UID)
    planted2 = plant_agent(web2.home / ".cache" / "deploytools", marker, INTRUDER_UID,
                           dir_uid=os.geteuid())
    elsewhere = tmp_path / "elsewhere"
    plant_agent(elsewhere, marker, os.geteuid())  # ours, but reached through a symlink
    (web3.home / ".cache").mkdir(mode=0o700)
    (web3.home / ".cache" / "deploytools").symlink_to(elsewhere)
    legacy = Path(f"/tmp/deploytools-{os.geteuid()}")
    made_legacy = not legacy.exists()
    try:
        if made_legacy:
            plant_agent(legacy, marker, INTRUDER_UID)
        app_repo.commit("cache1")
        cli("deploy", "--hosts", "prod", check=True)
        cli("status", "--hosts", "prod", check=True)  # a second run, cached where possible
    finally:
        if made_legacy:
            shutil.rmtree(legacy, ignore_errors=True)
    assert not marker.exists(), "a planted agent was executed"
    assert len(set(health_releases(fleet).values())) == 1
    assert None not in health_releases(fleet).values()
    # web2's own private dir got a real cache entry in place of the planted file
    assert planted2.stat().st_uid == os.geteuid() and planted2.stat().st_mode & 0o077 == 0
    # web1's dir belongs to another user: nothing was written into it either
    assert not any(p.stat().st_uid == os.geteuid()
                   for p in (web1.home / ".cache" / "deploytools").iterdir())
    for host in fleet.hosts:
        shutil.rmtree(host.home / ".cache", ignore_errors=True)


def test_fresh_host_caches_agent_privately(cli: Cli, fleet: Fleet, app_repo: AppRepo) -> None:
    serving_release(cli, fleet, app_repo)  # status needs a release to report on
    cli("status", "--hosts", "prod", check=True)
    for host in fleet.hosts:
        cache = host.home / ".cache" / "deploytools"
        assert cache.stat().st_mode & 0o777 == 0o700 and not cache.is_symlink()
        entries = [p for p in cache.iterdir() if p.name.startswith("agent-")]
        assert entries and all(p.stat().st_mode & 0o077 == 0 for p in entries)


def host_current(host: SimHost) -> str | None:
    return current_release(host.deploy_to)


def test_symlinked_parent_of_shared_dir_touches_nothing_outside(
        cli: Cli, fleet: Fleet, app_repo: AppRepo, tmp_path: Path) -> None:
    """`public -> OUTSIDE` in the repo plus `shared.dirs: [public/uploads]`: the deploy is
    refused naming the path, and OUTSIDE/uploads (a user's files) is left as it was."""
    before = health_releases(fleet)
    outside = tmp_path / "outside"
    (outside / "uploads").mkdir(parents=True)
    (outside / "uploads" / "photo.jpg").write_text("a user's file")
    (app_repo.path / "public").symlink_to(outside)
    set_defaults(cli, shared={"dirs": ["public/uploads"]})
    try:
        app_repo.commit("symlinked-parent")
        done = cli("deploy", "--hosts", "prod")
    finally:
        (app_repo.path / "public").unlink()
        set_defaults(cli, shared=None)
        app_repo.commit("symlinked-parent-fixed")
    assert done.returncode != 0, done.stdout
    assert "public/uploads" in done.stderr and "public in the release is a symlink" \
        in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert (outside / "uploads").is_dir() and not (outside / "uploads").is_symlink()
    assert (outside / "uploads" / "photo.jpg").read_text() == "a user's file"
    assert sorted(p.name for p in outside.iterdir()) == ["uploads"]
    assert health_releases(fleet) == before


def test_python_file_under_shared_dir(cli: Cli, fleet: Fleet, app_repo: AppRepo) -> None:
    """A `.py` in the repo under a shared dir neither breaks prepare nor gets bytecode
    compiled into shared/ (the shared copy is the host's, not the release's)."""
    (app_repo.path / "media").mkdir(exist_ok=True)
    (app_repo.path / "media" / "plugin.py").write_text("X = 1\n")
    set_defaults(cli, shared={"dirs": ["media"]})
    try:
        app_repo.commit("py-in-shared")
        cli("deploy", "--hosts", "prod", check=True)  # shared/media/plugin.py absent
        for host in fleet.hosts:
            (host.deploy_to / "shared" / "media" / "plugin.py").write_text("X = 2\n")
        app_repo.commit("py-in-shared-2")
        cli("deploy", "--hosts", "prod", check=True)  # ... and present
        cli("verify", "--hosts", "prod", check=True)
    finally:
        (app_repo.path / "media" / "plugin.py").unlink()
        set_defaults(cli, shared=None)
    for host in fleet.hosts:
        assert (host.deploy_to / "current" / "media").is_symlink()
        assert not (host.deploy_to / "shared" / "media" / "__pycache__").exists()


@pytest.mark.parametrize("mode", ["garbage", "truncated"])
def test_malformed_health_answer_rolls_back(cli: Cli, fleet: Fleet, app_repo: AppRepo,
                                            tmp_path: Path, mode: str) -> None:
    """/health answering not-HTTP (BadStatusLine) or a short body (IncompleteRead) is an
    unhealthy host like any other: switched back, restarted, re-checked, the release
    marked failed, exit 3 with every host rolled_back in the report."""
    app_repo.commit(f"good-before-{mode}")
    cli("deploy", "--hosts", "prod", check=True)
    good = {host_current(h) for h in fleet.hosts}
    assert len(good) == 1
    app_repo.commit(f"health-{mode}", writer=write_malformed_health_app, mode=mode)
    report = tmp_path / "report.json"
    done = cli("deploy", "--hosts", "prod", "--json", str(report))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    data = json.loads(report.read_text())
    assert {h["outcome"] for h in data["hosts"]} == {"rolled_back"}, data["hosts"]
    assert {host_current(h) for h in fleet.hosts} == good
    assert set(health_releases(fleet).values()) == good
    for host in fleet.hosts:
        failed = [p for p in (host.deploy_to / "releases").iterdir()
                  if (p / ".deploytools" / "FAILED").exists()]
        assert any(p.name.endswith(app_repo.git("rev-parse", "--short=7", "HEAD"))
                   for p in failed)
    app_repo.commit(f"health-{mode}-fixed")


def test_credentials_in_source_url_never_reach_hosts(
        cli: Cli, fleet: Fleet, app_repo: AppRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    """`source.repo: https://user:TOKEN@...` (here redirected to the local repo by git's
    insteadOf): release.json and history on the hosts hold the URL without the token,
    and nothing the run prints shows it."""
    token = "s3cr3tTOKENvalue"
    url = f"https://deployer:{token}@git.example.invalid/app.git"
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", f"url.{app_repo.path}.insteadOf")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", url)
    original = cli.inventory.read_text()
    set_defaults(cli, source={"repo": url})
    try:
        app_repo.commit("with-token-url")
        done = cli("deploy", "--hosts", "prod", "--debug")
    finally:
        cli.inventory.write_text(original)
    assert done.returncode == 0, done.stdout + done.stderr
    assert token not in done.stdout + done.stderr
    for host in fleet.hosts:
        release = host.deploy_to / "current" / ".deploytools" / "release.json"
        manifest = json.loads(release.read_text())
        assert manifest["source"] == "https://git.example.invalid/app.git"
        for path in (host.deploy_to / ".deploytools").rglob("*"):
            if path.is_file():
                assert token not in path.read_text(errors="replace"), path


def test_known_hosts_markers_revoked_refused_cert_authority_skipped(
        fleet: Fleet, tmp_path: Path) -> None:
    """A known_hosts file with @cert-authority and @revoked lines (paramiko alone raises
    on both, failing every host): web1, whose key is @revoked, is refused before auth
    with one clear line; the others connect; a host missing from the file is one
    'unknown host key' error, not a crash."""
    web1, web2, web3 = fleet.hosts
    lines = fleet.known_hosts.read_text().splitlines()
    web1_key = " ".join(next(line for line in lines if web1.address in line).split()[1:3])
    known = tmp_path / "known_hosts"
    kept = [line for line in lines if web3.address not in line]  # web3: unknown
    known.write_text("\n".join([
        "# fleet keys", "@cert-authority *.example.com " + web1_key, *kept,
        "@revoked * " + web1_key, ""]))
    inventory = fleet.write_inventory(tmp_path / "inventory.yaml",
                                      source={"path": str(tmp_path)})
    data = yaml.safe_load(inventory.read_text())
    data["ssh"]["known_hosts"] = str(known)
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    done = Cli(inventory)("check", "--hosts", "prod")
    out = done.stdout + done.stderr
    assert done.returncode == 6, out
    assert "Traceback" not in out
    assert "host key REVOKED" in out and web1.name in out
    assert "unknown host key" in out and web3.address in out
    web2_lines = [line for line in out.splitlines() if line.startswith(web2.name + " ")]
    assert web2_lines and "unreachable" not in web2_lines[0], out
