"""`inv verify` and `inv clear-cache` against a real fleet: every way the running code can
silently differ from the shipped code is caught, named, and left untouched by verify.

The module's fleet deploys with timestamp-mode pycs, the mode whose check can lie.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from deploytools.sandbox import Fleet, SimHost
from tests.support.apprepo import AppRepo
from tests.support.cli import Cli
from tests.support.fleets import cli_for, deploy_broken_module, make_fleet
from tests.support.layout import current_release, release_dirs


@pytest.fixture()
def fleet2() -> Iterator[Fleet]:
    """A fresh 2-host fleet per test (it starts in well under a second): every test
    breaks its hosts in its own way."""
    yield from make_fleet(2)


@pytest.fixture()
def vcli(fleet2: Fleet, app_repo: AppRepo, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """v1 deployed to the test's fleet."""
    cli = cli_for(fleet2, app_repo, tmp_path_factory, pyc_invalidation="timestamp")
    app_repo.commit("v1")
    cli("deploy", "--hosts", "prod", check=True)
    return cli


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime: verify must change none of them."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            stat = os.lstat(path)
            out[path] = (stat.st_size, stat.st_mtime_ns)
    return out


def verify_fails(cli: Cli, host: SimHost, *needles: str) -> str:
    """Run verify expecting failure; the host's tree must be byte-for-byte untouched."""
    before = snapshot(host.deploy_to)
    done = cli("verify", "--hosts", "prod")
    assert done.returncode == 7, done.stdout + done.stderr
    for needle in needles:
        assert needle in done.stdout, (needle, done.stdout)
    assert snapshot(host.deploy_to) == before
    return done.stdout


def greeting(host: SimHost) -> str:
    with urllib.request.urlopen(f"http://{host.address}:{host.app_port}/", timeout=5) as answer:
        return answer.read().decode().strip()


def test_verify_passes_after_a_normal_deploy(vcli: Cli, fleet2: Fleet) -> None:
    done = vcli("verify", "--hosts", "prod", check=True)
    assert done.stdout.count(": ok") == 2
    for check in ("current", "integrity", "bytecode", "process app:app", "health"):
        assert done.stdout.count(f"ok    {check}") == 2, check
    assert vcli("verify", "--hosts", "prod", "--expect", "HEAD").returncode == 0
    release = current_release(fleet2.hosts[0].deploy_to)
    assert vcli("verify", "--hosts", "prod", "--expect", release).returncode == 0
    done = vcli("verify", "--hosts", "prod", "--expect", "0000000")
    assert done.returncode == 7 and "expected 0000000" in done.stdout


