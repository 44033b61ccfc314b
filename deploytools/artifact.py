"""Build the release artifact once, locally: a tar stream plus its manifest.

The artifact is the exact set of files every host receives. It never contains
`.git`, `__pycache__` or `*.pyc`/`*.pyo` (bytecode is produced for the target
interpreter on purpose, never carried along by accident). The manifest records
the sha256 of every file, so `verify` can prove later that a release is intact.
"""

from __future__ import annotations

import fnmatch
import getpass
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any

from deploytools import __version__, gitsource
from deploytools.errors import ConfigError
from deploytools.masking import strip_credentials
from deploytools.remote import bytecode
from deploytools.remote.bytecode import pyc_path
from deploytools.remote.releases import files_digest

_Member = tuple[tarfile.TarInfo, bytes | None]

ALWAYS_EXCLUDED = (".git", "__pycache__", "*.pyc", "*.pyo")
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
    members: dict[str, _Member] = field(default_factory=dict, repr=False)
    # reads members the build did not (git: `git archive` of these paths, or all)
    fetch: Callable[[list[str] | None], list[_Member]] | None = field(default=None, repr=False)
    _member_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pyc_cache: dict[str, bytes] = field(default_factory=dict, repr=False)
    _compile_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _source_tree: str | None = field(default=None, repr=False)
    _compile_error: str | None = field(default=None, repr=False)
    _archives: dict[tuple, tuple[int, IO[bytes]]] = field(default_factory=dict, repr=False)
    _archive_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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
                ) -> tuple[int, Callable[[], Iterator[bytes]]]:
        """A compressed tar of `paths` (all when None) plus `extra` files, as (size, stream
        factory). Built once per run and shared by every host that needs the same one."""
        key = (None if paths is None else tuple(sorted(paths)), tuple(sorted(extra or {})))
        with self._archive_lock:
            if key not in self._archives:
                out = tempfile.TemporaryFile(prefix="deploytools-delta-")  # noqa: SIM115
                members = self._members(paths)
                for path, data in sorted((extra or {}).items()):
                    info = tarfile.TarInfo(path)
                    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
                    members.append((info, data))
                _write_members(out, members)
                self._archives[key] = (out.tell(), out)
            size, handle = self._archives[key]
        return size, lambda: _read_file(handle, size)

    def pycs(self, sources: list[str], invalidation_mode: str) -> dict[str, bytes]:
        """Bytecode for these sources, compiled once per run by this interpreter (hash-based
        pycs are valid on every host with the same magic number), keyed by pyc path."""
        tag = sys.implementation.cache_tag
        wanted = {src: pyc_path(src, tag) for src in self.compilable(sources)}
        with self._compile_lock:
            self._compile(list(wanted), invalidation_mode)
            missing = [src for src, pyc in wanted.items() if pyc not in self._pyc_cache]
            if missing:
                raise ConfigError(self._compile_error or f"could not compile {missing[0]}")
            return {pyc: self._pyc_cache[pyc] for pyc in wanted.values()}

    def compilable(self, paths: list[str]) -> list[str]:
        """The modules this controller compiles: regular .py files. A symlinked module is
        left to the host, which compiles it from its target's content there (its target
        may lie outside the release, and is never followed here)."""
        return [p for p in paths if p.endswith(".py")
                and not self.files.get(p, "").startswith("symlink:")]

    def _compile(self, sources: list[str], invalidation_mode: str) -> None:
        """Compile what is not cached yet (caller holds the lock); errors are kept."""
        tag = sys.implementation.cache_tag
        missing = [src for src in sources if pyc_path(src, tag) not in self._pyc_cache]
        if not missing:
            return
        root = self._extracted(missing)
        result = bytecode.compile_tree(root, invalidation_mode=invalidation_mode, files=missing)
        if result["errors"]:
            first = result["errors"][0]
            self._compile_error = (f"cannot compile {first['file']} line {first.get('line')}: "
                                   f"{first['message']}")
        for src in missing:
            pyc = Path(root, pyc_path(src, tag))
            if pyc.exists():
                self._pyc_cache[pyc_path(src, tag)] = pyc.read_bytes()

    def start_precompile(self, invalidation_mode: str) -> None:
        """Compile every module in the background, so that fresh hosts receive the sources
        while their bytecode is being made (pycs() waits for it)."""
        sources = self.compilable(list(self.files))
        started = threading.Event()

        def work() -> None:
            with self._compile_lock:
                started.set()
                self._compile(sources, invalidation_mode)

        threading.Thread(target=work, name="precompile", daemon=True).start()
        started.wait()

    def _extracted(self, sources: list[str]) -> str:
        """A private temporary directory holding (at least) these sources, written once."""
        if self._source_tree is None:
            self._source_tree = tempfile.mkdtemp(prefix="deploytools-src-")
        for path in sources:
            target = Path(self._source_tree, path)
            if not target.exists():
                info, body = self._members([path])[0]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(body or b"")
        return self._source_tree

    def _members(self, paths: list[str] | None) -> list[_Member]:
        """These files' tar members (all, directories too, when None), read from the
        source on first use; what is read must match the manifest."""
        with self._member_lock:
            wanted = sorted(self.files) if paths is None else sorted(paths)
            missing = [p for p in wanted if p not in self.members]
            if missing and self.fetch is not None:
                whole = paths is None or len(missing) > len(self.files) // 2
                for info, body in self.fetch(None if whole else missing):
                    if info.name in self.files and \
                            gitsource.digest_of((info, body)) != self.files[info.name]:
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
        for _, handle in self._archives.values():
            handle.close()
        if self._source_tree:
            shutil.rmtree(self._source_tree, ignore_errors=True)


