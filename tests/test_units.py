"""Fast unit tests of pure logic: batching, failure budgets, exclusion, artifacts and their
deltas, secret masking, release layout rules, dry-run descriptions, health evaluation."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest

from deploytools import dryrun
from deploytools.artifact import build_artifact, make_release_id
from deploytools.errors import ConfigError
from deploytools.inventory import parse_inventory
from deploytools.masking import mask_secrets
from deploytools.remote import health, intact
from deploytools.remote.bytecode import pyc_path
from deploytools.remote.releases import Layout, files_digest
from deploytools.rollout import RolloutPolicy, batches, parse_count, parse_serial
from deploytools.sources import excluded
from deploytools.transport import BOOTSTRAP, HostConnection


def test_serial_and_batches() -> None:
    assert parse_serial(None, 7) == 7
    assert parse_serial("2", 7) == 2
    assert parse_serial("25%", 8) == 2
    assert parse_serial("10%", 3) == 1  # never zero
    for bad in ("0%", "-1", "x", "150%"):
        with pytest.raises(ConfigError):
            parse_serial(bad, 4)
    hosts = list("abcde")
    assert batches(hosts, 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert batches(hosts, 2, canary=True) == [["a"], ["b", "c"], ["d", "e"]]
    assert batches(hosts, 5, canary=True) == [["a"], ["b", "c", "d", "e"]]


def test_failure_budget_and_policy() -> None:
    assert parse_count("0", 10, "--max-failures") == 0
    assert parse_count("20%", 10, "--max-failures") == 2
    assert parse_count("1", 10, "--max-failures") == 1
    with pytest.raises(ConfigError, match="--on-failure"):
        RolloutPolicy(on_failure="panic")


def test_exclusion_rules() -> None:
    assert excluded(".git/config", ())
    assert excluded("pkg/__pycache__/m.cpython-311.pyc", ())
    assert excluded("legacy.pyc", ())
    assert excluded("logs/app.log", ("*.log",))
    assert excluded("tests/test_x.py", ("tests/",))
    assert excluded("docs/build/index.html", ("docs/build",))
    assert not excluded("pkg/module.py", ("*.log", "tests/"))
    assert not excluded("contests/x.py", ("tests/",))


def test_release_ids_sort_by_time() -> None:
    assert make_release_id(0, "3f2a9c1deadbeef") == "19700101T000000Z-3f2a9c1"
    assert make_release_id(0, None) == "19700101T000000Z"
    ids = [make_release_id(t, "a" * 40) for t in (100, 5, 86400 * 400)]
    assert sorted(ids) == [ids[1], ids[0], ids[2]]
    assert pyc_path("pkg/mod.py", "cpython-311") == "pkg/__pycache__/mod.cpython-311.pyc"
    assert pyc_path("top.py", "cpython-311") == "__pycache__/top.cpython-311.pyc"


def make_repo(path: Path) -> None:
    (path / "pkg").mkdir(parents=True)
    (path / "pkg" / "__init__.py").write_text("")
    (path / "pkg" / "a.py").write_text("A = 1\n")
    (path / "pkg" / "__pycache__").mkdir()
    (path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"stale")
    (path / "app.log").write_text("noise")
    (path / "link").symlink_to("pkg/a.py")
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "add", "-A", "-f", "pkg/a.py", "pkg/__init__.py",
                    "link", "app.log"], check=True)
    subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qm", "one"], check=True)


def test_artifact_from_git_and_its_deltas(tmp_path: Path) -> None:
    make_repo(tmp_path)
    artifact = build_artifact({"repo": str(tmp_path), "ref": "HEAD", "exclude": ["*.log"]})
    try:
        assert set(artifact.files) == {"pkg/__init__.py", "pkg/a.py", "link"}
        assert artifact.files["link"] == "symlink:pkg/a.py"
        assert artifact.revision == subprocess.run(
            ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
            text=True).stdout.strip()
        assert artifact.release_id.endswith("-" + artifact.revision[:7])
        size, stream = artifact.archive()
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream())), mode="r:*") as archive:
            assert "pkg/a.py" in archive.getnames()
        base = dict(artifact.files, **{"old.py": "0" * 64})
        base["pkg/a.py"] = "f" * 64  # differs: must be sent
        changed, removed = artifact.delta(base)
        assert set(changed) == {"pkg/a.py", "link"}  # symlinks always travel
        assert removed == ["old.py"]
        size, stream = artifact.archive(list(changed))
        data = b"".join(stream())
        assert len(data) == size < 2048
        pycs = artifact.pycs(["pkg/a.py"], "checked-hash")
        (name, body), = pycs.items()
        assert name.startswith("pkg/__pycache__/a.") and body[4:8] == b"\x03\x00\x00\x00"
        assert files_digest(artifact.files) == files_digest(dict(artifact.files))
    finally:
        artifact.close()
    with pytest.raises(ConfigError, match="not found"):
        build_artifact({"repo": str(tmp_path), "ref": "no-such-ref"})


def test_artifact_from_directory(tmp_path: Path) -> None:
    make_repo(tmp_path)
    artifact = build_artifact({"path": str(tmp_path), "exclude": ["*.log"]})
    try:
        assert set(artifact.files) == {"pkg/__init__.py", "pkg/a.py", "link"}
        assert artifact.revision.startswith("sha256:")
    finally:
        artifact.close()


def test_secrets_are_masked() -> None:
    assert mask_secrets("GET https://u:hunter2@h/x") == "GET https://u:***@h/x"
    assert mask_secrets("http://h/health?token=abc&x=1") == "http://h/health?token=***&x=1"
    assert "s3cr3t" not in mask_secrets("url http://h/?api_key=s3cr3t failed")


def test_layout_refuses_odd_release_ids(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    for bad in ("../x", "", ".hidden", "a/b", ".."):
        with pytest.raises(ValueError):
            layout.release(bad)


def test_layout_cleanup_keeps_current_previous_and_skips_failed(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    layout.ensure()
    for name in ("r1", "r2", "r3", "r4", "r5", "r6"):
        os.makedirs(layout.release(name))
    layout.mark_failed("r2", "boom")
    layout.mark_failed("r6", "newer failure")
    layout.switch("r5")
    removed = layout.cleanup(keep=2)
    assert sorted(removed) == ["r1", "r2", "r3"]
    assert layout.release_ids() == ["r4", "r5", "r6"]  # newer failed kept for post-mortem
    assert os.readlink(layout.current) == "releases/r5"
    owner = {"token": "t1", "user": "me"}
    assert layout.acquire_lock(owner) is None
    assert layout.acquire_lock({"token": "t2"})["token"] == "t1"
    assert not layout.release_lock("t2") and layout.release_lock("t1")


def test_health_evaluation() -> None:
    spec = {"expect_status": 200, "expect_json": {"release": "r9", "app.ok": "True"}}
    assert health.evaluate(200, b'{"release": "r9", "app": {"ok": true}}', spec) is None
    assert "r8" in health.evaluate(200, b'{"release": "r8", "app": {"ok": true}}', spec)
    assert "HTTP 500" in health.evaluate(500, b"", spec)
    assert "not JSON" in health.evaluate(200, b"<html>", spec)
    assert health.evaluate(200, b"all good", {"expect_text": "good"}) is None
    values = {"host": "10.0.0.1", "release": "r9"}
    assert health.expand_placeholders({"u": "http://{host}/{release}/{x}"}, values) == \
        {"u": "http://10.0.0.1/r9/{x}"}


def test_dry_run_descriptions() -> None:
    lines = dryrun.describe({"op": "activate", "deploy_to": "/srv/a", "target": "r2",
                             "fallback": "r1", "programs": ["web", "worker"],
                             "health": {"url": "http://{host}:8000/h"},
                             "values": {"host": "10.1.1.1"},
                             "hooks": {"after_restart": [{"run": "warm", "run_once": True}]},
                             "run_once_here": False})
    assert lines[0] == "switch /srv/a/current -> releases/r2 (atomic rename)"
    assert "health check http://10.1.1.1:8000/h" in lines
    assert not any("warm" in line for line in lines)  # run_once elsewhere
    assert lines[-1].startswith("on failure: switch back to r1")
    assert dryrun.pretend({"op": "activate", "target": "r2"})["outcome"] == "healthy"


def test_remote_command_is_quoted() -> None:
    inv = parse_inventory({
        "defaults": {"deploy_to": "/srv/a b", "python": "/opt/py thon/bin/python3",
                     "source": {"path": "."}, "supervisor": {"programs": ["w"], "sudo": True}},
        "groups": {"g": {"hosts": {"h": {"host": "127.0.0.1"}}}}})
    command = HostConnection(inv.hosts["h"]).agent_command(cached=False)
    assert command.startswith("sudo -n timeout ")
    argv = shlex.split(command)
    assert argv[argv.index("-c") - 2:argv.index("-c")] == ["/opt/py thon/bin/python3", "-S"]
    assert argv[argv.index("-c") + 1] == BOOTSTRAP
    assert argv[-1] == "inline"


def test_intact_record_spares_hashing_and_still_sees_every_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded files whose stat (ctime included) is unchanged are trusted without being
    read; a chmod, an extra hard link or an edit that restores the mtime are rehashed."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    layout = Layout(str(tmp_path / "app"))
    release = Path(layout.release("r1"))
    (release / ".deploytools").mkdir(parents=True)
    files = {f"m{i}.py": f"VALUE = {i}\n".encode() for i in range(5)}
    for name, data in files.items():
        (release / name).write_bytes(data)
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    (release / ".deploytools" / "release.json").write_text(json.dumps(
        {"id": "r1", "files": digests}))
    assert intact.record_intact(layout, "r1") == 5

    hashed: list[str] = []
    real_sha256 = intact.sha256
    monkeypatch.setattr(intact, "sha256", lambda path: hashed.append(path) or real_sha256(path))
    assert intact.intact_files(layout, "r1") == digests and hashed == []

    os.chmod(release / "m0.py", 0o644)  # same content, new ctime: rehashed, still intact
    os.link(release / "m1.py", tmp_path / "other-link")  # link count: rehashed too
    edited = release / "m2.py"
    before = edited.stat()
    edited.write_bytes(b"VALUE = 9\n")  # same size, mtime put back
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
    found = intact.intact_files(layout, "r1")
    assert sorted(Path(p).name for p in hashed) == ["m0.py", "m1.py", "m2.py"]
    assert found == {k: v for k, v in digests.items() if k != "m2.py"}
    assert intact.intact_files(Layout(str(tmp_path / "other")), "r1") == {}  # no release
