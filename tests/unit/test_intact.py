"""The intact record: what it spares and what it still sees."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from deploytools.remote import intact
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
