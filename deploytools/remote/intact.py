"""Which files of a release still hold what was shipped, without rereading them all.

A deploy starts its new release from the files of the previous one that are intact:
an in-place hotfix must never leak into the next release. Hashing every file proves
that, at the cost of reading the whole app on every deploy. So after a deploy, in the
background, the current release is verified once (verify.record_verified) and each
verified file's inode, size, mtime and *ctime* are recorded. The next deploy trusts a
file whose stat still matches the record and hashes only the rest.

When that verification found the whole tree clean (every file as shipped, no stray
module, every pyc matching its source), the record also keeps the tree's fingerprint:
one digest over the stat of every entry of the release (directories, pycs and the
targets of symlinked files included). `--skip-unchanged` may then prove "nothing
changed since it was verified" by stat alone, the same trust a deploy gives the record.

ctime is the anchor: no system call lets a user set it, and every write, chmod, rename
into a directory or link-count change moves it (a file's, or its directory's), so an
edit that restores mtime and size (`cp -p`, `touch -r`, `rsync -t --inplace`) is still
seen. The record is taken only once the clock has moved a timestamp tick past each
entry's last change, so that a later edit can never carry the same ctime. Links and
cleanups change ctimes too: those files are simply hashed again. `inv verify` never
uses the record; it always hashes.

The record lives outside deploy_to, in the SSH user's cache (one file per deploy_to,
for its current release), so that nothing under deploy_to changes behind a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

from deploytools.remote.releases import META_DIR, Layout, in_shared, write_atomic

FINE_TICK = 0.05  # seconds: ctime resolution on filesystems with sub-second timestamps
COARSE_TICK = 1.05  # ... and on those with whole seconds only


def intact_files(layout: Layout, release_id: str,
                 manifest: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """The release's regular files whose content matches its manifest (path -> sha256)."""
    record = read_record(layout, release_id)
    intact = {}
    for rel, digest, path, info in _shipped_files(layout, release_id, manifest):
        if record.get(rel) == [digest] + stat_key(info) or sha256(path) == digest:
            intact[rel] = digest
    return intact


class TreeState(NamedTuple):
    """One walk of a release: its fingerprint, and what recording needs from it."""

    fingerprint: str
    files: Dict[str, List[int]]  # regular files (path in release -> stat_key)
    newest_ctime_ns: int
    coarse: bool  # whole-second timestamps only


def tree_state(root: str) -> TreeState:
    """Walk `root` (symlinked directories not entered, its own .deploytools state left
    out) and digest every entry's type, inode, size, mtime and ctime; for a symlink, its
    target's too, since a symlinked module is imported from there. Any change a check
    could see moves it: nothing else is skipped, not even the directories the bytecode
    check passes over (a venv, .git), since the manifest may ship files there."""
    rows: List[Tuple[Any, ...]] = []
    files: Dict[str, List[int]] = {}
    stack = [(root, "")]
    while stack:
        path, rel = stack.pop()
        with os.scandir(path) as listing:
            for entry in listing:
                name = rel + entry.name
                info = entry.stat(follow_symlinks=False)
                key = stat_key(info)
                mode = info.st_mode
                if stat.S_ISDIR(mode):
                    if name != META_DIR:
                        stack.append((entry.path, name + "/"))
                elif stat.S_ISREG(mode):
                    files[name] = key
                elif stat.S_ISLNK(mode):
                    key = key + [os.readlink(entry.path), _target_key(entry.path)]
                rows.append((name, mode, key))
    rows.sort()
    ctimes = [row[2][4] for row in rows]
    return TreeState(hashlib.sha256(repr(rows).encode("utf-8", "surrogateescape")).hexdigest(),
                     files, max(ctimes, default=0),
                     all(ctime % 1_000_000_000 == 0 for ctime in ctimes))


