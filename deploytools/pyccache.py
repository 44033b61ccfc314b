"""The controller's persistent cache of compiled modules, across runs.

Compiling a 2,000-module release costs the controller seconds of CPU on every fresh
deploy, even when the same sources were compiled a minute ago. The manifest already
gives each source's sha256, so a pyc can be found again without reading its source.

An entry is keyed by everything that shapes the pyc's bytes: the source's sha256, its
release path (the code's ``co_filename``: the Compiler records release-relative names),
the interpreter (magic number, cache tag), the invalidation mode and the optimization
level. Only hash-based pycs are cached: a timestamp pyc's header holds the mtime of the
temporary file it was compiled from, so no later run could use it (and the controller
ships only hash-based pycs anyway).

The cache is only trusted while nobody else can write to it: every directory must be a
real directory owned by us and not writable by group or others, every entry a regular
file owned by us; nothing is followed through a symlink (all access goes through
directory descriptors and ``O_NOFOLLOW``). Otherwise the cache is not used and modules
are compiled as without it. Entries carry the sha256 of their pyc, so a torn or
corrupted one is ignored (and replaced), and writes are atomic (temporary file, then
``os.replace``). The cache is kept under a size limit by removing the least recently
used entries after a run that stored some.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import secrets
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

HASH_MODES = {"checked-hash": 0b11, "unchecked-hash": 0b01}  # mode -> pyc header flags
DEFAULT_LIMIT = 200 * 1024 * 1024  # bytes of entries kept
_DIGEST = 32  # sha256 of the pyc, in front of it
_HEADER = 16  # a pyc's own header
_TOUCH_AFTER = 3600.0  # a hit refreshes an entry's mtime (its recency) at most hourly
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def entry_key(source_sha256: str, path: str, mode: str) -> str:
    """The name of a module's entry: a hash of everything its pyc bytes depend on."""
    parts = (importlib.util.MAGIC_NUMBER.hex(), sys.implementation.cache_tag,
             str(sys.flags.optimize), mode, path, source_sha256)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _private(fd: int) -> bool:
    """Whether an open directory is ours alone (owned by us, no group/other write)."""
    info = os.fstat(fd)
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _open_private_dir(name: str | Path, dir_fd: int | None = None) -> int | None:
    """A descriptor of this directory (created 0700 if missing) when it is private."""
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        fd = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
    except OSError:  # a symlink (ELOOP), not a directory, no access
        return None
    if not _private(fd):
        os.close(fd)
        return None
    return fd


class Store:
    """One interpreter and mode's entries, open for the duration of one compile."""

    def __init__(self, fd: int, mode: str) -> None:
        self._fd = fd
        self._flags = HASH_MODES[mode]
        self._shards: dict[str, int | None] = {}
        self.stored = 0  # entries written by this store

    def get(self, key: str) -> bytes | None:
        """The pyc stored under this key, or None (absent, untrusted or damaged)."""
        shard = self._shard(key)
        if shard is None:
            return None
        try:
            fd = os.open(key, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=shard)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                return None
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read()
            pyc = self._valid(data)
            if pyc is not None and time.time() - info.st_mtime > _TOUCH_AFTER:
                os.utime(fd)
            return pyc
        except OSError:
            return None
        finally:
            os.close(fd)

    def put(self, key: str, pyc: bytes) -> None:
        """Store a pyc atomically; failing to store only costs a later compile."""
        entry = hashlib.sha256(pyc).digest() + pyc
        shard = self._shard(key)
        if shard is None or self._valid(entry) is None:
            return
        temp = f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                         dir_fd=shard)
            with os.fdopen(fd, "wb") as handle:
                handle.write(entry)
            os.replace(temp, key, src_dir_fd=shard, dst_dir_fd=shard)
            self.stored += 1
        except OSError:
            with suppress(OSError):
                os.unlink(temp, dir_fd=shard)

    def close(self) -> None:
        for fd in self._shards.values():
            if fd is not None:
                os.close(fd)
        self._shards.clear()
        os.close(self._fd)

    def _shard(self, key: str) -> int | None:
        """The private subdirectory holding this key (256 of them keep directories small)."""
        name = key[:2]
        if name not in self._shards:
            self._shards[name] = _open_private_dir(name, self._fd)
        return self._shards[name]

    def _valid(self, entry: bytes) -> bytes | None:
        """The pyc of an entry whose checksum, magic number and mode flags are right."""
        pyc = entry[_DIGEST:]
        if (len(pyc) <= _HEADER or hashlib.sha256(pyc).digest() != entry[:_DIGEST]
                or pyc[:4] != importlib.util.MAGIC_NUMBER
                or int.from_bytes(pyc[4:8], "little") != self._flags):
            return None
        return pyc


class PycCache:
    """Compiled modules under ``root`` (``<magic>/<mode>/<shard>/<key>``), at most
    ``limit`` bytes of them."""

    def __init__(self, root: Path, limit: int = DEFAULT_LIMIT) -> None:
        self.root = root
        self.limit = limit

    @contextmanager
    def open(self, mode: str) -> Iterator[Store | None]:
        """This interpreter's entries for a mode, or None when they cannot be trusted
        (or the mode is not cached); prunes the cache afterwards if it grew."""
        store = self._store(mode) if mode in HASH_MODES else None
        try:
            yield store
        finally:
            if store is not None:
                store.close()
                if store.stored:
                    self.prune()

    def _store(self, mode: str) -> Store | None:
        parent = self.root.parent
        try:
            parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            info = parent.stat()  # the cache dir itself may be reached through a symlink
        except OSError:
            return None
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        fds: list[int] = []
        try:
            for name in (self.root, importlib.util.MAGIC_NUMBER.hex(), mode):
                fd = _open_private_dir(name, fds[-1] if fds else None)
                if fd is None:
                    return None
                fds.append(fd)
            return Store(fds.pop(), mode)
        finally:
            for fd in fds:
                os.close(fd)

    def prune(self) -> None:
        """Remove the least recently used entries (oldest mtime first) until the cache
        holds at most 80% of its limit, so that not every run has to prune."""
        fd = _open_private_dir(self.root)
        if fd is None:
            return
        try:
            entries: list[tuple[float, int, str]] = []
            for folder, _, files, folder_fd in os.fwalk(".", dir_fd=fd):
                for name in files:
                    try:
                        info = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
                    except OSError:
                        continue
                    entries.append((info.st_mtime, info.st_size, os.path.join(folder, name)))
            total = sum(size for _, size, _ in entries)
            if total <= self.limit:
                return
            for _, size, path in sorted(entries):
                if total <= self.limit * 0.8:
                    break
                try:
                    os.unlink(path, dir_fd=fd)
                except OSError:
                    continue
                total -= size
        finally:
            os.close(fd)
