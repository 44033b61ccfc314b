"""Tests for deploytools.remote.bytecode, on real pycs written by py_compile and CPython.

No mocks: every stale case is produced the way it happens in the field (same-length edits
with preserved mtimes, deleted sources, copied sourceless pycs), and where the claim is
"Python would run this" a subprocess interpreter proves it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deploytools.remote import bytecode
from deploytools.remote.bytecode import (
    clear_tree,
    compile_tree,
    parse_pyc_header,
    scan_tree,
)

TAG = sys.implementation.cache_tag
MAGIC = importlib.util.MAGIC_NUMBER
MODES = ("timestamp", "checked-hash", "unchecked-hash")

# Exercises what a naive bytecode comparison gets wrong: a __future__ import (compile flags),
# nested code objects, frozenset/float/complex constants, docstrings and asserts (-O levels).
RICH_MODULE = '''\
"""Module docstring."""
from __future__ import annotations

import os

NEG_ZERO = -0.0
CPLX = 1.5j


def outer(a: int, *, b: str = "x") -> list[int]:
    """Function docstring."""
    assert a >= 0, "negative"

    def inner() -> complex:
        return a + CPLX

    return [n for n in range(a) if n in {1, 2, 3}] + [int(inner().real)]


class Thing:
    """Class docstring."""

    names = frozenset({"alpha", "beta"})

    def method(self) -> tuple[frozenset[str], str]:
        return self.names, os.sep
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def make_tree(root: Path) -> Path:
    """A small app: package, subpackage, a rich module and a trivial one."""
    write(root / "app" / "__init__.py", "")
    write(root / "app" / "rich.py", RICH_MODULE)
    write(root / "app" / "value.py", "VALUE = 1\n")
    write(root / "app" / "sub" / "__init__.py", "")
    write(root / "app" / "sub" / "leaf.py", "def leaf():\n    return 'leaf'\n")
    return root


def pyc_of(source: Path, opt: str = "") -> Path:
    return Path(importlib.util.cache_from_source(str(source), optimization=opt))


def compile_one(source: Path, mode: str, **kwargs: object) -> Path:
    enum = py_compile.PycInvalidationMode[mode.upper().replace("-", "_")]
    cfile = py_compile.compile(str(source), doraise=True, invalidation_mode=enum, **kwargs)
    assert cfile is not None
    return Path(cfile)


def edit_keep_stat(source: Path, old: str, new: str) -> None:
    """Edit ``source`` in place and restore its exact mtime, like rsync -t or tar would."""
    assert len(old.encode()) == len(new.encode()), "edit must keep the size"
    st = source.stat()
    text = source.read_text()
    assert old in text
    source.write_text(text.replace(old, new))
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert source.stat().st_size == st.st_size


def run_python(
    cwd: Path, code: str, *, write_bytecode: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a fresh interpreter the way an app would import from the release directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    args = [sys.executable] + ([] if write_bytecode else ["-B"]) + ["-c", code]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def stale_by_pyc(result: dict) -> dict[str, dict]:
    return {item["pyc"]: item for item in result["stale"]}


def rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


# ------------------------------------------------------------------------- parse_pyc_header


@pytest.mark.parametrize("mode", MODES)
def test_parse_header_matches_py_compile(tmp_path: Path, mode: str) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    data = compile_one(source, mode).read_bytes()
    header = parse_pyc_header(data)
    assert header.magic == MAGIC
    assert header.mode == mode
    assert header.flags == {"timestamp": 0, "unchecked-hash": 1, "checked-hash": 3}[mode]
    if mode == "timestamp":
        st = source.stat()
        assert header.mtime == int(st.st_mtime) & 0xFFFFFFFF
        assert header.size == st.st_size
        assert header.source_hash is None
    else:
        assert header.source_hash == importlib.util.source_hash(source.read_bytes())
        assert header.mtime is None and header.size is None
    # Only the 16 header bytes are needed.
    assert parse_pyc_header(data[:16]) == header


def test_parse_header_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        parse_pyc_header(MAGIC + b"\0" * 4)
    with pytest.raises(ValueError, match="magic"):
        parse_pyc_header(b"PK\x03\x04" + b"\0" * 12)
    with pytest.raises(ValueError, match="flags"):
        parse_pyc_header(MAGIC + (4).to_bytes(4, "little") + b"\0" * 8)


def test_parse_header_check_source_bit_alone_is_timestamp() -> None:
    # CPython only looks at bit 0 to pick the mode; bit 1 alone is still timestamp.
    header = parse_pyc_header(MAGIC + (2).to_bytes(4, "little") + (7).to_bytes(4, "little")
                              + (9).to_bytes(4, "little"))
    assert (header.mode, header.mtime, header.size) == ("timestamp", 7, 9)


# ------------------------------------------------------------------------- clean trees


@pytest.mark.parametrize("mode", MODES)
def test_compile_tree_then_scan_is_clean(tmp_path: Path, mode: str) -> None:
    root = make_tree(tmp_path)
    result = compile_tree(str(root), invalidation_mode=mode)
    assert result == {"compiled": 5, "errors": []}
    for source in root.rglob("*.py"):
        assert parse_pyc_header(pyc_of(source).read_bytes()).mode == mode
    scan = scan_tree(str(root))
    assert scan["ok"] is True
    assert scan["checked"] == 5 and scan["sources"] == 5
    assert scan["content_checked"] is True
    assert scan["stale"] == scan["orphans"] == scan["errors"] == []
    json.dumps(scan)  # must be JSON-serialisable as is


def test_pycs_written_by_python_itself_are_clean(tmp_path: Path) -> None:
    # The import system writes timestamp pycs whose co_filename is the absolute path.
    root = make_tree(tmp_path)
    proc = run_python(root, "import app.rich, app.value, app.sub.leaf", write_bytecode=True)
    assert proc.returncode == 0, proc.stderr
    scan = scan_tree(str(root))
    assert scan["checked"] == 5
    assert scan["ok"], scan


def test_co_filename_does_not_matter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Same source compiled under a relative path and under a fake build path: not stale.
    root = make_tree(tmp_path)
    monkeypatch.chdir(root)
    py_compile.compile("app/rich.py", doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    py_compile.compile(str(root / "app" / "value.py"), dfile="/build/elsewhere/value.py",
                       doraise=True, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    scan = scan_tree(str(root))
    assert scan["checked"] == 2
    assert scan["ok"], scan


@pytest.mark.parametrize("optimize", [1, 2])
def test_optimized_pycs_are_checked(tmp_path: Path, optimize: int) -> None:
    root = make_tree(tmp_path)
    source = root / "app" / "rich.py"
    cfile = compile_one(source, "timestamp", optimize=optimize)
    assert cfile.name == f"rich.{TAG}.opt-{optimize}.pyc"
    assert scan_tree(str(root))["ok"]

    edit_keep_stat(source, '"negative"', '"NEGATIVE"')
    # -O and -OO strip asserts, so the edited assert message is not in the bytecode at all.
    assert scan_tree(str(root))["ok"]
    edit_keep_stat(source, "range(a)", "range(b)")
    stale = stale_by_pyc(scan_tree(str(root)))
    assert list(stale) == [rel(root, cfile)]
    assert stale[rel(root, cfile)]["source"] == "app/rich.py"
    assert "bytecode does not match source" in stale[rel(root, cfile)]["reason"]


# ------------------------------------------------------------------------- (a) timestamp


def test_timestamp_same_size_edit_with_kept_mtime_is_stale(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    source = root / "app" / "value.py"
    cfile = compile_one(source, "timestamp")
    edit_keep_stat(source, "VALUE = 1", "VALUE = 2")

    # The header still matches the source: CPython's own check passes...
    header = parse_pyc_header(cfile.read_bytes())
    st = source.stat()
    assert (header.mtime, header.size) == (int(st.st_mtime) & 0xFFFFFFFF, st.st_size)
    # ...and the interpreter really runs the old code.
    proc = run_python(root, "import app.value; print(app.value.VALUE)")
    assert proc.stdout.strip() == "1", proc.stderr

    scan = scan_tree(str(root))
    assert scan["ok"] is False
    item = stale_by_pyc(scan)[rel(root, cfile)]
    assert item == {
        "pyc": f"app/__pycache__/value.{TAG}.pyc",
        "source": "app/value.py",
        "reason": "bytecode does not match source (same mtime and size: timestamp check would "
                  "pass)",
        "silent": True,
    }
    # Without the content check only the header is compared, and it matches.
    assert scan_tree(str(root), content_check=False)["ok"] is True


def test_timestamp_line_only_change_is_stale(tmp_path: Path) -> None:
    # Moving a blank line changes only line numbers (code == code ignores that on 3.8/3.9).
    source = write(tmp_path / "lines.py", "a = 1\nb = 2\n\n")
    compile_one(source, "timestamp")
    edit_keep_stat(source, "a = 1\nb = 2\n\n", "a = 1\n\nb = 2\n")
    assert [s["source"] for s in scan_tree(str(tmp_path))["stale"]] == ["lines.py"]


def test_timestamp_rich_module_edit_is_stale(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    source = root / "app" / "rich.py"
    compile_one(source, "timestamp")
    edit_keep_stat(source, "NEG_ZERO = -0.0", "NEG_ZERO = +0.0")
    stale = scan_tree(str(root))["stale"]
    assert [s["source"] for s in stale] == ["app/rich.py"]


def test_timestamp_header_mismatch_reason(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    source = root / "app" / "value.py"
    cfile = compile_one(source, "timestamp")
    header = parse_pyc_header(cfile.read_bytes())
    st = source.stat()
    source.write_text("VALUE = 10\n")  # one byte longer
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    item = stale_by_pyc(scan_tree(str(root)))[rel(root, cfile)]
    assert item["reason"] == (
        f"timestamp pyc says mtime {header.mtime} size 10, "
        f"source has mtime {header.mtime} size 11"
    )
    assert item["silent"] is False  # CPython notices this one and recompiles

    source.write_text("VALUE = 1\n")  # original size again, but a new mtime
    os.utime(source, (st.st_atime + 100, st.st_mtime + 100))
    item = stale_by_pyc(scan_tree(str(root)))[rel(root, cfile)]
    assert "size 10, source has mtime" in item["reason"]
    assert f"mtime {header.mtime} size 10" in item["reason"]


def test_timestamp_source_that_no_longer_compiles(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = (1)\n")
    compile_one(source, "timestamp")
    edit_keep_stat(source, "X = (1)", "X = (1(")
    [item] = scan_tree(str(tmp_path))["stale"]
    assert item["reason"].startswith("source no longer compiles (SyntaxError")
    assert item["silent"] is True
    proc = run_python(tmp_path, "import m; print(m.X)")
    assert proc.stdout.strip() == "1", proc.stderr  # the broken source is never seen


def test_corrupt_timestamp_body_is_stale(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    cfile = compile_one(source, "timestamp")
    cfile.write_bytes(cfile.read_bytes()[:16] + b"\xff\xff")
    [item] = scan_tree(str(tmp_path))["stale"]
    assert "not valid marshal data" in item["reason"]
    # Not silent: the header passes, importlib trusts the body, and the import blows up.
    assert item["silent"] is False
    proc = run_python(tmp_path, "import m")
    assert proc.returncode != 0 and "marshal data" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------- (b) hash modes


@pytest.mark.parametrize("mode", ["checked-hash", "unchecked-hash"])
def test_hash_pyc_with_edited_source_is_stale(tmp_path: Path, mode: str) -> None:
    root = make_tree(tmp_path)
    source = root / "app" / "value.py"
    cfile = compile_one(source, mode)
    edit_keep_stat(source, "VALUE = 1", "VALUE = 2")

    item = stale_by_pyc(scan_tree(str(root)))[rel(root, cfile)]
    assert item["reason"].startswith("source hash differs (source edited after compile)")
    # What CPython does with it: checked-hash recompiles, unchecked-hash runs stale code.
    proc = run_python(root, "import app.value; print(app.value.VALUE)")
    if mode == "unchecked-hash":
        assert proc.stdout.strip() == "1", proc.stderr
        assert item["silent"] is True
        assert "never checks" in item["reason"]
    else:
        assert proc.stdout.strip() == "2", proc.stderr
        assert item["silent"] is False


def test_hash_pyc_survives_mtime_changes(tmp_path: Path) -> None:
    # The point of hash pycs: a copy that resets mtimes does not make them stale.
    source = write(tmp_path / "m.py", "X = 1\n")
    compile_one(source, "checked-hash")
    os.utime(source, (1, 1))
    assert scan_tree(str(tmp_path))["ok"]


# ------------------------------------------------------------------------- (c) magic


def test_wrong_magic_is_stale(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    cfile = compile_one(root / "app" / "value.py", "checked-hash")
    other = (int.from_bytes(MAGIC[:2], "little") - 1).to_bytes(2, "little") + b"\r\n"
    cfile.write_bytes(other + cfile.read_bytes()[4:])
    item = stale_by_pyc(scan_tree(str(root)))[rel(root, cfile)]
    assert item["reason"] == (
        f"magic {other.hex()} is not {MAGIC.hex()} expected for {TAG} "
        "(compiled by another Python version)"
    )

    # Asking for that magic instead flags the untouched pycs, not this one.
    compile_one(root / "app" / "sub" / "leaf.py", "timestamp")
    scan = scan_tree(str(root), magic=other)
    assert [s["source"] for s in scan["stale"]] == ["app/sub/leaf.py"]
    assert scan["content_checked"] is False  # cannot recompile for another interpreter


def test_truncated_pyc_is_stale(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    compile_one(source, "checked-hash").write_bytes(MAGIC)
    [item] = scan_tree(str(tmp_path))["stale"]
    assert item["reason"].startswith("invalid pyc (pyc header needs 16 bytes, got 4)")


# ------------------------------------------------------------------------- (d) (e) orphans


def test_pycache_orphan_after_deleting_source(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    cfile = compile_one(root / "app" / "value.py", "checked-hash")
    (root / "app" / "value.py").unlink()

    scan = scan_tree(str(root))
    assert scan["orphans"] == [{
        "pyc": rel(root, cfile),
        "importable": False,
        "reason": "source deleted; not importable but stale",
    }]
    assert scan["ok"] is True  # evidence of a deleted module, but Python will not run it
    assert scan["checked"] == 0
    proc = run_python(root, "import app.value")
    assert "ModuleNotFoundError" in proc.stderr


def leave_only_legacy_bytecode(source: Path, text: str, suffix: str) -> None:
    """Compile `source` and keep just a pre-PEP 3147 `<name><suffix>` beside where it was."""
    write(source, text)
    cfile = compile_one(source, "checked-hash")
    shutil.copyfile(cfile, source.with_suffix(suffix))
    source.unlink()
    cfile.unlink()


def test_legacy_sourceless_pyc_is_importable(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    leave_only_legacy_bytecode(root / "app" / "foo.py", "VALUE = 'from sourceless pyc'\n", ".pyc")

    proc = run_python(root, "import app.foo; print(app.foo.VALUE)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "from sourceless pyc"

    scan = scan_tree(str(root))
    assert scan["orphans"] == [{
        "pyc": "app/foo.pyc",
        "importable": True,
        "reason": "sourceless .pyc beside missing foo.py: still importable",
    }]
    assert scan["ok"] is False


def test_legacy_pyo_is_not_importable(tmp_path: Path) -> None:
    # PEP 488 dropped .pyo from the import suffixes: stale, but Python 3 ignores it.
    root = make_tree(tmp_path)
    leave_only_legacy_bytecode(root / "app" / "old.py", "VALUE = 1\n", ".pyo")

    proc = run_python(root, "import app.old")
    assert "ModuleNotFoundError" in proc.stderr
    scan = scan_tree(str(root))
    assert [(o["pyc"], o["importable"]) for o in scan["orphans"]] == [("app/old.pyo", False)]
    assert scan["ok"] is True


def test_legacy_pyc_beside_source_is_informational(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    source = root / "app" / "value.py"
    cfile = compile_one(source, "checked-hash")
    shutil.move(str(cfile), str(root / "app" / "value.pyc"))
    source.write_text("VALUE = 2\n")

    # The source wins over a legacy pyc next to it.
    proc = run_python(root, "import app.value; print(app.value.VALUE)")
    assert proc.stdout.strip() == "2", proc.stderr
    scan = scan_tree(str(root))
    assert [(x["pyc"], x["source"]) for x in scan["legacy_with_source"]] == [
        ("app/value.pyc", "app/value.py")
    ]
    assert scan["orphans"] == [] and scan["ok"] is True


# ------------------------------------------------------------------------- (f) other tags


def test_other_interpreter_pycs_are_information_only(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    cfile = compile_one(root / "app" / "value.py", "timestamp")
    foreign = cfile.with_name("value.cpython-39.pyc")
    foreign.write_bytes(b"garbage that is never parsed")
    foreign_orphan = cfile.with_name("gone.cpython-39.opt-1.pyc")
    foreign_orphan.write_bytes(b"")
    (cfile.parent / "notes.txt").write_text("not a pyc")

    scan = scan_tree(str(root))
    assert scan["other_interpreters"] == sorted([rel(root, foreign), rel(root, foreign_orphan)])
    assert scan["checked"] == 1
    assert scan["ok"] is True

    # Scanning for cpython-39 instead: the 3.9 pyc is checked, ours becomes "other".
    scan39 = scan_tree(str(root), cache_tag="cpython-39")
    assert scan39["other_interpreters"] == [rel(root, cfile)]
    assert [o["pyc"] for o in scan39["orphans"]] == [rel(root, foreign_orphan)]
    assert [s["pyc"] for s in scan39["stale"]] == [rel(root, foreign)]


# ------------------------------------------------------------------------- errors, skip dirs


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
def test_unreadable_pyc_is_an_error_not_a_crash(tmp_path: Path) -> None:
    # chmod 000 does not stop root; /proc/self/mem is a "regular file" whose read fails (EIO).
    root = make_tree(tmp_path)
    cfile = pyc_of(root / "app" / "value.py")
    cfile.parent.mkdir()
    cfile.symlink_to("/proc/self/mem")
    compile_one(root / "app" / "sub" / "leaf.py", "timestamp")

    scan = scan_tree(str(root))
    assert [e["path"] for e in scan["errors"]] == [rel(root, cfile)]
    assert scan["errors"][0]["error"].startswith("OSError")
    assert scan["checked"] == 2 and scan["stale"] == []
    assert scan["ok"] is False  # not verified is not proven


def test_hash_pyc_for_other_interpreter_cannot_be_verified(tmp_path: Path) -> None:
    # The source hash is the target interpreter's business (it changed in 3.11).
    root = make_tree(tmp_path)
    cfile = compile_one(root / "app" / "value.py", "unchecked-hash")
    foreign = cfile.with_name("value.cpython-39.pyc")
    foreign.write_bytes(b"\x61\x0d\x0d\x0a" + cfile.read_bytes()[4:])
    scan = scan_tree(str(root), cache_tag="cpython-39", magic=b"\x61\x0d\x0d\x0a")
    assert [e["path"] for e in scan["errors"]] == [rel(root, foreign)]
    assert "run the scan with the target interpreter" in scan["errors"][0]["error"]
    assert scan["ok"] is False


def test_skip_dirs_are_not_scanned(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    venv_mod = write(root / ".venv" / "lib" / "dep.py", "X = 1\n")
    compile_one(venv_mod, "unchecked-hash")
    venv_mod.write_text("X = 2\n")
    write(root / "node_modules" / "x.pyc", "")
    scan = scan_tree(str(root))
    assert scan["ok"] and scan["checked"] == 0 and scan["sources"] == 5

    scan = scan_tree(str(root), skip_dirs=())
    assert [s["source"] for s in scan["stale"]] == [".venv/lib/dep.py"]
    assert [o["pyc"] for o in scan["orphans"]] == ["node_modules/x.pyc"]


def test_scan_rejects_missing_root(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        scan_tree(str(tmp_path / "nope"))


# ------------------------------------------------------------------------- (g) compile_tree


def test_compile_tree_reports_syntax_error_file_and_line(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    write(root / "app" / "broken.py", "x = 1\n\ndef f(:\n    pass\n")
    write(root / "app" / "indent.py", "if True:\npass\n")
    result = compile_tree(str(root), workers=1)
    assert result["compiled"] == 5
    assert result["errors"] == [
        {"file": "app/broken.py", "line": 3, "message": "SyntaxError: invalid syntax"},
        {"file": "app/indent.py", "line": 2,
         "message": "IndentationError: expected an indented block after 'if' statement on "
                    "line 1"},
    ]
    assert not pyc_of(root / "app" / "broken.py").exists()


def test_compile_tree_parallel_matches_serial(tmp_path: Path) -> None:
    for i in range(120):
        write(tmp_path / f"pkg{i % 6}" / f"m{i}.py", f"def f():\n    return {i}\n")
    write(tmp_path / "pkg3" / "bad.py", "def f(\n")
    write(tmp_path / ".venv" / "ignored.py", "def f(\n")

    parallel = compile_tree(str(tmp_path), invalidation_mode="unchecked-hash", workers=2)
    assert parallel["compiled"] == 120
    assert [(e["file"], e["line"]) for e in parallel["errors"]] == [("pkg3/bad.py", 1)]
    assert parallel["errors"][0]["message"].startswith("SyntaxError: ")
    scan = scan_tree(str(tmp_path))
    assert scan["checked"] == 120 and scan["ok"]

    serial = compile_tree(str(tmp_path), invalidation_mode="TIMESTAMP", workers=1)
    assert serial == parallel
    assert parse_pyc_header(pyc_of(tmp_path / "pkg0" / "m0.py").read_bytes()).mode == "timestamp"


def test_compile_tree_rejects_unknown_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown invalidation mode"):
        compile_tree(str(tmp_path), invalidation_mode="mtime")


def test_parallel_compile_when_loaded_like_the_remote_bootstrap(tmp_path: Path) -> None:
    # transport.py execs the module source into a bare ModuleType: the pool must still be
    # able to pickle the worker function by name.
    for i in range(60):
        write(tmp_path / "tree" / f"m{i}.py", f"X = {i}\n")
    script = textwrap.dedent(f"""
        import json, pickle, sys, types
        for name in ("deploytools", "deploytools.remote", "deploytools.remote.bytecode"):
            m = types.ModuleType(name)
            sys.modules[name] = m
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, m)
            if not name.endswith("bytecode"):
                m.__path__ = []
        src = open({bytecode.__file__!r}).read()
        exec(compile(src, "<deploytools bytecode>", "exec"), m.__dict__)
        pickle.dumps(m._compile_chunk)
        print(json.dumps(m.compile_tree({str(tmp_path / "tree")!r}, workers=2)))
    """)
    proc = run_python(tmp_path, script)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"compiled": 60, "errors": []}


# ------------------------------------------------------------------------- (h) clear_tree


def test_clear_tree_removes_bytecode_but_not_venv(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    compile_tree(str(root), invalidation_mode="timestamp", workers=1)  # 5 pycs, 2 dirs
    compile_one(root / "app" / "value.py", "timestamp", optimize=2)  # 6th pyc
    write(root / "app" / "__pycache__" / "value.cpython-39.pyc", "")  # 7th file
    write(root / "app" / "legacy.pyc", "")
    write(root / "app" / "legacy.pyo", "")
    venv_mod = write(root / ".venv" / "lib" / "dep.py", "X = 1\n")
    venv_pyc = compile_one(venv_mod, "timestamp")
    write(root / ".venv" / "lib" / "loose.pyc", "")

    assert clear_tree(str(root)) == {"dirs": 2, "files": 9, "errors": []}
    assert not list(root.glob("app/**/__pycache__"))
    assert not list(root.glob("app/**/*.py[co]"))
    assert venv_pyc.exists() and (root / ".venv" / "lib" / "loose.pyc").exists()
    assert sorted(p.name for p in (root / "app").iterdir()) == [
        "__init__.py", "rich.py", "sub", "value.py"
    ]
    scan = scan_tree(str(root))
    assert scan["checked"] == 0 and scan["sources"] == 5 and scan["ok"]
    assert clear_tree(str(root)) == {"dirs": 0, "files": 0, "errors": []}


# ------------------------------------------------------------------------- scale, CLI


def test_scan_a_thousand_modules(tmp_path: Path) -> None:
    for pkg in range(20):
        write(tmp_path / f"pkg{pkg}" / "__init__.py", "")
        for i in range(50):
            write(tmp_path / f"pkg{pkg}" / f"mod{i}.py",
                  f"import os\n\n\ndef f{i}(x):\n    return os.path.join(x, '{i}')\n")
    result = compile_tree(str(tmp_path), invalidation_mode="timestamp")
    assert result == {"compiled": 1020, "errors": []}
    scan = scan_tree(str(tmp_path))  # timestamp mode: every pyc is also recompiled + compared
    assert scan["ok"] and scan["checked"] == 1020 and scan["sources"] == 1020


