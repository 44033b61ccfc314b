"""Shared fixtures: a real simulated fleet (sshd + supervisord per host), a git repo
holding the sample app, and a runner for the real `inv` command line. Helpers live in
tests/support; this file only wires them into fixtures.

Every test outside tests/unit runs against real parts (sshd, supervisord, HAProxy, the
`inv` command line) and is marked `fleet`, so `-m "not fleet"` selects the fast tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploytools import artifact
from deploytools.sandbox import Fleet
from tests.support.apprepo import AppRepo
from tests.support.cli import Background, Cli
from tests.support.fleets import cli_for, make_fleet

UNIT_DIR = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if UNIT_DIR not in item.path.parents:
            item.add_marker(pytest.mark.fleet)


@pytest.fixture(scope="session", autouse=True)
def private_controller_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The controller's cache (git mirrors, digests, compiled pycs) in a temporary
    directory, for this process and every `inv` a test runs: never the user's ~/.cache."""
    patch = pytest.MonkeyPatch()
    cache_home = tmp_path_factory.mktemp("xdg-cache")
    patch.setenv("XDG_CACHE_HOME", str(cache_home))
    patch.setattr(artifact, "CACHE_DIR", cache_home / "deploytools")
    yield
    patch.undo()


@pytest.fixture(scope="module")
def fleet3() -> Iterator[Fleet]:
    """Three hosts shared by one test module; each test sets up the state it checks."""
    yield from make_fleet(3)


@pytest.fixture(scope="module")
def app_repo(tmp_path_factory: pytest.TempPathFactory) -> AppRepo:
    """The sample app's repository, with a first good commit: HEAD always deploys."""
    repo = AppRepo.create(tmp_path_factory.mktemp("app"))
    repo.commit("v0")
    return repo


@pytest.fixture(scope="module")
def cli(fleet3: Fleet, app_repo: AppRepo, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return cli_for(fleet3, app_repo, tmp_path_factory)


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
