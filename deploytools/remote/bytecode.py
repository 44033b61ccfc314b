"""Bytecode (``.pyc``) hygiene for a deployed source tree.

Why this module exists: a deploy tool that claims "the code shipped is the code that runs"
must account for bytecode, because CPython happily executes a ``.pyc`` that no longer matches
its source in several situations:

* an *unchecked-hash* pyc (PEP 552) is never validated against its source;
* a *timestamp* pyc is only validated by (mtime, size), so a same-length edit that keeps the
  mtime (``rsync --times``, ``tar``/``git`` checkouts that set mtimes, clock skew) runs the old
  bytecode;
* a legacy, sourceless ``foo.pyc`` beside a deleted ``foo.py`` is still importable, so a module
  removed from the release keeps running.

This file is shipped to remote hosts and executed by *their* interpreter (Python 3.8+), so it
is deliberately standalone: stdlib only, no imports from the rest of ``deploytools``, no syntax
or runtime features newer than 3.8 (annotations are strings thanks to the ``__future__``
import).
"""

from __future__ import annotations

import importlib.util
import marshal
import operator
import os
import py_compile
import shutil
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, NamedTuple

__all__ = [
    "DEFAULT_SKIP_DIRS",
    "PycHeader",
    "clear_tree",
    "compile_tree",
    "parse_pyc_header",
    "scan_tree",
]

#: Directories never descended into: they hold third-party or VCS content, not the release.
DEFAULT_SKIP_DIRS: tuple[str, ...] = (".venv", "venv", ".git", "node_modules")

PycMode = Literal["timestamp", "checked-hash", "unchecked-hash"]

_HEADER_SIZE = 16
_FLAG_HASH_BASED = 0b01
_FLAG_CHECK_SOURCE = 0b10
_U32 = 0xFFFFFFFF
_PYCACHE = "__pycache__"
# Above this many files a process pool pays for its start-up cost.
_PARALLEL_THRESHOLD = 50
# Chunks per worker: enough to balance uneven file sizes, few enough to keep IPC cheap.
_CHUNKS_PER_WORKER = 4


class PycHeader(NamedTuple):
    """The 16-byte PEP 552 header of a ``.pyc`` file.

    A NamedTuple (not a dataclass) so it is cheap, immutable and trivially convertible with
    ``_asdict()`` on every interpreter this module may run under.
    """

    magic: bytes
    flags: int
    mode: PycMode
    mtime: int | None
    size: int | None
    source_hash: bytes | None


def parse_pyc_header(data: bytes) -> PycHeader:
    """Decode the PEP 552 header at the start of ``data``.

    Layout: 4 bytes magic, 4 bytes little-endian flags (bit 0 = hash-based, bit 1 =
    check_source), then either mtime (u32 LE) + source size (u32 LE) or an 8-byte source hash.
    Only the first 16 bytes are looked at, so callers may pass just the header.

    Raises ValueError for data that is too short, has no ``\\r\\n`` magic suffix (every CPython
    magic ends with it, precisely so that text-mode mangling is detectable) or sets unknown flag
    bits (CPython itself rejects those).
    """
    if len(data) < _HEADER_SIZE:
        raise ValueError(f"pyc header needs {_HEADER_SIZE} bytes, got {len(data)}")
    magic = bytes(data[0:4])
    if magic[2:4] != b"\r\n":
        raise ValueError(f"bad pyc magic {magic.hex()}: does not end in \\r\\n")
    flags = int.from_bytes(data[4:8], "little")
    if flags & ~(_FLAG_HASH_BASED | _FLAG_CHECK_SOURCE):
        raise ValueError(f"invalid pyc flags {flags:#x}")
    if flags & _FLAG_HASH_BASED:
        mode: PycMode = "checked-hash" if flags & _FLAG_CHECK_SOURCE else "unchecked-hash"
        return PycHeader(magic, flags, mode, None, None, bytes(data[8:16]))
    # Like CPython, a set check_source bit without the hash bit still means timestamp mode.
    mtime = int.from_bytes(data[8:12], "little")
    size = int.from_bytes(data[12:16], "little")
    return PycHeader(magic, flags, "timestamp", mtime, size, None)


