"""The fleet varies like real fleets (issue 11): every sandbox Variant goes through
deploy, verify, status, check, --skip-unchanged and rollback, and the ways real setups
hide old code (revision health, surviving gunicorn workers, a server started by hand
from an older release, a second interpreter's bytecode) are caught.

Assertions read the `--json -` report and the hosts' own state (supervisord, /proc),
never progress wording.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploytools.remote.intact import read_tree
from deploytools.remote.releases import Layout
from deploytools.sandbox import (
    PYPY,
    Fleet,
    SimHost,
    Variant,
    start_variant_fleet,
    write_variant_app,
)
from tests.support.apprepo import AppRepo
from tests.support.bytecode import write_timestamp_pyc
from tests.support.cli import Cli
from tests.support.fleets import require_sshd
from tests.support.layout import current_release, release_dirs
from tests.support.procfs import children
from tests.support.variants import VARIANTS


@pytest.fixture(scope="module")
def vfleet() -> Iterator[Fleet]:
    require_sshd()
    fleet = start_variant_fleet(VARIANTS)
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="module")
def vrepo(tmp_path_factory: pytest.TempPathFactory) -> AppRepo:
    repo = AppRepo(tmp_path_factory.mktemp("vapp"))
    repo.git("init", "-q", "-b", "main")
    commit(repo, "v1")
    return repo


def commit(repo: AppRepo, version: str) -> str:
    write_variant_app(repo.path, version)
    repo.git("add", "-A")
    repo.git("-c", "user.email=t@example.com", "-c", "user.name=tests", "commit", "-q",
             "--allow-empty", "-m", version)
    return repo.git("rev-parse", "HEAD")


@pytest.fixture(scope="module")
def vcli(vfleet: Fleet, vrepo: AppRepo, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    inventory = tmp_path_factory.mktemp("vinv") / "inventory.yaml"
    vfleet.write_inventory(inventory, source={"repo": str(vrepo.path)})
    return Cli(inventory)


def run_json(cli: Cli, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run a task with `--json -`; returns exit code, report and stderr (for messages)."""
    done = cli(*args, "--json", "-")
    try:
        document = json.loads(done.stdout)
    except ValueError:
        document = {}
    return done.returncode, document, done.stderr


def host_report(document: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in document.get("hosts", []) if h.get("name") == name)


def failures(document: dict[str, Any], name: str) -> str:
    """Every failing check's detail on one host, joined (for naming assertions)."""
    checks = host_report(document, name).get("checks") or []
    return " | ".join(f"{c['check']}: {c['detail']}" for c in checks if not c["ok"])


def supervised_pids(sim: SimHost) -> dict[str, int]:
    with sim.supervisor_rpc() as rpc:
        return {f"{i['group']}:{i['name']}": int(i["pid"])
                for i in rpc.supervisor.getAllProcessInfo() if i["pid"]}


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def ok(cli: Cli, *args: str) -> dict[str, Any]:
    code, document, stderr = run_json(cli, *args)
    assert code == 0, (args, stderr[-3000:])
    return document


# stopasgroup off leaves old workers behind on every restart: verify must fail there
# (test_gunicorn_workers_surviving_without_stopasgroup_are_named), so it is not a
# "healthy variant"
HEALTHY = [v for v in VARIANTS if not v.stubborn_workers]


def wait_for_fingerprint(sim: Any, release: str) -> None:
    """The host verifies a release in the background after its deploy and records the
    tree's fingerprint in the SSH user's cache; --skip-unchanged trusts only that."""
    layout = Layout(str(sim.deploy_to))
    deadline = time.monotonic() + 20
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(sim.home))
        while not read_tree(layout, release) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert read_tree(layout, release), f"{sim.name}: no fingerprint was recorded"


@pytest.mark.parametrize("variant", HEALTHY, ids=[v.name for v in HEALTHY])
def test_variant_deploys_verifies_skips_and_rolls_back(vcli: Cli, vfleet: Fleet,
                                                      vrepo: AppRepo, variant: Variant) -> None:
    sim = vfleet.host(variant.name)
    hosts = ("--hosts", variant.name)
    ok(vcli, "deploy", *hosts)
    first = current_release(sim.deploy_to)
    for task in ("verify", "status", "check"):
        ok(vcli, task, *hosts)
    before = supervised_pids(sim)
    assert set(before) >= set(["app:app"] + (
        [f"worker:worker_{i}" for i in range(variant.worker_procs)]
        if variant.worker_procs > 1 else []))
    wait_for_fingerprint(sim, first)
    code, _, stderr = run_json(vcli, "deploy", *hosts, "--skip-unchanged")
    assert code == 0, stderr[-3000:]
    assert "by the fingerprint" in stderr  # its files proven unchanged without a read
    assert supervised_pids(sim) == before
    assert current_release(sim.deploy_to) == first

    commit(vrepo, f"{variant.name}-v2")
    cost = host_report(ok(vcli, "deploy", *hosts), variant.name)["cost"]
    assert current_release(sim.deploy_to) != first
    # the agent measures itself on every kind of host (PyPy, symlinked deploy_to, ...)
    assert cost["prepare"]["agent_cpu_s"] > 0 and cost["prepare"]["files_written"] >= 1
    assert cost["prepare"]["sshd_cpu_s"] is not None
    assert cost["activate"]["supervisord_cpu_s"] is not None
    ok(vcli, "rollback", *hosts)
    assert current_release(sim.deploy_to) == first
    ok(vcli, "verify", *hosts)


