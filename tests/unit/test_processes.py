"""The freshness rule and the old-code scan (deploytools/remote/processes.py), on real
processes of this machine: forked-but-not-exec'd children, working directories reached
through symlinks, processes left in an older release."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploytools.remote import processes


@pytest.fixture()
def spawned() -> Iterator[list[int]]:
    """PIDs started by a test; every one is killed and reaped afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def start(cwd: Path, spawned: list[int], *args: str) -> int:
    proc = subprocess.Popen(list(args) or ["sleep", "30"], cwd=cwd)
    spawned.append(proc.pid)
    deadline = time.time() + 5
    while processes.facts(proc.pid)["cmdline"][:1] != [(list(args) or ["sleep"])[0]]:
        assert time.time() < deadline
        time.sleep(0.01)
    return proc.pid


def fleet_tree(tmp_path: Path) -> Path:
    """deploy_to reached through a symlink: link -> data/app, releases r1 and r2, current -> r2."""
    real = tmp_path / "data" / "app"
    for rid in ("r1", "r2"):
        (real / "releases" / rid / "pkg").mkdir(parents=True)
    (real / "current").symlink_to("releases/r2")
    (tmp_path / "link").symlink_to("data/app")
    return tmp_path / "link"


def test_a_fork_that_has_not_exec_d_is_not_settled(spawned: list[int]) -> None:
    child = os.fork()
    if child == 0:  # a fork of this process, as supervisord's child is before exec
        time.sleep(30)
        os._exit(0)
    spawned.append(child)
    me = processes.facts(os.getpid())
    assert not processes.exec_done(child, me)
    assert processes.settle(child, os.getpid(), timeout=0.2) is False


def test_an_exec_d_child_is_settled(tmp_path: Path, spawned: list[int]) -> None:
    pid = start(tmp_path, spawned)
    assert processes.exec_done(pid, processes.facts(os.getpid()))
    assert processes.settle(pid, os.getpid(), timeout=0.2)


def test_cwd_is_judged_by_directory_identity_through_a_symlinked_deploy_to(
        tmp_path: Path, spawned: list[int]) -> None:
    deploy_to = fleet_tree(tmp_path)
    pid = start(deploy_to / "releases" / "r2" / "pkg", spawned)
    # /proc shows the resolved path, the inventory the symlinked one: both are the same dir
    assert processes.facts(pid)["cwd"].startswith(str(tmp_path / "data" / "app"))
    assert processes.cwd_inside(pid, str(deploy_to / "current")) is True
    assert processes.cwd_inside(pid, str(deploy_to / "releases" / "r1")) is False
    assert processes.cwd_inside(pid, str(tmp_path / "missing")) is None


def test_judge_passes_a_fresh_process_and_names_an_old_one(
        tmp_path: Path, spawned: list[int]) -> None:
    deploy_to = fleet_tree(tmp_path)
    old = start(deploy_to / "releases" / "r1", spawned)
    time.sleep(0.2)  # well past the start-time tolerance
    switched_at = time.time()
    time.sleep(0.1)
    fresh = start(deploy_to / "releases" / "r2", spawned)
    current = str(deploy_to / "current")
    good = processes.judge(fresh, current, switched_at, os.getpid(), 1.0)
    assert good["problems"] == [] and good["unseen"] == []
    bad = processes.judge(old, current, switched_at, os.getpid(), 1.0)
    assert any("not in the current release" in p for p in bad["problems"])
    assert any("before current was switched" in p for p in bad["problems"])


def test_strays_names_a_process_of_an_older_release_and_nothing_else(
        tmp_path: Path, spawned: list[int]) -> None:
    deploy_to = fleet_tree(tmp_path)
    start(deploy_to / "releases" / "r2", spawned)  # current: fine
    old = start(deploy_to / "releases" / "r1" / "pkg", spawned)
    by_argument = start(tmp_path, spawned, sys.executable, "-c", "import time; time.sleep(30)",
                        str(tmp_path / "data/app/releases/r1/pkg/x.py"))
    found = processes.strays(str(deploy_to), "r2")["strays"]
    assert sorted(s["pid"] for s in found) == sorted([old, by_argument])
    assert all(s["runs"] == ["release r1"] for s in found)
    assert f"pid {old}" in processes.describe_stray(found[0]) or \
        f"pid {old}" in processes.describe_stray(found[1])
    for pid in (old, by_argument):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    spawned.clear()
    assert processes.strays(str(deploy_to), "r2")["strays"] == []


def test_places_tell_current_shared_partial_and_other_venvs_apart(tmp_path: Path) -> None:
    deploy_to = fleet_tree(tmp_path)
    venvs = tmp_path / "data/app/shared/venvs"
    (venvs / "aaa").mkdir(parents=True)
    (tmp_path / "data/app/releases/r2/.venv").symlink_to(venvs / "aaa")
    places = processes.Places(str(deploy_to), "r2")
    real = str(tmp_path / "data/app")
    assert places.foreign(f"{real}/releases/r1/app.py") == "release r1"
    assert places.foreign(f"{deploy_to}/releases/r1/app.py (deleted)") == "release r1"
    assert places.foreign(f"{real}/releases/r2/app.py") is None
    assert places.foreign(f"{real}/releases/.partial-r3/app.py") is None
    assert places.foreign(f"{real}/shared/venvs/aaa/lib/x.so") is None
    assert places.foreign(f"{real}/shared/venvs/bbb/lib/x.so") == "venv bbb"
    assert places.foreign(f"{real}/shared/log/app.log") is None
    assert places.foreign("/usr/lib/python3.11/os.py") is None


def test_agent_sessions_are_never_strays() -> None:
    assert processes.is_agent(["timeout", "-k", "10", "900", "python3", "-S", "-c", "...",
                               "ab12", "cached"])
    assert not processes.is_agent([sys.executable, "-m", "http.server"])