# --------------------------------------------------------------------------------------------
# scan_tree
# --------------------------------------------------------------------------------------------


def _rel(prefix: str, name: str) -> str:
    """Join a "/"-separated relative prefix and a name (reports are OS-independent)."""
    return prefix + "/" + name if prefix else name


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _split_cache_name(filename: str) -> tuple[str, str, str] | None:
    """Split ``name.<tag>[.opt-N].pyc`` into (name, tag, opt) the way CPython's
    ``importlib.util.source_from_cache`` does; None for anything that is not a cache name."""
    if not filename.endswith(".pyc"):
        return None
    parts = filename[:-4].split(".")
    opt = ""
    if len(parts) == 3:
        opt = parts.pop()
        if not opt.startswith("opt-") or not opt[4:].isalnum():
            return None
        opt = opt[4:]
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1], opt


# Code-object attributes that define behaviour and line numbers.  ``co_filename`` is left out
# on purpose: it records where the compiler was pointed (relative path, build dir, ...), and
# importlib rewrites it at import time anyway.  ``co_lnotab`` is only consulted when
# ``co_linetable`` is missing (3.8/3.9) because reading it warns on 3.12+.
_CODE_ATTRS = (
    "co_argcount",
    "co_posonlyargcount",
    "co_kwonlyargcount",
    "co_nlocals",
    "co_stacksize",
    "co_flags",
    "co_code",
    "co_names",
    "co_varnames",
    "co_freevars",
    "co_cellvars",
    "co_name",
    "co_qualname",
    "co_firstlineno",
    "co_exceptiontable",
)


def _code_key(obj: object) -> object:
    """A comparable, filename-free fingerprint of a code object and its constants.

    Why not compare ``marshal.dumps`` bytes: marshal only emits back-references for objects
    whose refcount is > 1, so identical code can serialise differently in another process
    (observed on 3.8).  Why not ``code == code``: before 3.10 equality ignores line tables, so
    moving a statement would go unnoticed.  Floats/complex go through ``repr`` so that
    ``0.0``/``-0.0`` and NaNs are distinguished, and types are recorded so ``1``/``True``/``1.0``
    differ.
    """
    if isinstance(obj, types.CodeType):
        key: list[object] = [getattr(obj, attr, None) for attr in _CODE_ATTRS]
        linetable = getattr(obj, "co_linetable", None)
        key.append(linetable if linetable is not None else obj.co_lnotab)
        key.append(tuple(_code_key(const) for const in obj.co_consts))
        return ("code", tuple(key))
    kind = type(obj)
    if kind is tuple:
        return ("tuple", tuple(_code_key(item) for item in obj))  # type: ignore[attr-defined]
    if kind is frozenset:
        # Set order is hash-dependent, so sort the (type-tagged) item keys.
        items = sorted(repr(_code_key(item)) for item in obj)  # type: ignore[attr-defined]
        return ("frozenset", tuple(items))
    if kind is float or kind is complex:
        return (kind.__name__, repr(obj))
    return (kind.__name__, obj)


def _bytecode_mismatch(body: bytes, source: bytes, optimize: int) -> tuple[str | None, bool]:
    """Recompile ``source`` in memory and compare with the marshalled code in ``body``.

    Returns ``(None, False)`` when they match, else ``(reason, silent)``.  The source is
    compiled the way importlib and py_compile do it (``dont_inherit=True`` — otherwise this
    module's own ``__future__`` flags would leak into the compile and change the bytecode)
    and under the pyc's own ``co_filename``, which keeps the cheap byte-for-byte fast path
    usable.
    """
    try:
        stored = marshal.loads(body)
    except (EOFError, ValueError, TypeError) as exc:
        # importlib only falls back to the source for header problems, not for these.
        return f"pyc body is not valid marshal data ({_err(exc)}): import would fail", False
    if not isinstance(stored, types.CodeType):
        return "pyc body is not a code object: import would fail", False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings etc. are not our business here
            fresh = compile(source, stored.co_filename, "exec", dont_inherit=True,
                            optimize=optimize)
    except (SyntaxError, ValueError) as exc:
        reason = f"source no longer compiles ({_err(exc)}) but its timestamp pyc still matches"
        return reason, True
    if marshal.dumps(fresh) == body or _code_key(fresh) == _code_key(stored):
        return None, False
    return (
        "bytecode does not match source (same mtime and size: timestamp check would pass)",
        True,
    )