def test_same_size_same_mtime_edit_is_caught_and_cleared(vcli: Cli, fleet2: Fleet) -> None:
    host = fleet2.hosts[0]
    views = host.deploy_to / "current" / "sampleapp" / "views.py"
    assert greeting(host) == "hello from v1"
    # The running process loaded views.py long ago; a restart would import the pyc,
    # whose timestamp check passes: the edit keeps the size and the mtime.
    stat = views.stat()
    text = views.read_text()
    assert "VERSION = 'v1'" in text
    views.write_text(text.replace("VERSION = 'v1'", "VERSION = 'v9'"))
    os.utime(views, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert views.stat().st_size == stat.st_size

    out = verify_fails(vcli, host, "sampleapp/__pycache__/views.", "sampleapp/views.py")
    assert "stale" in out

    done = vcli("clear-cache", "--hosts", host.name, "--restart", check=True)
    assert "removed" in done.stdout and "acknowledged in-place edits: sampleapp/views.py" \
        in done.stdout
    vcli("verify", "--hosts", "prod", check=True)
    assert greeting(host) == "hello from v9"


def test_orphan_legacy_pyc_is_caught(vcli: Cli, fleet2: Fleet) -> None:
    host = fleet2.hosts[1]
    package = host.deploy_to / "current" / "sampleapp"
    compiled = next((package / "__pycache__").glob("views.*.pyc"))
    orphan = package / "oldmodule.pyc"
    shutil.copy(compiled, orphan)  # importable as sampleapp.oldmodule, no source anywhere
    try:
        verify_fails(vcli, host, "sampleapp/oldmodule.pyc", "still importable")
    finally:
        orphan.unlink()
    vcli("verify", "--hosts", "prod", check=True)


def test_current_switched_by_hand_without_restart(vcli: Cli, fleet2: Fleet,
                                                  app_repo: AppRepo) -> None:
    app_repo.commit("v2")
    vcli("deploy", "--hosts", "prod", check=True)
    host = fleet2.hosts[0]
    running = current_release(host.deploy_to)
    older = sorted(p.name for p in release_dirs(host.deploy_to) if p.name != running)[-1]
    temp = host.deploy_to / "current.byhand"
    temp.symlink_to(f"releases/{older}")
    temp.replace(host.deploy_to / "current")
    out = verify_fails(vcli, host, "process app:app", "not in the current release",
                       f"release is '{running}', expected '{older}'")
    assert "restart from the current release" in out  # says what fixes it
    assert f"{host.name} ({host.address}): FAILED" in out
    assert f"{fleet2.hosts[1].name} ({fleet2.hosts[1].address}): ok" in out
    vcli("clear-cache", "--hosts", host.name, "--restart", check=True)
    vcli("verify", "--hosts", "prod", check=True)
    assert host.health()["release"] == older


def test_program_stopped_by_hand(vcli: Cli, fleet2: Fleet) -> None:
    host = fleet2.hosts[1]
    host.supervisor_rpc().supervisor.stopProcess("app")
    verify_fails(vcli, host, "app:app is STOPPED")
    vcli("clear-cache", "--hosts", host.name, "--restart", check=True)
    vcli("verify", "--hosts", "prod", check=True)


def test_syntax_error_reported_by_the_host_compiler(vcli: Cli, fleet2: Fleet,
                                                     app_repo: AppRepo) -> None:
    """Timestamp pycs are compiled on each host (not shipped): its error names file and line."""
    done = deploy_broken_module(vcli, app_repo, "x = 1\nif x\n    pass\n", "host-syntax")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "cannot compile sampleapp/broken.py line 2" in done.stderr
    vcli("verify", "--hosts", "prod", check=True)


def test_clear_cache_counts_and_path_guard(vcli: Cli, fleet2: Fleet) -> None:
    host = fleet2.hosts[0]
    done = vcli("clear-cache", "--hosts", host.name, check=True)
    assert f"[{host.name}] removed" in done.stdout
    assert not list((host.deploy_to / "current").rglob("*.pyc"))
    done = vcli("clear-cache", "--hosts", host.name, "--path", "/etc")
    assert done.returncode == 2 and "not under deploy_to" in done.stderr
    venv = host.deploy_to / "current" / ".venv" / "lib"
    venv.mkdir(parents=True)
    (venv / "keep.pyc").write_bytes(b"x")
    vcli("clear-cache", "--hosts", host.name, check=True)
    assert (venv / "keep.pyc").exists()  # virtualenvs only with --include-venv
    vcli("clear-cache", "--hosts", host.name, "--include-venv", check=True)
    assert not (venv / "keep.pyc").exists()
    shutil.rmtree(host.deploy_to / "current" / ".venv")


def test_verify_unreachable_host_is_named(vcli: Cli, tmp_path: Path, fleet2: Fleet) -> None:
    data = yaml.safe_load(vcli.inventory.read_text())
    data["groups"]["prod"]["hosts"]["web2"]["port"] = 1  # nothing listens there
    broken = tmp_path / "inv.yaml"
    broken.write_text(yaml.safe_dump(data))
    done = vcli("verify", "--hosts", "prod", "--inventory", str(broken))
    assert done.returncode == 6
    assert "web2" in done.stdout and "refused" in done.stdout