def excluded(relpath: str, patterns: tuple[str, ...]) -> bool:
    """True when a path or any of its parent directories matches a pattern."""
    parts = relpath.split("/")
    for pattern in ALWAYS_EXCLUDED + tuple(p.rstrip("/") for p in patterns):
        if fnmatch.fnmatch(relpath, pattern) or any(fnmatch.fnmatch(p, pattern) for p in parts):
            return True
        if any(fnmatch.fnmatch("/".join(parts[:i]), pattern) for i in range(1, len(parts))):
            return True
    return False


def _refuse_non_utf8(names: Iterable[str], where: str) -> None:
    """Manifests, the wire and the hosts' checks are UTF-8: a file name that is not
    (it arrives with surrogate escapes) is a planning error naming it, not a traceback."""
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raw = os.fsencode(name)
            raise ConfigError(f"{where}: file name {raw!r} is not valid UTF-8; rename it "
                              "(or exclude it with source.exclude)") from None


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
        repo = _local_repo(source["repo"])
        revision = resolve_revision(source, ref, repo)
        if not revision:
            raise ConfigError(f"ref {ref!r} not found in {source['repo']}")
        files, size, members, fetch = _from_git(repo, revision, patterns)
        _refuse_non_utf8(files, f"{source['repo']} at {ref}")
        release_id = make_release_id(now, revision)
        origin = source["repo"]
    elif source.get("path"):
        root = Path(source["path"])
        if not root.is_dir():
            raise ConfigError(f"source.path {root} is not a directory")
        members = _from_directory(root, patterns)
        _refuse_non_utf8((info.name for info, _ in members), str(root))
        files = _hash_members(members)
        size = sum(len(body) for _, body in members if body is not None)
        fetch = None
        revision = None
        release_id = make_release_id(now, None)
        origin = str(root)
        ref = None
    else:
        raise ConfigError("no source: set source.repo or source.path in the inventory")
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


# --------------------------------------------------------------------------- sources