class _Unverifiable(Exception):
    """A pyc that cannot be checked from this interpreter (reported as an error, not ok)."""


class _Scan:
    """Mutable state of one scan_tree walk (kept in one object to avoid long arg lists)."""

    def __init__(self, root: str, cache_tag: str, magic: bytes, skip: frozenset[str],
                 content_check: bool, source_hashes: Mapping[str, bytes]) -> None:
        self.root = root
        self.source_hashes = source_hashes
        self.cache_tag = cache_tag
        self.magic = magic
        self.skip = skip
        # Bytecode can only be regenerated for comparison by the interpreter it belongs to.
        self.same_interpreter = (
            magic == importlib.util.MAGIC_NUMBER and cache_tag == sys.implementation.cache_tag
        )
        self.content_check = content_check and self.same_interpreter
        self.stale: list[dict[str, Any]] = []
        self.orphans: list[dict[str, Any]] = []
        self.legacy_with_source: list[dict[str, Any]] = []
        self.other_interpreters: list[str] = []
        self.errors: list[dict[str, Any]] = []
        self.checked = 0
        self.sources = 0

    def error(self, rel: str, exc: BaseException) -> None:
        """Record what could not be read (an unverifiable file is not proof of anything)."""
        self.errors.append({"path": rel or ".", "error": _err(exc)})

    def walk(self) -> None:
        for rel, others, pycache in _walk_tree(self.root, self.skip, self.error):
            files: dict[str, os.DirEntry[str]] = {}
            for entry in others:
                try:
                    if entry.is_file():  # symlinked files are followed, as imports do
                        files[entry.name] = entry
                except OSError as exc:
                    self.error(_rel(rel, entry.name), exc)
            self.sources += sum(1 for name in files if name.endswith(".py"))
            self.scan_legacy(rel, files)
            if pycache is not None:
                self.scan_pycache(pycache.path, rel, files)

    def scan_legacy(self, rel: str, files: dict[str, os.DirEntry[str]]) -> None:
        """Classify pre-PEP 3147 ``foo.pyc``/``foo.pyo`` files living beside sources."""
        for name in files:
            if not (name.endswith(".pyc") or name.endswith(".pyo")):
                continue
            stem = name[:-4]
            source = stem + ".py"
            if source in files:
                self.legacy_with_source.append({
                    "pyc": _rel(rel, name),
                    "source": _rel(rel, source),
                    "reason": f"ignored by Python while {source} exists; runs if it is deleted",
                })
            elif name.endswith(".pyo"):
                # PEP 488 (3.5) removed .pyo from the import suffixes.
                self.orphans.append({
                    "pyc": _rel(rel, name),
                    "importable": False,
                    "reason": f"legacy .pyo beside missing {source}: not importable since "
                              "Python 3.5 (PEP 488) but stale",
                })
            else:
                # A dotted stem cannot be reached by an import statement.
                importable = "." not in stem
                reason = (
                    f"sourceless .pyc beside missing {source}: still importable"
                    if importable
                    else f"sourceless .pyc beside missing {source}: dotted name, not importable"
                )
                self.orphans.append(
                    {"pyc": _rel(rel, name), "importable": importable, "reason": reason}
                )

    def scan_pycache(self, path: str, rel: str, files: dict[str, os.DirEntry[str]]) -> None:
        """Check every ``__pycache__/<name>.<tag>[.opt-N].pyc`` against its parent's source."""
        cache_rel = _rel(rel, _PYCACHE)
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as exc:
            self.error(cache_rel, exc)
            return
        for entry in entries:
            parts = _split_cache_name(entry.name)
            if parts is None:
                continue
            pyc_rel = _rel(cache_rel, entry.name)
            try:
                if not entry.is_file():
                    continue
            except OSError as exc:
                self.error(pyc_rel, exc)
                continue
            name, tag, opt = parts
            if tag != self.cache_tag:
                self.other_interpreters.append(pyc_rel)
                continue
            source_name = name + ".py"
            source_entry = files.get(source_name)
            if source_entry is None:
                self.orphans.append({
                    "pyc": pyc_rel,
                    "importable": False,
                    "reason": "source deleted; not importable but stale",
                })
                continue
            self.checked += 1
            optimize = int(opt) if opt.isdigit() else (0 if not opt else None)
            try:
                reason, silent = self.check_pyc(entry.path, source_entry, optimize)
            except (OSError, _Unverifiable) as exc:
                self.error(pyc_rel, exc)
                continue
            if reason is not None:
                self.stale.append({
                    "pyc": pyc_rel,
                    "source": _rel(rel, source_name),
                    "reason": reason,
                    "silent": silent,
                })

    def check_pyc(self, pyc_path: str, source: os.DirEntry[str],
                  optimize: int | None) -> tuple[str | None, bool]:
        """Return (reason, silent) for one target-tag pyc; reason None means up to date.

        ``silent`` is True when CPython would execute the stale bytecode without noticing; the
        other stale kinds are recompiled by the import system (in memory if ``__pycache__`` is
        not writable), which costs start-up time but runs the right code — unless the host
        runs with ``--check-hash-based-pycs never``.
        """
        with open(pyc_path, "rb") as fh:
            head = fh.read(_HEADER_SIZE)
            try:
                header = parse_pyc_header(head)
            except ValueError as exc:
                return f"invalid pyc ({exc}); Python would ignore and recompile it", False
            if header.magic != self.magic:
                return (
                    f"magic {header.magic.hex()} is not {self.magic.hex()} expected for "
                    f"{self.cache_tag} (compiled by another Python version)",
                    False,
                )
            if header.mode == "timestamp":
                st = source.stat()
                src_mtime = int(st.st_mtime) & _U32
                src_size = st.st_size & _U32
                if header.mtime != src_mtime or header.size != src_size:
                    return (
                        f"timestamp pyc says mtime {header.mtime} size {header.size}, "
                        f"source has mtime {src_mtime} size {src_size}",
                        False,
                    )
                if not self.content_check or optimize is None:
                    return None, False
                body = fh.read()
                with open(source.path, "rb") as sfh:
                    source_bytes = sfh.read()
                return _bytecode_mismatch(body, source_bytes, optimize)
        known_hash = self.source_hashes.get(source.path)
        if known_hash is None:
            with open(source.path, "rb") as sfh:
                known_hash = importlib.util.source_hash(sfh.read())
        if not self.same_interpreter:
            # _imp.source_hash gives different results on <=3.10 and >=3.11 even for the
            # same key, so another interpreter's hash cannot be recomputed here: refuse
            # rather than guess.
            raise _Unverifiable(
                f"cannot verify {header.mode} pyc for {self.cache_tag} from "
                f"{sys.implementation.cache_tag}: run the scan with the target interpreter"
            )
        if header.source_hash == known_hash:
            return None, False
        if header.mode == "unchecked-hash":
            return (
                "source hash differs (source edited after compile); unchecked-hash pyc: "
                "Python never checks it and runs the stale bytecode",
                True,
            )
        return "source hash differs (source edited after compile)", False


