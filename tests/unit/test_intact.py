"""The intact record: what it spares and what it still sees."""

from __future__ import annotations

import hashlib
import json
import os
import py_compile
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deploytools.remote import intact, verify
from deploytools.remote.releases import Layout


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
    assert verify.record_verified(layout, "r1") == 5

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


def clean_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Layout, Path]:
    """A release of three modules, one of them a symlink into shared/, with checked-hash
    pycs, verified and recorded as a clean tree."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    layout = Layout(str(tmp_path / "app"))
    release = Path(layout.release("r1"))
    (release / ".deploytools").mkdir(parents=True)
    (release / "pkg").mkdir()
    shared = tmp_path / "app" / "shared"
    shared.mkdir(parents=True)
    (shared / "local_settings.py").write_text("DEBUG = False\n")
    (release / "pkg" / "local_settings.py").symlink_to(shared / "local_settings.py")
    files = {"app.py": b"import pkg\n", "pkg/__init__.py": b"VALUE = 1\n",
             "tools/venv/settings.cfg": b"level = 1\n"}  # shipped where pycs are not looked for
    for name, data in files.items():
        (release / name).parent.mkdir(parents=True, exist_ok=True)
        (release / name).write_bytes(data)
    for name in ["app.py", "pkg/__init__.py", "pkg/local_settings.py"]:
        py_compile.compile(str(release / name), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    digests["pkg/local_settings.py"] = "symlink:" + str(shared / "local_settings.py")
    (release / ".deploytools" / "release.json").write_text(json.dumps(
        {"id": "r1", "files": digests}))
    assert verify.record_verified(layout, "r1") == 3
    assert intact.read_tree(layout, "r1")
    return layout, release


def trusted(layout: Layout) -> bool:
    rows = verify.unchanged_since_verified(layout, "r1", layout.manifest("r1") or {})
    assert rows is None or all(r["ok"] for r in rows)
    return rows is not None


def edit_keeping_mtime(path: Path) -> None:
    before = path.stat()
    data = path.read_bytes()
    path.write_bytes(data[:-1] + b"2" if data[-2:-1] != b"2" else data[:-2] + b"3\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("change", [
    "edit", "chmod", "new module", "stale pyc", "orphan pyc", "shared module edited",
    "symlink retargeted", "manifest", "file in a venv directory",
])
def test_a_clean_tree_is_trusted_until_anything_a_check_could_see_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """--skip-unchanged proves an unchanged tree by its fingerprint (no file read); every
    change the integrity or bytecode check would see, even one that restores mtime and
    size, takes it back to the full check."""
    layout, release = clean_release(tmp_path, monkeypatch)
    reads: list[str] = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: reads.append(str(f)) or
                        real_open(f, *a, **k))
    assert trusted(layout)
    assert not [r for r in reads if r.startswith(str(release)) and "/.deploytools/" not in r]
    monkeypatch.undo()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    time.sleep(intact.FINE_TICK)  # as after any real deploy: the record has settled
    pycache = release / "pkg" / "__pycache__"
    if change == "edit":
        edit_keeping_mtime(release / "pkg" / "__init__.py")
    elif change == "chmod":
        os.chmod(release / "app.py", 0o600)
    elif change == "new module":
        (release / "pkg" / "extra.py").write_text("X = 1\n")
    elif change == "stale pyc":
        other = tmp_path / "other.py"
        other.write_text("VALUE = 2\n")  # compiled over the shipped module's pyc
        py_compile.compile(str(other), cfile=str(next(pycache.glob("__init__.*.pyc"))),
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    elif change == "orphan pyc":
        (pycache / ("gone." + sys.implementation.cache_tag + ".pyc")).write_bytes(
            next(pycache.glob("__init__.*.pyc")).read_bytes())
    elif change == "shared module edited":
        edit_keeping_mtime(tmp_path / "app" / "shared" / "local_settings.py")
    elif change == "symlink retargeted":
        link = release / "pkg" / "local_settings.py"
        link.unlink()
        link.symlink_to(tmp_path / "app" / "shared" / "local_settings.py")
    elif change == "file in a venv directory":
        edit_keeping_mtime(release / "tools" / "venv" / "settings.cfg")
    elif change == "manifest":
        manifest = json.loads((release / ".deploytools" / "release.json").read_text())
        manifest["files"]["app.py"] = "0" * 64
        (release / ".deploytools" / "release.json").write_text(json.dumps(manifest))
    assert not trusted(layout)


def test_only_a_tree_verified_clean_and_still_while_read_gets_a_fingerprint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout, release = clean_release(tmp_path, monkeypatch)
    (release / "hotfix.py").write_text("X = 1\n")  # not shipped: the tree is not clean
    verify.record_verified(layout, "r1")
    assert intact.read_tree(layout, "r1") is None and intact.read_record(layout, "r1")
    (release / "hotfix.py").unlink()
    real = verify.integrity_changes

    def edited_while_read(*args: Any, **kwargs: Any) -> Any:
        found = real(*args, **kwargs)
        (release / "app.py").write_bytes(b"import os\n")  # after it was read
        return found

    monkeypatch.setattr(verify, "integrity_changes", edited_while_read)
    verify.record_verified(layout, "r1")
    assert intact.read_tree(layout, "r1") is None
    assert "app.py" not in intact.intact_files(layout, "r1")
