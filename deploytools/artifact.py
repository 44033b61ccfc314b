"""Build the release artifact once, locally: a tar stream plus its manifest.

The artifact is the exact set of files every host receives. It never contains
`.git`, `__pycache__` or `*.pyc`/`*.pyo` (bytecode is produced for the target
interpreter on purpose, never carried along by accident). The manifest records
the sha256 of every file, so `verify` can prove later that a release is intact.

The parts: sources.py reads the files (git or a directory), archives.py packs them for
hosts, precompile.py makes their bytecode; this module ties them into one release.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from deploytools import __version__
from deploytools.archives import ArchiveCache, Member, Stream, digest_of, file_member
from deploytools.errors import ConfigError
from deploytools.masking import strip_credentials
from deploytools.precompile import Compiler
from deploytools.pyccache import PycCache
from deploytools.remote.releases import files_digest
from deploytools.sources import (
    Fetch,
    from_directory,
    from_git,
    local_repo,
    refuse_non_utf8,
    resolve_revision,
)

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "deploytools"


@dataclass
class Artifact:
    """A built release: id, revision, the tar file, its members and the manifest.

    Hosts that already have a previous release get only what changed (`delta`,
    `archive`); hosts whose interpreter matches ours get bytecode compiled once here
    (`pycs`) instead of compiling it themselves.
    """

    release_id: str
    revision: str
    ref: str | None
    source: str
    size: int  # bytes of file content (uncompressed): for disk estimates and display
    manifest: dict[str, Any]
    members: dict[str, Member] = field(default_factory=dict, repr=False)
    # reads members the build did not (git: `git archive` of these paths, or all)
    fetch: Fetch | None = field(default=None, repr=False)
    _member_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _archives: ArchiveCache = field(default_factory=ArchiveCache, repr=False)
    _compiler: Compiler = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._compiler = Compiler(self.files, self._members, PycCache(CACHE_DIR / "pyc"))

    @property
    def files(self) -> dict[str, str]:
        return self.manifest["files"]

    @cached_property
    def digest(self) -> str:
        """files_digest of the manifest, computed once for every host that asks."""
        return files_digest(self.files)

    def delta(self, base: dict[str, str]) -> tuple[dict[str, str], list[str]]:
        """Files to send to a host whose base release holds `base` (path -> sha256, intact
        files only), and files of the base that the new release no longer has."""
        changed = {path: digest for path, digest in self.files.items()
                   if base.get(path) != digest or digest.startswith("symlink:")}
        removed = sorted(path for path in base if path not in self.files)
        return changed, removed

    def archive(self, paths: list[str] | None = None, extra: dict[str, bytes] | None = None
                ) -> tuple[int, Stream]:
        """A compressed tar of `paths` (all when None) plus `extra` files, as (size, stream
        factory). Built once per run and shared by every host that needs the same one."""
        key = (None if paths is None else tuple(sorted(paths)), tuple(sorted(extra or {})))

        def members() -> list[Member]:
            return self._members(paths) + [file_member(path, data)
                                           for path, data in sorted((extra or {}).items())]

        return self._archives.get(key, members)

    def pycs(self, sources: list[str], invalidation_mode: str) -> dict[str, bytes]:
        """Bytecode for these sources, compiled once per run by this interpreter (hash-based
        pycs are valid on every host with the same magic number), keyed by pyc path."""
        return self._compiler.pycs(sources, invalidation_mode)

    def start_precompile(self, invalidation_mode: str) -> None:
        """Compile every module in the background, so that fresh hosts receive the sources
        while their bytecode is being made (pycs() waits for it)."""
        self._compiler.start(invalidation_mode)

    def _members(self, paths: list[str] | None) -> list[Member]:
        """These files' tar members (all, directories too, when None), read from the
        source on first use; what is read must match the manifest."""
        with self._member_lock:
            wanted = sorted(self.files) if paths is None else sorted(paths)
            missing = [p for p in wanted if p not in self.members]
            if missing and self.fetch is not None:
                whole = paths is None or len(missing) > len(self.files) // 2
                for info, body in self.fetch(None if whole else missing):
                    if info.name in self.files and \
                            digest_of((info, body)) != self.files[info.name]:
                        raise ConfigError(f"{info.name} read from {self.source} does not match "
                                          f"the planned manifest; remove {CACHE_DIR}/digests "
                                          "and retry")
                    self.members.setdefault(info.name, (info, body))
            return [self.members[p] for p in (sorted(self.members) if paths is None
                                              else wanted)]

    def avoid_ids(self, taken: set[str]) -> None:
        """Give the release a fresh id if a host already has one by this name (the same
        commit deployed twice within a second); the suffix keeps ids sorting by time."""
        base, number = self.release_id, 1
        while self.release_id in taken:
            number += 1
            self.release_id = f"{base}.{number}"
        self.manifest["id"] = self.release_id

    def close(self) -> None:
        self._archives.close()
        self._compiler.close()


def make_release_id(now: float, revision: str | None) -> str:
    """UTC timestamp plus short sha: sorting release ids by name sorts them by time."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{stamp}-{revision[:7]}" if revision else stamp


def build_artifact(source: Mapping[str, Any], ref: str | None = None,
                   now: float | None = None) -> Artifact:
    """Build from `source.repo` at `ref` (git) or from `source.path` (a directory)."""
    now = time.time() if now is None else now
    patterns = tuple(source.get("exclude") or ())
    if source.get("repo"):
        ref = ref or source.get("ref") or "HEAD"
        repo = local_repo(source["repo"], CACHE_DIR)
        revision = resolve_revision(source, ref, repo)
        if not revision:
            raise ConfigError(f"ref {ref!r} not found in {source['repo']}")
        files, size, members, fetch = from_git(repo, revision, patterns, CACHE_DIR)
        origin, where = source["repo"], f"{source['repo']} at {ref}"
    elif source.get("path"):
        root = Path(source["path"])
        if not root.is_dir():
            raise ConfigError(f"source.path {root} is not a directory")
        files, size, members, fetch = from_directory(root, patterns)
        revision = ref = None
        origin = where = str(root)
    else:
        raise ConfigError("no source: set source.repo or source.path in the inventory")
    refuse_non_utf8(files, where)
    release_id = make_release_id(now, revision)
    if revision is None:
        revision = "sha256:" + files_digest(files)
    manifest = {
        "id": release_id,
        "revision": revision,
        "ref": ref,
        "source": strip_credentials(origin),  # release.json lives on every host
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "deployed_by": f"{getpass.getuser()}@{socket.gethostname()}",
        "deploytools": __version__,
        "files": files,
    }
    return Artifact(release_id, revision, ref, origin, size, manifest,
                    members={info.name: (info, body) for info, body in members}, fetch=fetch)