def _target_key(path: str) -> Any:
    """A symlink's target, when it is a regular file (a symlinked module); directories
    are not entered by any check, so their changes do not matter."""
    try:
        info = os.stat(path)
    except OSError:
        return "dangling"
    return stat_key(info) if stat.S_ISREG(info.st_mode) else stat.S_IFMT(info.st_mode)


def settle(state: TreeState) -> None:
    """Wait until the clock is a timestamp tick past the tree's newest change: an edit
    after that can never carry a ctime the record holds."""
    tick = COARSE_TICK if state.coarse else FINE_TICK
    wait = state.newest_ctime_ns / 1e9 + tick - time.time()
    if wait > 0:
        time.sleep(min(wait, COARSE_TICK))


def stat_key(info: os.stat_result) -> List[int]:
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _shipped_files(layout: Layout, release_id: str, manifest: Optional[Dict[str, Any]] = None
                   ) -> Iterator[Tuple[str, str, str, os.stat_result]]:
    """(path in release, sha256, full path, lstat) of the manifest's regular files that
    are the release's own (not links into shared/)."""
    if manifest is None:
        manifest = layout.manifest(release_id) or {}
    root = layout.release(release_id).rstrip("/") + "/"
    shared = tuple(manifest.get("shared_paths") or [])
    lstat, is_regular = os.lstat, stat.S_ISREG  # a loop over every file of the app
    for rel, digest in (manifest.get("files") or {}).items():
        if digest.startswith("symlink:") or (shared and in_shared(rel, shared)):
            continue
        path = root + rel  # manifest paths are relative and normalised
        try:
            info = lstat(path)
        except OSError:
            continue
        if is_regular(info.st_mode):
            yield rel, digest, path, info


def record_dirs() -> Tuple[str, ...]:
    """Where records live: the SSH user's cache only. A record lets files go unhashed,
    so it is never kept where another user could plant one (no /tmp fallback: without
    a cache, every file is hashed)."""
    return (os.path.expanduser("~/.cache/deploytools/intact"),)


def _private(folder: str, parent_only: bool = False) -> bool:
    """True if `folder` and its parent (the agent cache) are real directories of the
    SSH user that no one else may write: a record elsewhere could be forged."""
    paths = (os.path.dirname(folder),) if parent_only else (os.path.dirname(folder), folder)
    for path in paths:
        try:
            info = os.lstat(path)
        except OSError:
            return False
        if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
                or info.st_mode & 0o077):
            return False
    return True


def _record_path(layout: Layout, folder: str) -> str:
    key = hashlib.sha256(os.path.realpath(layout.deploy_to).encode()).hexdigest()[:24]
    return os.path.join(folder, key + ".json")


def read_record(layout: Layout, release_id: str) -> Dict[str, List[Any]]:
    """The recorded stat of the release's intact files (path -> [sha256] + stat_key)."""
    return _read_document(layout, release_id).get("files") or {}


def read_tree(layout: Layout, release_id: str) -> Optional[Dict[str, Any]]:
    """The fingerprint of the release's tree as it was when verified clean, if it was."""
    return _read_document(layout, release_id).get("tree")


def _read_document(layout: Layout, release_id: str) -> Dict[str, Any]:
    for folder in record_dirs():
        if not _private(folder):
            continue
        try:
            with open(_record_path(layout, folder)) as fh:
                document = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and document.get("release") == release_id:
            return document
    return {}


def write_record(layout: Layout, release_id: str, files: Dict[str, List[Any]],
                 tree: Optional[Dict[str, Any]] = None) -> None:
    text = json.dumps({"release": release_id, "deploy_to": layout.deploy_to, "files": files,
                       "tree": tree})
    for folder in record_dirs():
        try:
            os.makedirs(os.path.dirname(folder), mode=0o700, exist_ok=True)
            if not _private(folder, parent_only=True):
                continue
            os.makedirs(folder, mode=0o700, exist_ok=True)
            if not _private(folder):
                continue
            write_atomic(_record_path(layout, folder), text)
            return
        except OSError:
            continue
