"""Where a release's files come from: a git revision (a local repository, or a git URL
mirrored into the cache) or a directory, read as tar members with the manifest's file
table.

Neither ever yields `.git`, `__pycache__` or `*.pyc`/`*.pyo` (bytecode is produced for
the target interpreter on purpose, never carried along by accident), and a file name
that is not UTF-8 is refused before anything is planned.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import subprocess
import tarfile
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from deploytools import gitsource
from deploytools.archives import Member, digest_of
from deploytools.errors import ConfigError

ALWAYS_EXCLUDED = (".git", "__pycache__", "*.pyc", "*.pyo")

Fetch = Callable[[list[str] | None], list[Member]]  # reads members not read yet (None: all)
# (manifest files, size in bytes, members read so far, reader of the others if any)
Read = tuple[dict[str, str], int, list[Member], Fetch | None]


def excluded(relpath: str, patterns: tuple[str, ...]) -> bool:
    """True when a path or any of its parent directories matches a pattern."""
    match = _matcher(patterns)
    parts = relpath.split("/")
    if match(relpath) or any(match(part) for part in parts):
        return True
    return any(match("/".join(parts[:i])) for i in range(1, len(parts)))


@lru_cache(maxsize=16)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    """One compiled regex for all the patterns (fnmatch per pattern and path part cost
    1.8 CPU-s for a 2,000-module tree)."""
    every = ALWAYS_EXCLUDED + tuple(p.rstrip("/") for p in patterns)
    return re.compile("|".join(fnmatch.translate(p) for p in every)).match


def refuse_non_utf8(names: Iterable[str], where: str) -> None:
    """Manifests, the wire and the hosts' checks are UTF-8: a file name that is not
    (it arrives with surrogate escapes) is a planning error naming it, not a traceback."""
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raw = os.fsencode(name)
            raise ConfigError(f"{where}: file name {raw!r} is not valid UTF-8; rename it "
                              "(or exclude it with source.exclude)") from None


# ------------------------------------------------------------------------------- git


def resolve_revision(source: Mapping[str, Any], ref: str, repo: str | None = None) -> str | None:
    """The full commit sha of `ref` in the source repository, or None if it names none."""
    repo = repo or source.get("repo")
    if not repo or not os.path.isdir(repo):
        return None
    done = subprocess.run(["git", "-C", repo, "rev-parse", "--verify", "--quiet",
                           f"{ref}^{{commit}}"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None if done.returncode == 0 else None


def local_repo(repo: str, cache_dir: Path) -> str:
    """A local path is used as is; a URL is mirrored once into the cache and fetched."""
    if os.path.isdir(repo):
        return repo
    if "://" not in repo and "@" not in repo:
        raise ConfigError(f"source.repo {repo} is not a directory or a git URL")
    mirror = cache_dir / "git" / hashlib.sha1(repo.encode()).hexdigest()[:16]
    if mirror.is_dir():
        command = ["git", "-C", str(mirror), "remote", "update", "--prune"]
    else:
        mirror.parent.mkdir(parents=True, exist_ok=True)
        command = ["git", "clone", "--quiet", "--mirror", repo, str(mirror)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise ConfigError(f"cannot fetch {repo}: {done.stderr.strip()}")
    return str(mirror)


def from_git(repo: str, revision: str, patterns: tuple[str, ...], cache_dir: Path) -> Read:
    """A commit's files.

    Digests known from earlier runs are reused (see gitsource); only unknown files are
    read now, or the whole tree when most are unknown (a first deploy).
    """
    tree = gitsource.list_tree(repo, revision)
    memory = gitsource.DigestMemory(cache_dir, tree)
    digests, sizes, unknown = memory.lookup()
    whole = len(unknown) > max(50, len(tree.listing) // 4)
    read = gitsource.archive(tree, None if whole else unknown) if unknown else []
    digests.update(dict.fromkeys(unknown))  # None: git archive leaves the path out
    digests.update({info.name: digest_of((info, body)) for info, body in read})
    sizes.update({info.name: info.size for info, _ in read})
    memory.save(digests, sizes)
    files = {path: digest for path, digest in sorted(digests.items())
             if digest is not None and not excluded(path, patterns)}
    size = sum(sizes.get(path, 0) for path in files)

    def fetch(paths: list[str] | None) -> list[Member]:
        return [m for m in gitsource.archive(tree, paths) if not excluded(m[0].name, patterns)]

    return files, size, [m for m in read if not excluded(m[0].name, patterns)], fetch


# ------------------------------------------------------------------------- directory


def from_directory(root: Path, patterns: tuple[str, ...]) -> Read:
    """A directory's files, all read now (links are kept as links, never followed)."""
    members: list[Member] = []
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
    files = {info.name: digest for info, body in members
             if (digest := digest_of((info, body))) is not None}
    size = sum(len(body) for _, body in members if body is not None)
    return files, size, members, None
