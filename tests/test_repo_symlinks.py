"""Symlinks in the repository, on a real 1-host fleet: a symlinked module gets bytecode
compiled from its target's content (never from an empty file), on the host; a link
pointing outside the release is shipped as a link and never followed on the controller;
a module's pyc that follows a changed target is never reused."""

from __future__ import annotations

import marshal
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploytools.sandbox import Fleet
from tests.support.apprepo import AppRepo
from tests.support.cli import Cli
from tests.support.fleets import cli_for, make_fleet
from tests.support.layout import current_release

TAG = sys.implementation.cache_tag


@pytest.fixture(scope="module")
def fleet1() -> Iterator[Fleet]:
    yield from make_fleet(1)


@pytest.fixture(scope="module")
def scli(fleet1: Fleet, app_repo: AppRepo, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return cli_for(fleet1, app_repo, tmp_path_factory)


def constants(pyc: Path) -> tuple:
    code = marshal.loads(pyc.read_bytes()[16:])
    return code.co_consts


def commit_links(repo: AppRepo, value: str) -> None:
    if not (repo.path / "sampleapp").exists():
        repo.commit("v1")
    pkg = repo.path / "sampleapp"
    (pkg / "real_mod.py").write_text(f"VALUE = {value!r}\n")
    if not (pkg / "linked_mod.py").is_symlink():
        (pkg / "linked_mod.py").symlink_to("real_mod.py")
        (repo.path / "outside").symlink_to("/nonexistent/deploytools-outside")
    repo.git("add", "-A")
    repo.git("-c", "user.email=t@example.com", "-c", "user.name=tests", "commit", "-q",
             "-m", f"links-{value}")


def test_symlinked_module_is_compiled_from_its_target(scli: Cli, app_repo: AppRepo,
                                                     fleet1: Fleet) -> None:
    commit_links(app_repo, "first")
    scli("deploy", "--hosts", "prod", check=True)
    host = fleet1.hosts[0]
    release = host.deploy_to / "releases" / current_release(host.deploy_to)
    pkg = release / "sampleapp"
    assert (pkg / "linked_mod.py").is_symlink()
    assert "first" in constants(pkg / "__pycache__" / f"linked_mod.{TAG}.pyc")
    outside = release / "outside"
    assert outside.is_symlink() and os.readlink(outside) == "/nonexistent/deploytools-outside"
    scli("verify", "--hosts", "prod", check=True)

    # the target changes, the link does not: its pyc must follow the target
    commit_links(app_repo, "second")
    scli("deploy", "--hosts", "prod", check=True)
    release = host.deploy_to / "releases" / current_release(host.deploy_to)
    assert "second" in constants(release / "sampleapp" / "__pycache__"
                                 / f"linked_mod.{TAG}.pyc")
    scli("verify", "--hosts", "prod", check=True)
