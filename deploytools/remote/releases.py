"""The release layout on a host: releases/, current, shared/, lock and history.

Runs on the host (stdlib only, Python 3.8+). Layout, Capistrano-compatible:

    {deploy_to}/releases/<id>/            the release; .deploytools/release.json is its manifest
    {deploy_to}/releases/<id>/.deploytools/FAILED   present when the release failed
    {deploy_to}/current -> releases/<id>   relative symlink, replaced only by rename(2)
    {deploy_to}/shared/                    linked files and dirs
    {deploy_to}/.deploytools/lock/         deploy lock (atomic mkdir), owner.json inside
    {deploy_to}/.deploytools/history.jsonl one JSON line per deploy/rollback/failure
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from typing import Any, Dict, List, Optional

META_DIR = ".deploytools"
MANIFEST = "release.json"
FAILED_MARK = "FAILED"
STATE_FILE = "state.json"  # mutable facts about a release (switched_at), apart from the manifest
PARTIAL_PREFIX = ".partial-"
TRASH_PREFIX = ".trash-"


class Layout:
    """Every remote path in one place, derived from deploy_to."""

    def __init__(self, deploy_to: str) -> None:
        self.deploy_to = deploy_to.rstrip("/") or "/"
        self.releases = os.path.join(self.deploy_to, "releases")
        self.current = os.path.join(self.deploy_to, "current")
        self.shared = os.path.join(self.deploy_to, "shared")
        self.meta = os.path.join(self.deploy_to, META_DIR)
        self.lock = os.path.join(self.meta, "lock")
        self.history = os.path.join(self.meta, "history.jsonl")
        self.served_log = os.path.join(self.meta, "served.jsonl")

    def release(self, release_id: str) -> str:
        if not release_id or "/" in release_id or release_id in (".", "..") or \
                release_id.startswith("."):
            raise ValueError("invalid release id %r" % release_id)
        return os.path.join(self.releases, release_id)

    def partial(self, release_id: str) -> str:
        self.release(release_id)
        return os.path.join(self.releases, PARTIAL_PREFIX + release_id)

    def ensure(self) -> None:
        for path in (self.deploy_to, self.releases, self.shared, self.meta):
            os.makedirs(path, exist_ok=True)

    # ------------------------------------------------------------------ current

    def current_id(self) -> Optional[str]:
        """The release `current` points to, or None (no symlink / dangling)."""
        try:
            target = os.readlink(self.current)
        except OSError:
            return None
        release_id = os.path.basename(target.rstrip("/"))
        return release_id if os.path.isdir(self.release(release_id)) else None

    def switch(self, release_id: str) -> None:
        """Point `current` at a release atomically: new symlink, then rename(2) over."""
        if not os.path.isdir(self.release(release_id)):
            raise RuntimeError("release %s does not exist" % release_id)
        tmp = "%s.tmp-%s-%d" % (self.current, release_id, os.getpid())
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.path.join("releases", release_id), tmp)
        os.replace(tmp, self.current)
        # informational: the switch itself is done, and a full disk must not undo it
        with contextlib.suppress(OSError):
            self.write_state(release_id, switched_at=time.time())

    # ------------------------------------------------------------------ release facts

    def manifest(self, release_id: str) -> Optional[Dict[str, Any]]:
        try:
            with open(os.path.join(self.release(release_id), META_DIR, MANIFEST)) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def placeholders(self, release_id: str, base: Dict[str, str]) -> Dict[str, str]:
        """Values for {release}, {revision} and {deploy_to} on top of the controller's.
        The revision comes from the small state summary when prepare wrote one, not from
        the manifest (its file table is the largest JSON on the host)."""
        facts = self.state(release_id)
        if "revision" not in facts:
            facts = self.manifest(release_id) or {}
        values = dict(base)
        values.update({"release": release_id, "revision": str(facts.get("revision") or ""),
                       "deploy_to": self.deploy_to})
        return values

    def state(self, release_id: str) -> Dict[str, Any]:
        try:
            with open(os.path.join(self.release(release_id), META_DIR, STATE_FILE)) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def write_state(self, release_id: str, **values: Any) -> None:
        state = self.state(release_id)
        state.update(values)
        meta = os.path.join(self.release(release_id), META_DIR)
        os.makedirs(meta, exist_ok=True)
        write_atomic(os.path.join(meta, STATE_FILE), json.dumps(state, sort_keys=True))

    def failure(self, release_id: str) -> Optional[str]:
        try:
            with open(os.path.join(self.release(release_id), META_DIR, FAILED_MARK)) as fh:
                return fh.read().strip() or "failed"
        except OSError:
            return None

    def mark_failed(self, release_id: str, reason: str) -> None:
        meta = os.path.join(self.release(release_id), META_DIR)
        if os.path.isdir(os.path.dirname(meta)):
            os.makedirs(meta, exist_ok=True)
            write_atomic(os.path.join(meta, FAILED_MARK), reason + "\n")

    def release_ids(self) -> List[str]:
        """Complete releases, oldest first (ids sort by time)."""
        try:
            names = os.listdir(self.releases)
        except OSError:
            return []
        return sorted(
            n for n in names
            if not n.startswith(".") and os.path.isdir(os.path.join(self.releases, n))
        )

    def good_ids(self) -> List[str]:
        return [r for r in self.release_ids() if self.failure(r) is None]

    def previous_good(self, before: Optional[str]) -> Optional[str]:
        """The newest good release older than `before` (rollback's default target)."""
        older = [r for r in self.good_ids() if before is None or r < before]
        return older[-1] if older else None

    def record_served(self, release_id: str, action: str) -> None:
        """A release passed its health check and serves: the order of these records (not
        the order of names) decides rollback targets and what cleanup keeps."""
        with contextlib.suppress(OSError):  # best effort: a host with a full disk serves
            self.write_state(release_id, served_at=time.time())
            self._append(self.served_log, {"release": release_id, "at": time.time(),
                                           "action": action})

    def served_stack(self) -> List[str]:
        """Releases in the order they served, as a stack: a deploy pushes its release, a
        rollback to X pops everything above X (so a second rollback goes further back,
        never to the release just rolled back from)."""
        stack: List[str] = []
        for entry in self._read_lines(self.served_log, 1000):
            release_id = entry.get("release")
            if not isinstance(release_id, str):
                continue
            if entry.get("action") == "rollback" and release_id in stack:
                del stack[stack.index(release_id) + 1:]
                continue
            if release_id in stack:
                stack.remove(release_id)
            stack.append(release_id)
        return stack

    def rollback_target(self) -> Optional[str]:
        """The release that served before current and still can: passed a health check
        here, exists, not marked failed. Hosts without a served record (deployed by an
        older deploytools) fall back to the newest good release older than current."""
        current = self.current_id()
        stack = self.served_stack()
        if not stack:
            return self.previous_good(current)
        for release_id in reversed(stack):
            if release_id != current and release_id in self.release_ids() and \
                    self.failure(release_id) is None:
                return release_id
        return None

    def describe(self) -> List[Dict[str, Any]]:
        current = self.current_id()
        rows = []
        for release_id in self.release_ids():
            state = self.state(release_id)
            # the summary copied into state.json spares parsing every large manifest
            manifest = state if "revision" in state else (self.manifest(release_id) or {})
            rows.append({
                "id": release_id,
                "current": release_id == current,
                "revision": manifest.get("revision"),
                "ref": manifest.get("ref"),
                "created_at": manifest.get("created_at"),
                "deployed_by": manifest.get("deployed_by"),
                "switched_at": state.get("switched_at"),
                "failed": self.failure(release_id),
            })
        return rows

    # ------------------------------------------------------------------ cleanup

    def cleanup(self, keep: int) -> List[str]:
        """Remove old releases: keep `keep` good ones, never current or the previous good.

        Failed releases never count against `keep`; those older than current are
        removed (the post-mortem of a newer failed one stays until the next good deploy).
        Leftover partial directories of interrupted runs are removed too.
        """
        current = self.current_id()
        good = self.good_ids()
        protected = set(good[-keep:]) if keep > 0 else set()
        if current:
            protected.add(current)
            for previous in (self.previous_good(current), self.rollback_target()):
                if previous:
                    protected.add(previous)
        removed = []
        for release_id in self.release_ids():
            if release_id in protected:
                continue
            failed = self.failure(release_id) is not None
            if failed and (current is None or release_id > current):
                continue
            if not failed and release_id not in good[:-keep]:
                continue
            self.discard(self.release(release_id))
            removed.append(release_id)
        for name in os.listdir(self.releases):
            if name.startswith(PARTIAL_PREFIX) and not self.lock_owner_matches_partial(name):
                self.discard(os.path.join(self.releases, name))
        return removed

    def discard(self, path: str) -> None:
        """Take a directory out of the layout at once (rename into the trash); its files
        are deleted by empty_trash, off the deploy's critical path (in the background)."""
        if os.path.lexists(path):
            trash = os.path.join(self.releases, "%s%s-%d" % (
                TRASH_PREFIX, os.path.basename(path).lstrip("."), os.getpid()))
            os.rename(path, trash)

    def trash(self) -> List[str]:
        try:
            return [os.path.join(self.releases, n) for n in os.listdir(self.releases)
                    if n.startswith(TRASH_PREFIX)]
        except OSError:
            return []

    def has_trash(self) -> bool:
        return bool(self.trash())

    def empty_trash(self) -> None:
        """Delete trashed directories (thousands of files take a while: the agent runs
        this in the background; a later run finishes any leftovers)."""
        for path in self.trash():
            shutil.rmtree(path, ignore_errors=True)

    def lock_owner_matches_partial(self, name: str) -> bool:
        """A partial dir belongs to the run holding the lock: never sweep it from under it."""
        owner = self.lock_owner() or {}
        return owner.get("release") == name[len(PARTIAL_PREFIX):]

    # ------------------------------------------------------------------ lock

    def lock_owner(self) -> Optional[Dict[str, Any]]:
        try:
            with open(os.path.join(self.lock, "owner.json")) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {} if os.path.isdir(self.lock) else None

    def acquire_lock(self, owner: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Take the lock atomically. Returns None when taken, else the holder.

        The lock directory is built aside with its owner record, then renamed into
        place, so no lock ever exists without saying who holds it (a crash between
        mkdir and writing the record would otherwise leave an anonymous lock)."""
        self.ensure()
        aside = os.path.join(self.meta, ".lock-%d-%s" % (os.getpid(), owner.get("token", "")))
        shutil.rmtree(aside, ignore_errors=True)
        os.mkdir(aside)
        write_atomic(os.path.join(aside, "owner.json"), json.dumps(owner, sort_keys=True))
        try:
            os.rename(aside, self.lock)
        except OSError:
            shutil.rmtree(aside, ignore_errors=True)
            return self.lock_owner() or {"owner": "unknown (no owner.json)"}
        return None

    def rewrite_lock_owner(self, token: Optional[str], **values: Any) -> None:
        """Add facts to the owner record of the lock `token` holds (nothing otherwise)."""
        owner = self.lock_owner()
        if owner is None or owner.get("token") != token:
            return
        owner.update(values)
        write_atomic(os.path.join(self.lock, "owner.json"), json.dumps(owner, sort_keys=True))

    def release_lock(self, token: Optional[str], force: bool = False) -> bool:
        """Remove the lock if `token` owns it (or force). True when removed."""
        owner = self.lock_owner()
        if owner is None:
            return False
        if not force and owner.get("token") != token:
            return False
        shutil.rmtree(self.lock, ignore_errors=True)
        return True

    # ------------------------------------------------------------------ history

    def append_history(self, entry: Dict[str, Any]) -> None:
        self._append(self.history, entry)

    def read_history(self, limit: int = 50) -> List[Dict[str, Any]]:
        return self._read_lines(self.history, limit)

    def _append(self, path: str, entry: Dict[str, Any]) -> None:
        """One JSON line, appended in a single write (O_APPEND keeps lines whole)."""
        os.makedirs(self.meta, exist_ok=True)
        line = json.dumps(entry, sort_keys=True) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    @staticmethod
    def _read_lines(path: str, limit: int) -> List[Dict[str, Any]]:
        try:
            with open(path) as fh:
                lines = fh.readlines()[-limit:]
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def files_digest(files: Dict[str, str]) -> str:
    """One digest for a whole manifest's file table: the host checks the manifest it
    assembled against the controller's (both sides use this function)."""
    text = "\n".join("%s %s" % (k, v) for k, v in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def in_shared(rel: str, shared_paths: "list[str] | tuple[str, ...]") -> bool:
    """Whether a release path lies in a shared path (replaced by a link into shared/)."""
    return any(rel == p or rel.startswith(p + "/") for p in shared_paths)


def write_atomic(path: str, text: str) -> None:
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
