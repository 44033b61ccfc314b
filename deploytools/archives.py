"""Release files as tar members, and the compressed archives that carry them to hosts.

An archive is written once per run for each set of members and shared by every host
that needs the same one: it is streamed from a private temporary file.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO

Member = tuple[tarfile.TarInfo, bytes | None]
Stream = Callable[[], Iterator[bytes]]  # called once per attempt: a fresh stream each time


def digest_of(member: Member) -> str | None:
    """The manifest's entry: sha256 of a file, `symlink:<target>` for a link."""
    info, body = member
    if info.isfile() and body is not None:
        return hashlib.sha256(body).hexdigest()
    if info.issym():
        return "symlink:" + info.linkname
    return None


def file_member(path: str, data: bytes) -> Member:
    """A regular file made here (not read from the source), such as a compiled pyc."""
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    return info, data


class ArchiveCache:
    """Archives by key, each built on first use and kept until `close`."""

    def __init__(self) -> None:
        self._archives: dict[tuple, tuple[int, IO[bytes]]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, members: Callable[[], list[Member]]) -> tuple[int, Stream]:
        """The archive under `key` as (size, stream factory); `members` says what goes
        into it when it is not built yet."""
        with self._lock:
            if key not in self._archives:
                out = tempfile.TemporaryFile(prefix="deploytools-delta-")  # noqa: SIM115
                write_members(out, members())
                self._archives[key] = (out.tell(), out)
            size, handle = self._archives[key]
        return size, lambda: _read_file(handle, size)

    def close(self) -> None:
        for _, handle in self._archives.values():
            handle.close()


def write_members(out: IO[bytes], members: list[Member]) -> None:
    """A gzip-compressed tar (level 1: cheap to make, several times smaller to send).

    One gzip member: the agent inflates it with zlib before piping it to tar."""
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1,
                      format=tarfile.PAX_FORMAT) as archive:
        for info, body in members:
            info.uid = info.gid = 0
            info.mode &= 0o755  # no set-id bits, no group/other write: hosts keep modes as sent
            info.uname = info.gname = ""
            info.pax_headers = {}  # git's per-file headers would cost ~1 KB a file
            if info.isfile() and body is not None:
                archive.addfile(info, io.BytesIO(body))
            elif info.issym() or info.isdir():
                archive.addfile(info)
    out.flush()  # the file is read back with os.pread, below Python's buffer


def _read_file(handle: IO[bytes], size: int) -> Iterator[bytes]:
    offset = 0
    while offset < size:
        block = os.pread(handle.fileno(), 1 << 20, offset)
        if not block:
            break
        offset += len(block)
        yield block
