"""Incremental releases and compile-once on a real 2-host fleet: what crosses the wire,
what a new release shares with the previous one (hard links), that an in-place edit is
never carried forward, and that releases stay independent of each other.

Tests in this module share one fleet and run in file order.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploytools.remote.intact import read_record, read_tree
from deploytools.remote.releases import Layout
from deploytools.sandbox import Fleet
from tests.support.apprepo import AppRepo
from tests.support.cli import Cli
from tests.support.fleets import cli_for, make_fleet
from tests.support.layout import current_release, health_releases, release_dirs

TAG = sys.implementation.cache_tag
MODS = Path("sampleapp") / "mods"


@pytest.fixture()
def fleet2() -> Iterator[Fleet]:
    """A fresh 2-host fleet per test (it starts in well under a second): these tests
    assert on what the first deploy ships and on every release a host holds."""
    yield from make_fleet(2)


@pytest.fixture()
def icli(fleet2: Fleet, app_repo: AppRepo, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return cli_for(fleet2, app_repo, tmp_path_factory)


def deploy(cli: Cli, tmp_path: Path) -> dict:
    """`inv deploy --json`, which must succeed; returns the report."""
    report = tmp_path / f"report-{time.monotonic_ns()}.json"
    cli("deploy", "--hosts", "prod", "--json", str(report), check=True)
    return json.loads(report.read_text())


def deploy_base(cli: Cli, app_repo: AppRepo, tmp_path: Path, version: str = "base") -> dict:
    """Commit the sample app with 40 extra modules and deploy it: the release the
    incremental tests change."""
    app_repo.commit(version, extra_modules=40)
    return deploy(cli, tmp_path)


def commit_all(repo: AppRepo, message: str) -> None:
    repo.git("add", "-A")
    repo.git("-c", "user.email=t@example.com", "-c", "user.name=tests", "commit", "-q",
             "-m", message)


def inode(path: Path) -> int:
    return path.stat().st_ino


def pyc(release: Path, module: Path) -> Path:
    return release / module.parent / "__pycache__" / f"{module.stem}.{TAG}.pyc"


def manifest(release: Path) -> dict:
    return json.loads((release / ".deploytools" / "release.json").read_text())


def test_a_redeploy_ships_only_what_changed_and_links_the_rest(
        icli: Cli, fleet2: Fleet, app_repo: AppRepo, tmp_path: Path) -> None:
    first = deploy_base(icli, app_repo, tmp_path, "v1")
    olds = {h.name: release_dirs(h.deploy_to)[-1] for h in fleet2.hosts}
    sources = [p for p in manifest(olds["web1"])["files"] if p.endswith(".py")]
    compiled_once = manifest(olds["web1"])["python"]["magic"] == \
        importlib.util.MAGIC_NUMBER.hex()
    for old in olds.values():
        counts = manifest(old)["bytecode"]
        assert counts["shipped"] + counts["compiled"] == len(sources)
        assert counts["shipped"] == (len(sources) if compiled_once else 0)

    changed, deleted, added, kept = MODS / "m0003.py", MODS / "m0007.py", MODS / "fresh.py", \
        MODS / "m0001.py"
    with (app_repo.path / changed).open("a") as fh:
        fh.write("\nCHANGED = True\n")
    (app_repo.path / deleted).unlink()
    (app_repo.path / added).write_text("ADDED = True\n")
    commit_all(app_repo, "one changed, one deleted, one added")
    second = deploy(icli, tmp_path)

    app_bytes = sum((olds["web1"] / p).stat().st_size for p in manifest(olds["web1"])["files"])
    delta_bytes = (app_repo.path / changed).stat().st_size + (app_repo.path / added).stat().st_size
    for host in fleet2.hosts:
        old, new = olds[host.name], release_dirs(host.deploy_to)[-1]
        assert new != old and current_release(host.deploy_to) == new.name
        # unchanged files and their bytecode are the previous release's, hard-linked
        assert inode(new / kept) == inode(old / kept)
        assert inode(new / "app.py") == inode(old / "app.py")
        assert inode(pyc(new, kept)) == inode(pyc(old, kept))
        # what changed is a file of its own; what was deleted is gone; what is new is there
        assert inode(new / changed) != inode(old / changed)
        assert "CHANGED = True" in (new / changed).read_text()
        assert "CHANGED = True" not in (old / changed).read_text()
        assert pyc(new, changed).exists() and inode(pyc(new, changed)) != inode(pyc(old, changed))
        assert not (new / deleted).exists() and not pyc(new, deleted).exists()
        assert (old / deleted).exists()
        assert (new / added).read_text() == "ADDED = True\n" and pyc(new, added).exists()
        counts = manifest(new)["bytecode"]
        assert counts["reused"] == len(sources) - 2  # all but the changed and the deleted
    for entry in first["hosts"]:
        assert entry["transport"]["bytes_sent"] > app_bytes / 10  # compressed, but whole
    for entry in second["hosts"]:
        assert entry["transport"]["bytes_sent"] <= delta_bytes + 64 * 1024, entry
    icli("verify", "--hosts", "prod", check=True)


def test_an_in_place_edit_is_never_carried_into_the_next_release(
        icli: Cli, fleet2: Fleet, app_repo: AppRepo, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An edit that keeps the inode, the size and the mtime (`cp -p` over the file, or
    `rsync -t --inplace`), made after the host recorded which files are intact: the next
    release must get the shipped bytes, not the edit."""
    deploy_base(icli, app_repo, tmp_path)
    host = fleet2.hosts[0]
    release = release_dirs(host.deploy_to)[-1]
    layout = Layout(str(host.deploy_to))
    monkeypatch.setenv("HOME", str(host.home))  # the record is in the host user's cache
    deadline = time.monotonic() + 15
    while not read_record(layout, release.name) and time.monotonic() < deadline:
        time.sleep(0.1)  # recorded in the background after the last deploy
    assert read_record(layout, release.name), "no record of intact files was written"

    target = release / MODS / "m0010.py"
    shipped = target.read_bytes()
    before = target.stat()
    with target.open("r+b") as fh:  # same inode, same size
        fh.write(b"#" if shipped[:1] != b"#" else b"!")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime restored
    after = target.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == \
        (before.st_ino, before.st_size, before.st_mtime_ns)
    assert target.read_bytes() != shipped

    with (app_repo.path / MODS / "m0011.py").open("a") as fh:
        fh.write("\nOTHER = 1\n")
    commit_all(app_repo, "an unrelated change")
    deploy(icli, tmp_path)
    new = release_dirs(host.deploy_to)[-1]
    assert new != release
    assert (new / MODS / "m0010.py").read_bytes() == shipped
    assert inode(new / MODS / "m0010.py") != after.st_ino
    assert target.read_bytes() != shipped  # an old release is never touched
    icli("verify", "--hosts", "prod", check=True)


