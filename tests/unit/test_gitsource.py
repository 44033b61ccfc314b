"""Planning from git: digests remembered between runs must give exactly the manifest a
full `git archive` gives, read only what changed, and never survive a change in what
decides the archived bytes (attributes, export-subst)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from deploytools import artifact, gitsource
from deploytools.artifact import build_artifact


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str = "change") -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", message)


@pytest.fixture()
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(artifact, "CACHE_DIR", tmp_path / "cache")
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    commit(path, {f"pkg/m{i}.py": f"VALUE = {i}\n" for i in range(80)} | {"app.py": "A = 1\n"})
    return path


@pytest.fixture()
def reads(monkeypatch: pytest.MonkeyPatch) -> list[list[str] | None]:
    """Every `git archive` the plan makes: the paths asked for (None: the whole tree)."""
    calls: list[list[str] | None] = []
    real = gitsource.archive

    def spy(tree: gitsource.GitTree, paths: list[str] | None = None) -> list:
        calls.append(None if paths is None else sorted(paths))
        return real(tree, paths)

    monkeypatch.setattr(gitsource, "archive", spy)
    return calls


def fresh_manifest(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The manifest as a first run computes it (no memory)."""
    monkeypatch.setattr(artifact, "CACHE_DIR", tmp_path / f"empty-{len(list(tmp_path.iterdir()))}")
    return build_artifact({"repo": str(repo)}).files


def test_a_one_file_change_reads_one_file_and_plans_the_same_manifest(
        repo: Path, reads: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_artifact({"repo": str(repo)})
    assert reads == [None]  # nothing known yet: the whole tree, once
    commit(repo, {"pkg/m3.py": "VALUE = 'changed'\n", "pkg/new.py": "NEW = 1\n"})
    (repo / "pkg" / "m5.py").unlink()
    commit(repo, {})
    reads.clear()
    second = build_artifact({"repo": str(repo)})
    assert reads == [["pkg/m3.py", "pkg/new.py"]]
    assert second.files == fresh_manifest(repo, tmp_path, monkeypatch)
    assert "pkg/m5.py" not in second.files and second.files["app.py"] == first.files["app.py"]

    reads.clear()  # bodies only on demand: the changed files for a host that has the rest
    changed, removed = second.delta(first.files)
    assert sorted(changed) == ["pkg/m3.py", "pkg/new.py"] and removed == ["pkg/m5.py"]
    size, stream = second.archive(sorted(changed))
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream())), mode="r:gz") as tar:
        bodies = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    assert bodies == {"pkg/m3.py": b"VALUE = 'changed'\n", "pkg/new.py": b"NEW = 1\n"}
    assert reads == []  # read while planning already
    second.archive(["app.py"])
    assert reads == [["app.py"]]
    second.close()
    first.close()


def test_attributes_decide_what_ships_and_reset_the_memory(
        repo: Path, reads: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_artifact({"repo": str(repo)})
    commit(repo, {".gitattributes": "pkg/m1.py export-ignore\n"})
    reads.clear()
    planned = build_artifact({"repo": str(repo)})
    assert reads == [None]  # new attributes: nothing remembered applies
    assert "pkg/m1.py" not in planned.files and "pkg/m2.py" in planned.files
    assert planned.files == fresh_manifest(repo, tmp_path, monkeypatch)


def test_export_subst_is_never_carried_across_commits(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit(repo, {".gitattributes": "version.txt export-subst\n",
                  "version.txt": "$Format:%H$\n"})
    first = build_artifact({"repo": str(repo)})
    commit(repo, {"app.py": "A = 2\n"})
    second = build_artifact({"repo": str(repo)})
    assert second.files["version.txt"] != first.files["version.txt"]
    assert second.files == fresh_manifest(repo, tmp_path, monkeypatch)


def test_a_wrong_memory_is_caught_before_anything_ships(
        repo: Path, tmp_path: Path) -> None:
    build_artifact({"repo": str(repo)})
    (memory,) = (tmp_path / "cache" / "digests").iterdir()
    memory.write_text(memory.read_text().replace(
        build_artifact({"repo": str(repo)}).files["app.py"], "0" * 64))
    planned = build_artifact({"repo": str(repo)})
    assert planned.files["app.py"] == "0" * 64
    with pytest.raises(Exception, match="does not match the planned manifest"):
        planned.archive(["app.py"])


def test_a_git_url_is_mirrored_and_planned_like_the_local_repository(
        repo: Path, reads: list) -> None:
    url = f"file://{repo}"
    first = build_artifact({"repo": url})
    assert first.files == build_artifact({"repo": str(repo)}).files
    commit(repo, {"pkg/m9.py": "VALUE = 'nine'\n"})
    reads.clear()
    second = build_artifact({"repo": url})  # fetched into the mirror, one file read
    assert second.revision == git(repo, "rev-parse", "HEAD")
    assert reads == [["pkg/m9.py"]]
    assert second.files == build_artifact({"repo": str(repo)}).files


TARINFO_FIELDS = ("name", "type", "size", "mode", "uid", "gid", "mtime", "linkname",
                  "uname", "gname")


def test_git_archives_are_read_as_tarfile_reads_them(repo: Path) -> None:
    """The direct ustar reader gives what tarfile gives, member for member (files,
    executables, symlinks, directories, a name that needs the ustar prefix and a
    non-ASCII one), and hands anything it does not know to tarfile."""
    (repo / "bin").mkdir()
    (repo / "bin" / "run").write_text("#!/bin/sh\n")
    (repo / "bin" / "run").chmod(0o755)
    (repo / "link.py").symlink_to("app.py")
    deep = "/".join(["d" * 30] * 4) + "/module.py"  # > 100 bytes: split into the prefix
    commit(repo, {deep: "DEEP = 1\n", "café/naïve.py": "X = 1\n"})
    data = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", "HEAD"],
                          capture_output=True, check=True).stdout

    def fields(members: list) -> list:
        return [(tuple(getattr(info, f) for f in TARINFO_FIELDS), body)
                for info, body in members]

    direct = gitsource._parse_ustar(data)
    assert direct is not None and fields(direct) == fields(gitsource._parse_with_tarfile(data))
    assert {info.name for info, _ in direct} >= {deep, "café/naïve.py", "link.py", "bin/run"}
    assert fields(gitsource._parse(data)) == fields(direct)

    long_name = "x" * 120 + ".py"  # no prefix split possible: git writes a pax header
    commit(repo, {long_name: "LONG = 1\n"})
    data = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", "HEAD"],
                          capture_output=True, check=True).stdout
    assert gitsource._parse_ustar(data) is None
    assert long_name in {info.name for info, _ in gitsource._parse(data)}
    corrupt = bytearray(data)
    corrupt[1024 + 10] ^= 1  # a header byte: its checksum no longer matches
    assert gitsource._parse_ustar(bytes(corrupt)) is None