def pyc_path(source: str, cache_tag: str) -> str:
    """`pkg/mod.py` -> `pkg/__pycache__/mod.<tag>.pyc` (PEP 3147)."""
    folder, _, name = source.rpartition("/")
    cached = "__pycache__/%s.%s.pyc" % (name[:-3], cache_tag)
    return folder + "/" + cached if folder else cached


def scan_tree(
    root: str,
    *,
    cache_tag: str | None = None,
    magic: bytes | None = None,
    skip_dirs: Iterable[str] = DEFAULT_SKIP_DIRS,
    content_check: bool = True,
    source_hashes: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """Walk ``root`` once and report every pyc that could make running code differ from source.

    ``source_hashes`` (full source path -> ``importlib.util.source_hash``) spares reading
    sources a caller has just read anyway (verify hashes every file first).

    Returned (JSON-serialisable) keys:

    * ``stale``: target-tag ``__pycache__`` pycs whose source exists but does not match, as
      ``{"pyc", "source", "reason", "silent"}`` (``silent``: CPython would run it unnoticed).
    * ``orphans``: ``{"pyc", "reason", "importable"}`` for ``__pycache__`` pycs whose source
      is gone (not importable, but evidence of a deleted module) and legacy ``foo.pyc``/
      ``foo.pyo`` without ``foo.py`` (a ``.pyc`` there *is* importable).
    * ``legacy_with_source``: legacy pycs shadowed by an existing source (informational).
    * ``other_interpreters``: ``__pycache__`` pycs for other cache tags (informational).
    * ``errors``: ``{"path", "error"}`` for anything that could not be read or verified.
    * ``checked`` / ``sources``: counts of target-tag pycs checked and ``.py`` files seen.
    * ``ok``: no stale pycs, no importable orphans and no errors — an unverifiable file is not
      proof, so errors fail closed.

    Timestamp pycs whose header matches are additionally recompiled in memory and compared
    with the stored code (``content_check``), because a same-size edit that preserves the mtime
    passes CPython's own check.  That costs one ``compile()`` per such file; it is skipped when
    ``magic``/``cache_tag`` name a different interpreter, and ``content_checked`` in the result
    says whether it ran.  To audit for another interpreter pass *both* its ``cache_tag`` and
    ``magic``; hash pycs can then only be reported as unverifiable errors, because CPython's
    keyed source hash changed in 3.11.
    """
    if not os.path.isdir(root):
        raise NotADirectoryError(f"not a directory: {root}")
    state = _Scan(
        root,
        cache_tag if cache_tag is not None else sys.implementation.cache_tag,
        magic if magic is not None else importlib.util.MAGIC_NUMBER,
        frozenset(skip_dirs),
        content_check,
        source_hashes or {},
    )
    state.walk()
    by_pyc = operator.itemgetter("pyc")
    state.stale.sort(key=by_pyc)
    state.orphans.sort(key=by_pyc)
    state.legacy_with_source.sort(key=by_pyc)
    state.other_interpreters.sort()
    state.errors.sort(key=operator.itemgetter("path"))
    ok = (
        not state.stale
        and not state.errors
        and not any(orphan["importable"] for orphan in state.orphans)
    )
    return {
        "ok": ok,
        "cache_tag": state.cache_tag,
        "magic": state.magic.hex(),
        "content_checked": state.content_check,
        "checked": state.checked,
        "sources": state.sources,
        "stale": state.stale,
        "orphans": state.orphans,
        "legacy_with_source": state.legacy_with_source,
        "other_interpreters": state.other_interpreters,
        "errors": state.errors,
    }


# --------------------------------------------------------------------------------------------
# compile_tree
# --------------------------------------------------------------------------------------------


def _walk_tree(
    root: str, skip: frozenset[str], on_error: Callable[[str, BaseException], None]
) -> Iterator[tuple[str, list[os.DirEntry[str]], os.DirEntry[str] | None]]:
    """Yield ``(rel, non-directory entries, __pycache__ entry or None)`` per directory.

    One ``scandir`` per directory, an explicit stack (deep trees cannot hit the recursion
    limit), skipped names and symlinked directories never entered (loops, shared dirs
    outside the release).
    """
    stack = [(root, "")]
    while stack:
        path, rel = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as exc:
            on_error(rel or ".", exc)
            continue
        others: list[os.DirEntry[str]] = []
        pycache: os.DirEntry[str] | None = None
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name == _PYCACHE:
                        pycache = entry
                    elif entry.name not in skip:
                        stack.append((entry.path, _rel(rel, entry.name)))
                else:
                    others.append(entry)
            except OSError as exc:
                on_error(_rel(rel, entry.name), exc)
        yield rel, others, pycache


def _raise(rel: str, exc: BaseException) -> None:
    raise exc


def _iter_sources(root: str, skip: frozenset[str]) -> Iterator[str]:
    """Yield "/"-relative paths of ``.py`` files, never entering skipped or cache dirs."""
    for rel, others, _ in _walk_tree(root, skip, _raise):
        for entry in others:
            if entry.name.endswith(".py"):
                yield _rel(rel, entry.name)


def _invalidation_mode(name: str) -> py_compile.PycInvalidationMode:
    """Accept both the PEP 552 spelling ("checked-hash") and the enum name ("CHECKED_HASH")."""
    try:
        return py_compile.PycInvalidationMode[name.upper().replace("-", "_")]
    except KeyError:
        raise ValueError(
            f"unknown invalidation mode {name!r}: use timestamp, checked-hash or unchecked-hash"
        ) from None


def _compile_chunk(root: str, rels: list[str], mode_name: str,
                   relative_names: bool = False) -> tuple[int, list[dict[str, Any]]]:
    """Compile a batch of files; module-level so a process pool can pickle it by name.

    ``quiet`` is left at its default on purpose: with ``quiet=2`` py_compile swallows the
    error and returns None *even when* ``doraise=True``.
    """
    mode = py_compile.PycInvalidationMode[mode_name]
    compiled = 0
    errors: list[dict[str, Any]] = []
    for rel in rels:
        path = os.path.join(root, *rel.split("/"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # SyntaxWarnings would spam the deploy log
                py_compile.compile(path, dfile=rel if relative_names else None,
                                   doraise=True, invalidation_mode=mode)
        except py_compile.PyCompileError as exc:
            inner = exc.exc_value
            if isinstance(inner, SyntaxError):
                errors.append({
                    "file": rel,
                    "line": inner.lineno,
                    "message": f"{type(inner).__name__}: {inner.msg}",
                })
            else:
                errors.append({"file": rel, "line": None, "message": _err(inner)})
        except OSError as exc:  # unreadable source, unwritable __pycache__ (not wrapped)
            errors.append({"file": rel, "line": None, "message": _err(exc)})
        else:
            compiled += 1
    return compiled, errors


def compile_tree(
    root: str,
    *,
    invalidation_mode: str = "checked-hash",
    workers: int = 0,
    skip_dirs: Iterable[str] = DEFAULT_SKIP_DIRS,
    files: list[str] | None = None,
    relative_names: bool = False,
) -> dict[str, Any]:
    """Compile every ``.py`` under ``root`` (or just ``files``, "/"-relative) into
    ``__pycache__`` with ``invalidation_mode``.

    The default is checked-hash because it ties each pyc to the source *content*: mtimes do
    not survive every transfer method, and unchecked-hash pycs would hide later edits.

    Large trees are compiled in a fork-based process pool (``workers=0`` means one per CPU;
    ``workers=1`` forces serial), in a few batches per worker rather than one task per file,
    so IPC stays negligible.  If the pool cannot be used (no ``fork``, or the module was
    loaded in a way that cannot be pickled by name), the remaining files are compiled
    serially.  Returns ``{"compiled": n, "errors": [{"file", "line", "message"}]}``.

    ``relative_names`` records each file's "/"-relative path as its code's file name
    (``co_filename``) instead of its path under ``root``, so that the bytes of a pyc do not
    depend on where ``root`` is (a temporary directory on the controller) and can be cached;
    Python puts the real path back when it imports a pyc beside its source.
    """
    mode_name = _invalidation_mode(invalidation_mode).name
    rels = sorted(files) if files is not None else sorted(_iter_sources(root, frozenset(skip_dirs)))
    if workers <= 0:
        workers = os.cpu_count() or 1
    chunks: list[list[str]] = [rels]
    if workers > 1 and len(rels) > _PARALLEL_THRESHOLD:
        n_chunks = min(len(rels), workers * _CHUNKS_PER_WORKER)
        chunks = [rels[i::n_chunks] for i in range(n_chunks)]
    compiled = 0
    errors: list[dict[str, Any]] = []
    pending = [chunk for chunk in chunks if chunk]
    if len(pending) > 1:
        done = _compile_parallel(root, pending, mode_name, workers, relative_names)
        for index in sorted(done):
            n, errs = done[index]
            compiled += n
            errors.extend(errs)
        pending = [chunk for index, chunk in enumerate(pending) if index not in done]
    for chunk in pending:
        n, errs = _compile_chunk(root, chunk, mode_name, relative_names)
        compiled += n
        errors.extend(errs)
    errors.sort(key=lambda item: item["file"])
    return {"compiled": compiled, "errors": errors}


def _compile_parallel(
    root: str, chunks: list[list[str]], mode_name: str, workers: int, relative_names: bool
) -> dict[int, tuple[int, list[dict[str, Any]]]]:
    """Run chunks in a fork pool; return results by chunk index for the chunks that finished.

    Per-file failures are caught inside ``_compile_chunk``, so an exception here can only be
    infrastructure (pickling, a killed worker): the caller redoes the missing chunks serially.
    """
    import multiprocessing  # here: most agent sessions never compile in parallel
    from concurrent.futures import ProcessPoolExecutor

    try:
        context = multiprocessing.get_context("fork")
    except ValueError:  # Windows has no fork
        return {}
    done: dict[int, tuple[int, list[dict[str, Any]]]] = {}
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)),
                                 mp_context=context) as pool:
            futures = {
                pool.submit(_compile_chunk, root, chunk, mode_name, relative_names): index
                for index, chunk in enumerate(chunks)
            }
            for future, index in futures.items():
                try:
                    done[index] = future.result()
                except Exception:  # this chunk is redone serially by the caller
                    continue
    except Exception:  # pool start-up/shutdown failure: serial fallback for what is missing
        pass
    return done


