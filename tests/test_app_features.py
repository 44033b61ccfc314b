"""Real-application features against a real 3-host fleet: shared paths, hooks (with
run_once), virtualenvs from a local wheel, and several supervisor programs."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from deploytools.sandbox import Fleet
from tests.support.apprepo import AppRepo
from tests.support.cli import Cli
from tests.support.fleets import serving_release
from tests.support.layout import current_release, health_releases, release_dirs


def releases_on(fleet: Fleet) -> set[str]:
    return {p.name for h in fleet.hosts for p in release_dirs(h.deploy_to)}


def test_shared_env_and_media_survive_releases(cli: Cli, fleet3: Fleet, app_repo: AppRepo,
                                               tmp_path: Path) -> None:
    cli = cli.with_settings(tmp_path / "shared.yaml",
                            shared={"files": [".env"], "dirs": ["media"]})
    for host in fleet3.hosts:
        (host.deploy_to / "shared" / ".env").unlink(missing_ok=True)
    before = {h.name: current_release(h.deploy_to) for h in fleet3.hosts}
    (app_repo.path / ".env").write_text("DEMO_SETTING=from-the-repo\n")  # replaced by the link
    app_repo.commit("s1")
    done = cli("deploy", "--hosts", "prod")
    assert done.returncode != 0
    assert "shared file" in done.stderr and "/shared/.env is missing" in done.stderr
    assert {h.name: current_release(h.deploy_to) for h in fleet3.hosts} == before

    for host in fleet3.hosts:
        (host.deploy_to / "shared" / ".env").write_text(f"DEMO_SETTING=secret-{host.name}\n")
    cli("deploy", "--hosts", "prod", check=True)
    for host in fleet3.hosts:
        assert host.health()["env"] == f"secret-{host.name}"
        (host.deploy_to / "current" / "media" / "upload.txt").write_text("uploaded in r1")
    first = current_release(fleet3.hosts[0].deploy_to)

    app_repo.commit("s2")
    cli("deploy", "--hosts", "prod", check=True)
    for host in fleet3.hosts:
        assert current_release(host.deploy_to) != first
        assert host.health()["env"] == f"secret-{host.name}"
        media = host.deploy_to / "current" / "media"
        assert media.is_symlink() and (media / "upload.txt").read_text() == "uploaded in r1"
    cli("verify", "--hosts", "prod", check=True)  # links are not integrity failures


def test_failing_before_switch_hook_switches_nothing(cli: Cli, fleet3: Fleet, app_repo: AppRepo,
                                                    tmp_path: Path) -> None:
    serving_release(cli, fleet3, app_repo)
    before = health_releases(fleet3)
    releases_before = releases_on(fleet3)
    cli = cli.with_settings(tmp_path / "hooks.yaml", hooks={
        "before_switch": ["echo migrating {name}; echo oops >&2; exit 3"]})
    app_repo.commit("h1")
    done = cli("deploy", "--hosts", "prod")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "exited 3" in done.stderr and "migrating web1" in done.stderr and "oops" in done.stderr
    assert health_releases(fleet3) == before
    assert releases_on(fleet3) == releases_before  # the unused release was discarded


def test_run_once_hook_runs_on_exactly_one_host(cli: Cli, fleet3: Fleet, app_repo: AppRepo,
                                                tmp_path: Path) -> None:
    log = tmp_path / "migrations.log"
    previous = serving_release(cli, fleet3, app_repo)
    cli = cli.with_settings(tmp_path / "hooks.yaml", hooks={
        "before_switch": [{"run": f"echo {{name}} >> {log}", "run_once": True}],
        "after_restart": ["env | grep ^DEPLOYTOOLS_ | sort > {deploy_to}/hook-env.txt"],
    })
    app_repo.commit("h2")
    cli("deploy", "--hosts", "prod", check=True)
    assert log.read_text().split() == ["web1"]
    release = current_release(fleet3.hosts[0].deploy_to)
    for host in fleet3.hosts:
        env = dict(line.split("=", 1) for line in
                   (host.deploy_to / "hook-env.txt").read_text().splitlines())
        assert env["DEPLOYTOOLS_RELEASE"] == release
        assert env["DEPLOYTOOLS_PREVIOUS_RELEASE"] == previous
        assert env["DEPLOYTOOLS_RELEASE_PATH"] == str(host.deploy_to / "releases" / release)


def build_wheel(directory: Path, version: str) -> Path:
    """A minimal, valid pure-Python wheel, built by hand (no network, no build backend)."""
    name = f"tinypkg-{version}"
    files = {
        "tinypkg/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{name}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: tinypkg\nVersion: {version}\n").encode(),
        f"{name}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}.dist-info/RECORD,,")
    files[f"{name}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{name}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def venv_keys(fleet: Fleet) -> set[str]:
    venvs = fleet.hosts[0].deploy_to / "shared" / "venvs"
    return {p.name for p in venvs.iterdir()} if venvs.exists() else set()


def test_virtualenv_built_once_reused_and_cleaned(cli: Cli, fleet3: Fleet, app_repo: AppRepo,
                                                  tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build_wheel(wheels, "1.0")
    build_wheel(wheels, "2.0")
    cli = cli.with_settings(tmp_path / "venv.yaml", keep_releases=1, venv={
        "requirements": "requirements.txt",
        "pip_args": ["--no-index", "--find-links", str(wheels)],
    }, hooks={"after_prepare": ["python -c 'import tinypkg; print(tinypkg.VERSION)' "
                                "> imported.txt"]})
    (app_repo.path / "requirements.txt").write_text("tinypkg==1.0\n")
    app_repo.commit("venv1")
    done = cli("deploy", "--hosts", "prod", check=True)
    assert done.stdout.count("creating venv") == 3
    (first_key,) = venv_keys(fleet3)
    for host in fleet3.hosts:
        current = host.deploy_to / "current"
        assert (current / ".venv").resolve() == host.deploy_to / "shared" / "venvs" / first_key
        assert (current / "imported.txt").read_text().strip() == "1.0"  # the release imports it

    marker = fleet3.hosts[0].deploy_to / "shared" / "venvs" / first_key / ".deploytools-complete"
    built_at = marker.stat().st_mtime_ns
    app_repo.commit("venv2")  # same requirements
    done = cli("deploy", "--hosts", "prod", check=True)
    assert "creating venv" not in done.stdout and done.stdout.count("reusing venv") == 3
    assert venv_keys(fleet3) == {first_key} and marker.stat().st_mtime_ns == built_at

    (app_repo.path / "requirements.txt").write_text("tinypkg==2.0\n")
    app_repo.commit("venv3")
    cli("deploy", "--hosts", "prod", check=True)
    keys = venv_keys(fleet3)
    assert len(keys) == 2  # the previous good release (never removed) still uses the old one
    assert (fleet3.hosts[0].deploy_to / "current" / "imported.txt").read_text().strip() == "2.0"
    app_repo.commit("venv4")
    cli("deploy", "--hosts", "prod", check=True)
    assert venv_keys(fleet3) == keys - {first_key}  # no kept release uses it any more
    cli("verify", "--hosts", "prod", check=True)
    (app_repo.path / "requirements.txt").unlink()


@pytest.mark.parametrize("programs", [["app", "worker"]])
def test_several_programs_restarted_and_verified(cli: Cli, fleet3: Fleet, app_repo: AppRepo,
                                                 programs: list[str], tmp_path: Path) -> None:
    cli = cli.with_settings(tmp_path / "programs.yaml", supervisor={"programs": programs})
    app_repo.commit("multi")
    done = cli("deploy", "--hosts", "prod", check=True)
    assert done.stdout.count("stopped app:app, worker:worker") == 3
    release = current_release(fleet3.hosts[0].deploy_to)
    for host in fleet3.hosts:
        info = {i["name"]: i for i in host.supervisor_rpc().supervisor.getAllProcessInfo()}
        assert info["app"]["statename"] == info["worker"]["statename"] == "RUNNING"
        cwd = Path(f"/proc/{info['worker']['pid']}/cwd").resolve()
        assert cwd == host.deploy_to / "releases" / release
    done = cli("verify", "--hosts", "prod", check=True)
    assert done.stdout.count("ok    process worker:worker") == 3
    host = fleet3.hosts[2]
    host.supervisor_rpc().supervisor.stopProcess("worker")
    try:
        done = cli("verify", "--hosts", "prod")
        assert done.returncode == 7 and "worker:worker is STOPPED" in done.stdout
    finally:  # back to the fleet's own state: only `app` runs
        for other in fleet3.hosts:
            if other is not host:
                other.supervisor_rpc().supervisor.stopProcess("worker")
