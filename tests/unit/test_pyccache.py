"""The controller's pyc cache: a warm cache compiles nothing, and anything that could
change or damage a pyc, or let someone else plant one, is a miss."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from deploytools import artifact, precompile
from deploytools.archives import Member, file_member
from deploytools.precompile import Compiler
from deploytools.pyccache import PycCache, entry_key

SOURCES = {
    "app/__init__.py": b"",
    "app/models.py": b"class Model:\n    def save(self):\n        return 'saved'\n",
    "app/views.py": b"from app.models import Model\n\ndef index():\n    return Model().save()\n",
    "top.py": b"VALUE = 1\n",
}


class Release:
    """A manifest and its members, with every member read and every compile counted."""

    def __init__(self, sources: dict[str, bytes]) -> None:
        self.sources = sources
        self.files = {path: hashlib.sha256(body).hexdigest() for path, body in sources.items()}
        self.reads: list[str] = []

    def read(self, paths: list[str]) -> list[Member]:
        self.reads.extend(paths)
        return [file_member(path, self.sources[path]) for path in paths]


@pytest.fixture()
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every module compile_tree is asked to compile."""
    calls: list[str] = []
    real = precompile.bytecode.compile_tree

    def spy(root: str, **kwargs: object) -> dict:
        calls.extend(kwargs["files"])  # type: ignore[arg-type]
        return real(root, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(precompile.bytecode, "compile_tree", spy)
    return calls


@pytest.fixture()
def cache(tmp_path: Path) -> PycCache:
    return PycCache(tmp_path / "cache" / "pyc")


def run(release: Release, cache: PycCache | None, mode: str = "checked-hash"
        ) -> dict[str, bytes]:
    """One deploy's compile of the whole release (a fresh Compiler, as every run has)."""
    compiler = Compiler(release.files, release.read, cache)
    try:
        return compiler.pycs(list(release.files), mode)
    finally:
        compiler.close()


def entries(cache: PycCache) -> list[Path]:
    return sorted(p for p in cache.root.rglob("*") if p.is_file())


@pytest.mark.parametrize("mode", ["checked-hash", "unchecked-hash"])
def test_warm_cache_compiles_and_reads_nothing(cache: PycCache, compiled: list[str],
                                               mode: str) -> None:
    cold = run(Release(SOURCES), cache, mode)
    assert sorted(compiled) == sorted(SOURCES)
    assert len(entries(cache)) == len(SOURCES)
    compiled.clear()
    release = Release(SOURCES)
    assert run(release, cache, mode) == cold
    assert compiled == [] and release.reads == []


def test_cached_pycs_equal_fresh_ones(cache: PycCache) -> None:
    run(Release(SOURCES), cache)
    assert run(Release(SOURCES), cache) == run(Release(SOURCES), None)


def test_changed_source_misses(cache: PycCache, compiled: list[str]) -> None:
    run(Release(SOURCES), cache)
    compiled.clear()
    edited = Release({**SOURCES, "top.py": b"VALUE = 2\n"})
    pycs = run(edited, cache)
    assert compiled == ["top.py"] and edited.reads == ["top.py"]
    assert pycs == run(edited, None)


def test_moved_source_misses(cache: PycCache, compiled: list[str]) -> None:
    """The path is in the code object (co_filename), so a moved module is compiled again."""
    run(Release(SOURCES), cache)
    compiled.clear()
    run(Release({**SOURCES, "other.py": SOURCES["top.py"]}), cache)
    assert compiled == ["other.py"]


def test_other_invalidation_mode_misses(cache: PycCache, compiled: list[str]) -> None:
    checked = run(Release(SOURCES), cache, "checked-hash")
    compiled.clear()
    unchecked = run(Release(SOURCES), cache, "unchecked-hash")
    assert sorted(compiled) == sorted(SOURCES)
    assert all(unchecked[pyc][4:8] == b"\x01\x00\x00\x00" for pyc in unchecked)
    assert all(checked[pyc][4:8] == b"\x03\x00\x00\x00" for pyc in checked)


def test_timestamp_mode_is_not_cached(cache: PycCache, compiled: list[str]) -> None:
    run(Release(SOURCES), cache, "timestamp")
    run(Release(SOURCES), cache, "timestamp")
    assert len(compiled) == 2 * len(SOURCES)
    assert entries(cache) == []


@pytest.mark.parametrize("damage", [
    lambda data: data[:40],  # torn write
    lambda data: data[:-1] + bytes([data[-1] ^ 1]),  # one flipped bit in the code
    lambda data: b"",
])
def test_damaged_entry_is_ignored_and_replaced(cache: PycCache, compiled: list[str],
                                               damage: Callable[[bytes], bytes]) -> None:
    fresh = run(Release(SOURCES), cache)
    entry = cache.root.joinpath(*_entry_parts("top.py", SOURCES["top.py"]))
    entry.write_bytes(damage(entry.read_bytes()))
    compiled.clear()
    assert run(Release(SOURCES), cache) == fresh
    assert compiled == ["top.py"]
    compiled.clear()
    run(Release(SOURCES), cache)
    assert compiled == []  # replaced by a good one


def _entry_parts(path: str, body: bytes, mode: str = "checked-hash") -> tuple[str, ...]:
    key = entry_key(hashlib.sha256(body).hexdigest(), path, mode)
    return importlib.util.MAGIC_NUMBER.hex(), mode, key[:2], key


def test_group_writable_directory_is_not_used(cache: PycCache, compiled: list[str]) -> None:
    run(Release(SOURCES), cache)
    mode_dir = cache.root.joinpath(*_entry_parts("top.py", b"")[:2])
    mode_dir.chmod(0o770)
    compiled.clear()
    run(Release(SOURCES), cache)
    assert sorted(compiled) == sorted(SOURCES)


def test_foreign_writable_cache_dir_is_not_used(cache: PycCache, compiled: list[str]) -> None:
    cache.root.parent.mkdir(parents=True)
    cache.root.parent.chmod(0o777)
    run(Release(SOURCES), cache)
    assert not cache.root.exists()


def test_symlinked_cache_dir_is_not_used(tmp_path: Path, compiled: list[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    warm = PycCache(elsewhere)
    run(Release(SOURCES), warm)
    (tmp_path / "cache").mkdir(mode=0o700)
    (tmp_path / "cache" / "pyc").symlink_to(elsewhere)
    compiled.clear()
    run(Release(SOURCES), PycCache(tmp_path / "cache" / "pyc"))
    assert sorted(compiled) == sorted(SOURCES)


def test_symlinked_entry_is_not_followed(cache: PycCache, compiled: list[str],
                                         tmp_path: Path) -> None:
    run(Release(SOURCES), cache)
    entry = cache.root.joinpath(*_entry_parts("top.py", SOURCES["top.py"]))
    planted = tmp_path / "planted"
    planted.write_bytes(entry.read_bytes())
    entry.unlink()
    entry.symlink_to(planted)
    compiled.clear()
    run(Release(SOURCES), cache)
    assert compiled == ["top.py"]
    assert not entry.is_symlink()  # replaced by a regular file, the target untouched
    assert planted.exists()


def test_least_recently_used_entries_are_pruned(tmp_path: Path) -> None:
    cache = PycCache(tmp_path / "pyc")
    run(Release(SOURCES), cache)
    sizes = {p.name: p.stat().st_size for p in entries(cache)}
    old = cache.root.joinpath(*_entry_parts("app/models.py", SOURCES["app/models.py"]))
    os.utime(old, (1, 1))
    cache.limit = sum(sizes.values()) + 10  # room for a little more than today's entries
    run(Release({**SOURCES, "new.py": b"X = 1\n" * 50}), cache)
    remaining = entries(cache)
    assert old not in remaining  # the least recently used goes first
    assert cache.root.joinpath(*_entry_parts("new.py", b"X = 1\n" * 50)) in remaining
    assert sum(p.stat().st_size for p in remaining) <= cache.limit * 0.8


def test_tests_do_not_use_the_users_cache() -> None:
    assert not str(artifact.CACHE_DIR).startswith(str(Path("~/.cache").expanduser()))
    assert os.environ["XDG_CACHE_HOME"] == str(artifact.CACHE_DIR.parent)  # for `inv` too


def test_artifacts_cache_under_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.setattr(artifact, "CACHE_DIR", tmp_path / "cache")
    source = tmp_path / "src"
    source.mkdir()
    (source / "mod.py").write_text("A = 1\n")
    built = artifact.build_artifact({"path": str(source)})
    try:
        built.pycs(["mod.py"], "checked-hash")
    finally:
        built.close()
    assert [p.parent.parent.name for p in (artifact.CACHE_DIR / "pyc").rglob("*")
            if p.is_file()] == ["checked-hash"]