# --------------------------------------------------------------------------------------------
# clear_tree
# --------------------------------------------------------------------------------------------


def _count_files(path: str) -> int:
    """Count non-directory entries below ``path`` (symlinks counted, never followed)."""
    total = 0
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    total += 1
    return total


def clear_tree(root: str, *, skip_dirs: Iterable[str] = DEFAULT_SKIP_DIRS) -> dict[str, Any]:
    """Delete every ``__pycache__`` dir and loose ``*.pyc``/``*.pyo`` under ``root``.

    Used before (re)compiling a release so no bytecode of unknown provenance survives.
    Skipped dirs (virtualenvs, VCS) are left alone: their bytecode belongs to installed
    packages.  ``files`` includes the files that were inside removed ``__pycache__`` dirs;
    failures are collected in ``errors`` instead of aborting half-way.
    """
    dirs = files = 0
    errors: list[dict[str, Any]] = []

    def failed(rel: str, exc: BaseException) -> None:
        errors.append({"path": rel, "error": _err(exc)})

    for rel, others, pycache in _walk_tree(root, frozenset(skip_dirs), failed):
        if pycache is not None:
            try:
                count = _count_files(pycache.path)
                shutil.rmtree(pycache.path)
                dirs += 1
                files += count
            except OSError as exc:
                failed(_rel(rel, pycache.name), exc)
        for entry in others:
            if entry.name.endswith((".pyc", ".pyo")):
                try:
                    os.unlink(entry.path)
                    files += 1
                except OSError as exc:
                    failed(_rel(rel, entry.name), exc)
    errors.sort(key=lambda item: item["path"])
    return {"dirs": dirs, "files": files, "errors": errors}
