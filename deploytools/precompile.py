"""A release's bytecode, compiled once per run by the controller's interpreter.

Hash-based pycs are valid on every host with the same magic number, so hosts whose
interpreter matches ours receive them instead of compiling themselves. Compiling
starts in the background (`start`) so that fresh hosts receive the sources while their
bytecode is being made. Modules compiled by an earlier run are taken from the
controller's pyc cache (pyccache.py) instead; only the others are read and compiled.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path

from deploytools.archives import Member
from deploytools.errors import ConfigError
from deploytools.pyccache import PycCache, Store, entry_key
from deploytools.remote import bytecode
from deploytools.remote.bytecode import pyc_path


class Compiler:
    """Compiles a release's modules from their members (`read`), on demand or in the
    background; pycs are kept by path for the whole run, errors too, and in `cache`
    (when given) for later runs."""

    def __init__(self, files: Mapping[str, str],
                 read: Callable[[list[str]], list[Member]],
                 cache: PycCache | None = None) -> None:
        self._files = files  # the manifest's file table
        self._read = read
        self._disk_cache = cache
        self._pyc_cache: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, tuple[str, ...]], dict[str, bytes]] = {}
        self._source_tree: str | None = None
        self._error: str | None = None

    def pycs(self, sources: list[str], invalidation_mode: str) -> dict[str, bytes]:
        """Bytecode for these sources, keyed by pyc path (waits for a background run).
        Every fresh host asks for the same set: the answer is kept, not rebuilt."""
        key = (invalidation_mode, tuple(sources))
        with self._lock:
            if key not in self._answers:
                self._answers[key] = self._pycs(sources, invalidation_mode)
            return self._answers[key]

    def _pycs(self, sources: list[str], invalidation_mode: str) -> dict[str, bytes]:
        tag = sys.implementation.cache_tag
        wanted = {src: pyc_path(src, tag) for src in self.compilable(sources)}
        self._compile(list(wanted), invalidation_mode)
        missing = [src for src, pyc in wanted.items() if pyc not in self._pyc_cache]
        if missing:
            raise ConfigError(self._error or f"could not compile {missing[0]}")
        return {pyc: self._pyc_cache[pyc] for pyc in wanted.values()}

    def compilable(self, paths: list[str]) -> list[str]:
        """The modules this controller compiles: regular .py files. A symlinked module is
        left to the host, which compiles it from its target's content there (its target
        may lie outside the release, and is never followed here)."""
        return [p for p in paths if p.endswith(".py")
                and not self._files.get(p, "").startswith("symlink:")]

    def start(self, invalidation_mode: str) -> None:
        """Compile every module in the background (pycs() waits for it)."""
        sources = self.compilable(list(self._files))
        started = threading.Event()

        def work() -> None:
            with self._lock:
                started.set()
                self._compile(sources, invalidation_mode)

        threading.Thread(target=work, name="precompile", daemon=True).start()
        started.wait()

    def close(self) -> None:
        if self._source_tree:
            shutil.rmtree(self._source_tree, ignore_errors=True)

    def _compile(self, sources: list[str], invalidation_mode: str) -> None:
        """Compile what is not cached yet (caller holds the lock); errors are kept."""
        tag = sys.implementation.cache_tag
        missing = [src for src in sources if pyc_path(src, tag) not in self._pyc_cache]
        if not missing:
            return
        cache = self._disk_cache
        with cache.open(invalidation_mode) if cache else nullcontext() as store:
            if store is not None:
                for src in missing:
                    pyc = store.get(entry_key(self._files[src], src, invalidation_mode))
                    if pyc is not None:
                        self._pyc_cache[pyc_path(src, tag)] = pyc
                missing = [src for src in missing if pyc_path(src, tag) not in self._pyc_cache]
            if missing:
                self._compile_missing(missing, invalidation_mode, store)

    def _compile_missing(self, missing: list[str], invalidation_mode: str,
                         store: Store | None) -> None:
        """Extract and compile these modules, storing their pycs in `store` (if any).
        Code objects name their release path, not the temporary one: the same source
        then compiles to the same bytes in every run, which is what makes them cacheable."""
        tag = sys.implementation.cache_tag
        root = self._extracted(missing)
        result = bytecode.compile_tree(root, invalidation_mode=invalidation_mode, files=missing,
                                       relative_names=True)
        if result["errors"]:
            first = result["errors"][0]
            self._error = (f"cannot compile {first['file']} line {first.get('line')}: "
                           f"{first['message']}")
        for src in missing:
            pyc = Path(root, pyc_path(src, tag))
            if pyc.exists():
                body = self._pyc_cache[pyc_path(src, tag)] = pyc.read_bytes()
                if store is not None:
                    store.put(entry_key(self._files[src], src, invalidation_mode), body)

    def _extracted(self, sources: list[str]) -> str:
        """A private temporary directory holding (at least) these sources, written once."""
        if self._source_tree is None:
            self._source_tree = tempfile.mkdtemp(prefix="deploytools-src-", dir=memory_tmp())
        for path in sources:
            target = Path(self._source_tree, path)
            if not target.exists():
                info, body = self._read([path])[0]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(body or b"")
        return self._source_tree


def memory_tmp() -> str | None:
    """/dev/shm when it is a writable tmpfs, else None (the default temporary directory).

    Compiling writes every source and its pyc once: 4,000 file creations cost 0.5-2
    CPU-s on a disk filesystem here and 0.05 on tmpfs. mkdtemp makes a 0700 directory,
    so the sticky, world-writable parent lets no one else into it."""
    shm = "/dev/shm"
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            tmpfs = any(line.split()[1:3] == [shm, "tmpfs"] for line in mounts)
    except OSError:
        return None
    return shm if tmpfs and os.access(shm, os.W_OK | os.X_OK) else None
