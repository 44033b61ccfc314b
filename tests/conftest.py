"""Shared fixtures: a real simulated fleet (sshd + supervisord per host), a git repo
holding the sample app, and a runner for the real `inv` command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from deploytools.sandbox import Fleet, sshd_path, start_fleet, write_sample_app

REPO_ROOT = Path(__file__).resolve().parent.parent


def require_sshd() -> None:
    """Integration tests need OpenSSH: missing it is a broken setup, never a skip."""
    if sshd_path() is None:
        pytest.fail("OpenSSH sshd is not installed: run .ci/run or apt-get install openssh-server")
    if shutil.which("ssh") is None:
        pytest.fail("the OpenSSH client is not installed: run .ci/run or apt-get install "
                    "openssh-client")


@dataclass
class AppRepo:
    """A git repository holding the sample app; each commit is a deployable revision."""

    path: Path

    def git(self, *args: str) -> str:
        done = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True,
                              text=True, check=True)
        return done.stdout.strip()

    def commit(self, version: str, **app_options: object) -> str:
        """Write the sample app at `version` (see write_sample_app) and commit it."""
        write_sample_app(self.path, version, **app_options)  # type: ignore[arg-type]
        self.git("add", "-A")
        self.git("-c", "user.email=t@example.com", "-c", "user.name=tests", "commit", "-q",
                 "--allow-empty", "-m", version)
        return self.git("rev-parse", "HEAD")


@dataclass
class Cli:
    """Runs `inv` exactly as a user would, against one inventory file."""

    inventory: Path

    def __call__(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "DEPLOYTOOLS_INVENTORY"}
        command = [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), *args]
        if "--inventory" not in args and len(args) > 0:
            command += ["--inventory", str(self.inventory)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        if check and done.returncode != 0:
            raise AssertionError(f"inv {' '.join(args)} exited {done.returncode}\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def settings(self, **overrides: object) -> Path:
        """Rewrite the inventory's defaults (deep keys replaced whole)."""
        data = yaml.safe_load(self.inventory.read_text())
        data["defaults"].update(overrides)
        self.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        return self.inventory


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


def make_fleet(count: int) -> Iterator[Fleet]:
    require_sshd()
    fleet = start_fleet(count)
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="module")
def fleet3() -> Iterator[Fleet]:
    """Three hosts shared by one test module (tests in a module run in order)."""
    yield from make_fleet(3)


@pytest.fixture(scope="module")
def app_repo(tmp_path_factory: pytest.TempPathFactory) -> AppRepo:
    path = tmp_path_factory.mktemp("app")
    repo = AppRepo(path)
    repo.git("init", "-q", "-b", "main")
    return repo


def cli_for(fleet: Fleet, app_repo: AppRepo, tmp_path_factory: pytest.TempPathFactory,
            **defaults: object) -> Cli:
    """A Cli whose inventory deploys `app_repo` to `fleet` (with these defaults)."""
    inventory = tmp_path_factory.mktemp("inv") / "inventory.yaml"
    fleet.write_inventory(inventory, source={"repo": str(app_repo.path)}, **defaults)
    return Cli(inventory)


@pytest.fixture(scope="module")
def cli(fleet3: Fleet, app_repo: AppRepo, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return cli_for(fleet3, app_repo, tmp_path_factory)


def health_releases(fleet: Fleet) -> dict[str, str | None]:
    """What each host's app says it runs, straight from its /health endpoint."""
    out = {}
    for host in fleet.hosts:
        answer = host.health()
        out[host.name] = answer["release"] if answer else None
    return out


def release_dirs(deploy_to: Path) -> list[Path]:
    """The host's releases (hidden entries are partial builds or trash being deleted)."""
    return sorted(p for p in (deploy_to / "releases").iterdir() if not p.name.startswith("."))


def current_release(host_deploy_to: Path) -> str | None:
    link = host_deploy_to / "current"
    return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None


class Background:
    """An `inv` run in the background whose output can be waited on line by line."""

    def __init__(self, cli: Cli, *args: str) -> None:
        command = [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), *args,
                   "--inventory", str(cli.inventory)]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(line) for line in list(self.lines)):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError("never saw the expected line:\n" + "".join(self.lines))

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(5)
        return code, "".join(self.lines)

    def stop(self) -> None:
        """Kill the run by PID if a failed test left it going, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)


@pytest.fixture()
def background() -> Iterator[Callable[..., Background]]:
    """Starts Background runs; whatever a test leaves running is stopped by PID."""
    started: list[Background] = []

    def start(cli: Cli, *args: str) -> Background:
        started.append(Background(cli, *args))
        return started[-1]

    yield start
    for run in started:
        run.stop()
