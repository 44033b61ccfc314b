"""The artifact: release ids, manifests and deltas from git or a directory."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from deploytools.artifact import build_artifact, make_release_id
from deploytools.errors import ConfigError
from deploytools.remote.bytecode import pyc_path
from deploytools.remote.releases import files_digest


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


def test_non_utf8_file_name_is_a_clear_planning_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "app.py").write_text("X = 1\n")
    with open(os.path.join(os.fsencode(repo), b"caf\xe9.txt"), "w") as fh:
        fh.write("x")
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    for source in ({"repo": str(repo)}, {"path": str(repo)}):
        with pytest.raises(ConfigError, match=r"file name b'caf\\xe9.txt' is not valid UTF-8"):
            build_artifact(dict(source, exclude=()), "HEAD" if "repo" in source else None)
    built = build_artifact({"path": str(repo), "exclude": ("caf*",)})
    assert set(built.manifest["files"]) == {"app.py"}
