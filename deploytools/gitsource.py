"""A git revision's files for the plan step, without reading the whole tree each run.

`git archive` is the truth about what a revision ships: it applies export-ignore,
export-subst and end-of-line attributes. But reading and hashing its whole output is
most of a redeploy's planning. `git ls-tree` lists every file with its blob id in one
quick call, and a blob at a path archives to the same bytes as long as the attribute
files and git settings are the same. So the sha256 of each (blob, path) is remembered
between runs under a fingerprint of those; the manifest of a revision that differs by
one module needs one file read, and bodies come from `git archive` only for the paths
something needs (a host lacks them, or they are to be compiled).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from deploytools.archives import Member
from deploytools.errors import ConfigError

PATHS_PER_CALL = 200  # pathspecs per `git archive` command line


@dataclass
class GitTree:
    """One revision's file listing: path -> blob id, and its attributes'
    fingerprint (what else decides the archived bytes)."""

    repo: str
    revision: str
    listing: dict[str, str]
    fingerprint: str


def list_tree(repo: str, revision: str) -> GitTree:
    listing: dict[str, str] = {}
    attributes = []
    # no -l: sizes would make git open every blob (0.6 CPU-s for 2,000 loose objects);
    # they come from DigestMemory, or from the files read
    for record in _git(repo, "ls-tree", "-r", "-z", "--full-tree", revision).split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        _, kind, blob = meta.split()
        if kind != b"blob":
            continue  # a submodule: git archive leaves it out too
        path = raw_path.decode("utf-8", "surrogateescape")
        listing[path] = blob.decode()
        if path.rpartition("/")[2] == ".gitattributes":
            attributes.append(f"{path} {blob.decode()}")
    return GitTree(repo, revision, listing, _fingerprint(repo, revision, attributes))


def _fingerprint(repo: str, revision: str, attributes: list[str]) -> str:
    """Attribute files (in the tree, the repository's, the user's) and git's settings:
    any change to these may change archived bytes, so the memory starts over.
    export-subst makes bytes depend on the commit itself: then nothing carries over."""
    git_dir = _git(repo, "rev-parse", "--absolute-git-dir").decode().strip()
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    texts = [_git(repo, "cat-file", "blob", entry.rpartition(" ")[2]) for entry in attributes]
    for path in (os.path.join(git_dir, "info", "attributes"),
                 os.path.join(xdg, "git", "attributes")):
        try:
            texts.append(Path(path).read_bytes())
        except OSError:
            texts.append(b"-")
    texts.append(_git(repo, "config", "--list", "--includes", check=False))
    if any(b"export-subst" in text for text in texts):
        texts.append(revision.encode())
    digest = hashlib.sha256()
    for text in [*sorted(attributes), *texts]:
        digest.update(hashlib.sha256(text if isinstance(text, bytes) else text.encode()).digest())
    return digest.hexdigest()


def archive(tree: GitTree, paths: list[str] | None = None) -> list[Member]:
    """`git archive` members of these paths (all when None), parsed in memory."""
    if paths is None:
        return _parse(_git(tree.repo, "archive", "--format=tar", tree.revision))
    members: list[Member] = []
    for start in range(0, len(paths), PATHS_PER_CALL):
        specs = [":(literal)" + p for p in paths[start:start + PATHS_PER_CALL]]
        members += _parse(_git(tree.repo, "archive", "--format=tar", tree.revision, "--",
                               *specs))
    return [m for m in members if not m[0].isdir()]


def _parse(data: bytes) -> list[Member]:
    """`git archive` output as members. git writes plain ustar headers (a pax header only
    for its global comment and for names too long for ustar): those are read here
    directly, at a tenth of tarfile's cost per member; any other archive, or any header
    this reader does not know, goes through tarfile."""
    members = _parse_ustar(data)
    return members if members is not None else _parse_with_tarfile(data)


def _parse_with_tarfile(data: bytes) -> list[Member]:
    members: list[Member] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            name = info.name.rstrip("/")
            if name in ("", "pax_global_header"):
                continue
            info.name = name
            body = tar.extractfile(info).read() if info.isfile() else None  # type: ignore[union-attr]
            members.append((info, body))
    return members


_EMPTY_BLOCK = bytes(tarfile.BLOCKSIZE)


def _parse_ustar(data: bytes) -> list[Member] | None:
    """Members of a ustar archive holding only files, symlinks and directories (pax
    global headers skipped), as tarfile would give them; None for anything else."""
    members: list[Member] = []
    offset = 0
    while offset + tarfile.BLOCKSIZE <= len(data):
        block = data[offset:offset + tarfile.BLOCKSIZE]
        if block == _EMPTY_BLOCK:
            return members
        if block[257:265] != b"ustar\x0000" or _octal(block[148:156]) != \
                sum(block) - sum(block[148:156]) + 256:  # the checksum counts itself as spaces
            return None
        kind, size = block[156:157], _octal(block[124:136])
        start = offset + tarfile.BLOCKSIZE
        offset = start + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        if kind == tarfile.XGLTYPE:
            continue
        if kind not in (tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE) or size < 0 \
                or offset > len(data):
            return None
        name, prefix = _text(block[:100]), _text(block[345:500])
        info = tarfile.TarInfo((prefix + "/" + name if prefix else name).rstrip("/"))
        info.type, info.size = kind, size if kind == tarfile.REGTYPE else 0
        info.mode, info.uid, info.gid = (_octal(block[100:108]), _octal(block[108:116]),
                                         _octal(block[116:124]))
        info.mtime, info.linkname = _octal(block[136:148]), _text(block[157:257])
        if min(info.mode, info.uid, info.gid, info.mtime) < 0:
            return None
        info.uname, info.gname = _text(block[265:297]), _text(block[297:329])
        if info.name:
            members.append((info, data[start:start + size] if kind == tarfile.REGTYPE
                            else None))
    return None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _octal(field: bytes) -> int:
    """A ustar number; base-256 and garbage fail as -1, which no caller accepts."""
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        return -1


class DigestMemory:
    """sha256 per (blob, path) from earlier runs, valid under one fingerprint; saved
    for the latest tree only, so it never grows beyond one revision's files."""

    def __init__(self, cache_dir: Path, tree: GitTree) -> None:
        key = hashlib.sha256(os.path.realpath(tree.repo).encode()).hexdigest()[:16]
        self.path = cache_dir / "digests" / f"{key}.json"
        self.tree = tree
        try:
            document = json.loads(self.path.read_text())
        except (OSError, ValueError):
            document = {}
        same = isinstance(document, dict) and document.get("fingerprint") == tree.fingerprint
        self.known: dict[str, str | None] = document.get("files", {}) if same else {}
        self.sizes: dict[str, int] = document.get("sizes", {}) if same else {}

    def lookup(self) -> tuple[dict[str, str | None], dict[str, int], list[str]]:
        """(path -> digest, or None when git archive leaves it out), path -> size, and
        unknown paths."""
        found: dict[str, str | None] = {}
        sizes: dict[str, int] = {}
        unknown = []
        for path, blob in self.tree.listing.items():
            key = f"{blob} {path}"
            if key in self.known and key in self.sizes:
                found[path] = self.known[key]
                sizes[path] = self.sizes[key]
            else:
                unknown.append(path)
        return found, sizes, unknown

    def save(self, digests: dict[str, str | None], sizes: dict[str, int]) -> None:
        keys = {p: f"{self.tree.listing[p]} {p}" for p in digests if p in self.tree.listing}
        files = {key: digests[p] for p, key in keys.items()}
        known_sizes = {key: sizes.get(p, 0) for p, key in keys.items()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"fingerprint": self.tree.fingerprint, "files": files,
                                       "sizes": known_sizes}))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a cache: the next run reads the archive again


def _git(repo: str, *args: str, check: bool = True) -> bytes:
    done = subprocess.run(["git", "-C", repo, *args], capture_output=True, check=False)
    if check and done.returncode:
        raise ConfigError(f"git {args[0]} failed: {done.stderr.decode().strip()}")
    return done.stdout