def test_skip_unchanged_trusts_a_verified_tree_only_while_nothing_changed(
        icli: Cli, fleet2: Fleet, app_repo: AppRepo, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a deploy the host verifies its release once and records the tree's
    fingerprint; --skip-unchanged then proves the hosts unchanged by stat alone. An
    in-place edit that keeps inode, size and mtime, made after that record, must still
    make its host redeploy, and `inv verify` must still name it."""
    deploy_base(icli, app_repo, tmp_path)
    edited_host, other = fleet2.hosts
    deadline = time.monotonic() + 15
    for host in fleet2.hosts:
        monkeypatch.setenv("HOME", str(host.home))  # the record is in the host user's cache
        layout = Layout(str(host.deploy_to))
        release = release_dirs(host.deploy_to)[-1].name
        while not read_tree(layout, release) and time.monotonic() < deadline:
            time.sleep(0.1)  # recorded in the background after the deploy
        assert read_tree(layout, release), f"{host.name}: no verified tree was recorded"
    report = tmp_path / "noop.json"
    icli("deploy", "--hosts", "prod", "--skip-unchanged", "--json", str(report), check=True)
    assert {h["outcome"] for h in json.loads(report.read_text())["hosts"]} == {"unchanged"}

    target = release_dirs(edited_host.deploy_to)[-1] / MODS / "m0010.py"
    before = target.stat()
    with target.open("r+b") as fh:  # same inode, same size, mtime put back
        fh.write(b"#" if target.read_bytes()[:1] != b"#" else b"!")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    done = icli("verify", "--hosts", "prod")
    assert done.returncode != 0 and "m0010.py" in done.stdout + done.stderr
    icli("deploy", "--hosts", "prod", "--skip-unchanged", "--json", str(report), check=True)
    outcomes = {h["name"]: h["outcome"] for h in json.loads(report.read_text())["hosts"]}
    assert outcomes == {edited_host.name: "healthy", other.name: "unchanged"}
    icli("verify", "--hosts", "prod", check=True)


def test_bytecode_the_base_lacks_is_made_for_the_new_release(
        icli: Cli, fleet2: Fleet, app_repo: AppRepo, tmp_path: Path) -> None:
    """After `inv clear-cache` the current release has no pycs to share: the next release
    links its unchanged sources but compiles their bytecode on the host."""
    deploy_base(icli, app_repo, tmp_path)
    icli("clear-cache", "--hosts", "prod", check=True)
    with (app_repo.path / MODS / "m0012.py").open("a") as fh:
        fh.write("\nAFTER_CLEAR = 1\n")
    commit_all(app_repo, "after clear-cache")
    deploy(icli, tmp_path)
    for host in fleet2.hosts:
        new = release_dirs(host.deploy_to)[-1]
        sources = [Path(p) for p in manifest(new)["files"] if p.endswith(".py")]
        counts = manifest(new)["bytecode"]
        assert counts["reused"] == 0 and counts["compiled"] >= len(sources) - 1
        assert counts["shipped"] + counts["compiled"] == len(sources)
        assert all(pyc(new, source).exists() for source in sources)
    icli("verify", "--hosts", "prod", check=True)


def test_deleting_old_releases_never_affects_the_current_one(
        icli: Cli, fleet2: Fleet, app_repo: AppRepo, tmp_path: Path) -> None:
    for number in range(3):
        deploy_base(icli, app_repo, tmp_path, f"base{number}")
    before = health_releases(fleet2)
    for host in fleet2.hosts:
        releases = release_dirs(host.deploy_to)
        assert len(releases) >= 3
        for old in releases[:-1]:
            shutil.rmtree(old)  # their hard links go; the current release keeps its files
    icli("verify", "--hosts", "prod", check=True)
    assert health_releases(fleet2) == before