def test_revision_health_passes_and_a_different_revision_is_named(vcli: Cli,
                                                                   vfleet: Fleet) -> None:
    sim = vfleet.host("s0")
    ok(vcli, "deploy", "--hosts", "s0")
    ok(vcli, "verify", "--hosts", "s0")
    release = sim.deploy_to / "current"
    revision = (release / "REVISION").read_text().strip()
    wrong = "0123456789abcdef0123456789abcdef01234567"
    env = release / ".env"
    env.write_text(f"REPORT_REVISION={wrong}\n")  # the app reads it on every request
    try:
        code, document, _ = run_json(vcli, "verify", "--hosts", "s0")
        assert code == 7
        detail = failures(document, "s0")
        assert wrong in detail and revision in detail, detail
    finally:
        env.unlink()
    ok(vcli, "verify", "--hosts", "s0")


def test_gunicorn_workers_surviving_without_stopasgroup_are_named(vcli: Cli, vfleet: Fleet,
                                                                   vrepo: AppRepo) -> None:
    ok(vcli, "deploy", "--hosts", "gu,guoff")
    master = supervised_pids(vfleet.host("guoff"))["app:app"]
    old_workers = children(master)
    assert len(old_workers) == 2
    commit(vrepo, "gunicorn-v2")
    try:
        code, document, stderr = run_json(vcli, "deploy", "--hosts", "gu,guoff")
        survivors = [p for p in old_workers if Path(f"/proc/{p}").exists()]
        assert survivors == old_workers  # the variant really leaves them behind
        code, document, _ = run_json(vcli, "verify", "--hosts", "gu,guoff")
        assert code == 7
        detail = failures(document, "guoff")
        for pid in old_workers:
            assert str(pid) in detail, detail
        assert not failures(document, "gu")  # stopasgroup on: nothing survives
    finally:
        kill_pids(old_workers)
    ok(vcli, "verify", "--hosts", "gu")


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def test_a_server_started_by_hand_from_an_older_release_is_named(vcli: Cli, vfleet: Fleet,
                                                                  vrepo: AppRepo) -> None:
    sim = vfleet.host("s3")
    ok(vcli, "deploy", "--hosts", "s3")
    commit(vrepo, "hand-v2")
    ok(vcli, "deploy", "--hosts", "s3")
    current = current_release(sim.deploy_to)
    old = next(p for p in reversed(release_dirs(sim.deploy_to)) if p.name != current)
    server = subprocess.Popen(
        ["/usr/bin/python3", "-m", "http.server", "--bind", sim.address,
         str(free_port(sim.address))], cwd=old, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "HOME": str(sim.home)})
    try:
        time.sleep(0.3)
        code, document, _ = run_json(vcli, "verify", "--hosts", "s3")
        assert code == 7
        detail = failures(document, "s3")
        assert str(server.pid) in detail and old.name in detail, detail
    finally:
        server.kill()
        server.wait()
    ok(vcli, "verify", "--hosts", "s3")


def plant_pyc(python: str, source: Path, pyc: Path, *, same_stamp_other_code: bool) -> None:
    """Write `pyc` with `python` in timestamp mode; with same_stamp_other_code the code
    comes from an edited copy of the same size and mtime."""
    text = source.read_text()
    edited = text.replace("hello from", "HELLO FROM") if same_stamp_other_code else text
    assert len(edited) == len(text)
    write_timestamp_pyc(python, edited, pyc, stamp_from=source)


def test_pypy_host_checks_bytecode_with_its_own_interpreter(vcli: Cli, vfleet: Fleet) -> None:
    sim = vfleet.host("pypy")
    ok(vcli, "deploy", "--hosts", "pypy")
    ok(vcli, "verify", "--hosts", "pypy")
    views = sim.deploy_to / "current" / "sampleapp" / "views.py"
    cache = views.parent / "__pycache__"
    assert (cache / "views.pypy39.pyc").exists()  # compiled for PyPy's tag on the host

    cpython = cache / "views.cpython-311.pyc"
    plant_pyc("/usr/bin/python3", views, cpython, same_stamp_other_code=True)
    try:
        document = ok(vcli, "verify", "--hosts", "pypy")
        bytecode = next(c for c in host_report(document, "pypy")["checks"]
                        if c["check"] == "bytecode")
        assert bytecode["ok"] and "other interpreters" in bytecode["detail"]
    finally:
        cpython.unlink()

    pypy_pyc = cache / "views.pypy39.pyc"
    saved = pypy_pyc.read_bytes()
    plant_pyc(PYPY, views, pypy_pyc, same_stamp_other_code=True)
    try:
        code, document, _ = run_json(vcli, "verify", "--hosts", "pypy")
        assert code == 7
        assert "views.pypy39.pyc" in failures(document, "pypy")
    finally:
        pypy_pyc.write_bytes(saved)
    ok(vcli, "verify", "--hosts", "pypy")


def test_variant_hosts_really_differ(vfleet: Fleet) -> None:
    """The sandbox plumbing itself: the variants are what they claim to be."""
    link = vfleet.host("link").deploy_to
    assert link.is_symlink() and os.readlink(link) == "data/app"
    assert shutil.which("pypy3") or os.access(PYPY, os.X_OK)
    conf = vfleet.host("guoff").supervisor_conf.read_text()
    assert "stopasgroup=false" in conf and "gunicorn_stubborn.py" in conf
    assert "startsecs=0" in vfleet.host("s0").supervisor_conf.read_text()
    assert "numprocs=2" in vfleet.host("s3").supervisor_conf.read_text()