def resolve_revision(source: Mapping[str, Any], ref: str, repo: str | None = None) -> str | None:
    """The full commit sha of `ref` in the source repository, or None if it names none."""
    repo = repo or source.get("repo")
    if not repo or not os.path.isdir(repo):
        return None
    done = subprocess.run(["git", "-C", repo, "rev-parse", "--verify", "--quiet",
                           f"{ref}^{{commit}}"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None if done.returncode == 0 else None


def _local_repo(repo: str) -> str:
    """A local path is used as is; a URL is mirrored once into the cache and fetched."""
    if os.path.isdir(repo):
        return repo
    if "://" not in repo and "@" not in repo:
        raise ConfigError(f"source.repo {repo} is not a directory or a git URL")
    mirror = CACHE_DIR / "git" / hashlib.sha1(repo.encode()).hexdigest()[:16]
    if mirror.is_dir():
        command = ["git", "-C", str(mirror), "remote", "update", "--prune"]
    else:
        mirror.parent.mkdir(parents=True, exist_ok=True)
        command = ["git", "clone", "--quiet", "--mirror", repo, str(mirror)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise ConfigError(f"cannot fetch {repo}: {done.stderr.strip()}")
    return str(mirror)


def _from_git(repo: str, revision: str, patterns: tuple[str, ...]
              ) -> tuple[dict[str, str], int, list[_Member], Callable[..., list[_Member]]]:
    """(manifest files, size, members read so far, reader of the others) for a commit.

    Digests known from earlier runs are reused (see gitsource); only unknown files are
    read now, or the whole tree when most are unknown (a first deploy).
    """
    tree = gitsource.list_tree(repo, revision)
    memory = gitsource.DigestMemory(CACHE_DIR, tree)
    digests, unknown = memory.lookup()
    whole = len(unknown) > max(50, len(tree.listing) // 4)
    read = gitsource.archive(tree, None if whole else unknown) if unknown else []
    digests.update(dict.fromkeys(unknown))  # None: git archive leaves the path out
    digests.update({info.name: gitsource.digest_of((info, body)) for info, body in read})
    memory.save(digests)
    files = {path: digest for path, digest in sorted(digests.items())
             if digest is not None and not excluded(path, patterns)}
    size = sum(tree.listing[path][1] for path in files if path in tree.listing)

    def fetch(paths: list[str] | None) -> list[_Member]:
        return [m for m in gitsource.archive(tree, paths) if not excluded(m[0].name, patterns)]

    return files, size, [m for m in read if not excluded(m[0].name, patterns)], fetch


def _from_directory(root: Path, patterns: tuple[str, ...]) -> list[_Member]:
    members: list[_Member] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames[:] = sorted(d for d in dirnames
                             if not excluded(os.path.join(rel_dir, d), patterns))
        for name in sorted(filenames) + [d for d in dirnames
                                         if os.path.islink(os.path.join(dirpath, d))]:
            rel = os.path.join(rel_dir, name)
            if excluded(rel, patterns):
                continue
            full = os.path.join(dirpath, name)
            info = tarfile.TarInfo(rel)
            stat = os.lstat(full)
            info.mtime = int(stat.st_mtime)
            info.mode = stat.st_mode & 0o7777
            if os.path.islink(full):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
                members.append((info, None))
            elif os.path.isfile(full):
                body = Path(full).read_bytes()
                info.size = len(body)
                members.append((info, body))
    return members


def _hash_members(members: list[_Member]) -> dict[str, str]:
    """The manifest's file table: sha256 of every file, `symlink:<target>` for links."""
    files: dict[str, str] = {}
    for info, body in members:
        if info.isfile() and body is not None:
            files[info.name] = hashlib.sha256(body).hexdigest()
        elif info.issym():
            files[info.name] = "symlink:" + info.linkname
    return files


def _write_members(out: IO[bytes], members: list[_Member]) -> None:
    """A gzip-compressed tar (level 1: cheap to make, several times smaller to send)."""
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1,
                      format=tarfile.PAX_FORMAT) as archive:
        for info, body in members:
            info.uid = info.gid = 0
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
