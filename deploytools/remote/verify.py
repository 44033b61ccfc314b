"""The proof checks, run on the host in one round trip (stdlib only, read-only).

Each check returns a row ``{"check", "ok", "detail", "evidence", "fix"}``: what was
looked at, what was found, and what would fix it. Nothing here writes to the host.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Union

from deploytools.remote import bytecode, health, intact, processes, protocol
from deploytools.remote.intact import sha256
from deploytools.remote.releases import META_DIR, Layout, in_shared
from deploytools.remote.supervisor import connect

# inv verify, and --skip-unchanged's preflight, carry the checks' inputs
Checks = Union[protocol.Verify, protocol.Preflight]

FIX_RESTART = "restart from the current release: `inv clear-cache --restart` or `inv deploy`"
FIX_REDEPLOY = "redeploy: `inv deploy` (a release must never be edited in place)"
# How long verify waits for a just-started process to exec its program.
SETTLE_TIMEOUT = 5.0


def row(check: str, ok: bool, detail: str, evidence: Any = None,
        fix: Optional[str] = None) -> Dict[str, Any]:
    return {"check": check, "ok": ok, "detail": detail, "evidence": evidence,
            "fix": None if ok else fix}


def verify(req: Checks, trust_record: bool = False) -> Dict[str, Any]:
    """Every check of the current release. With `trust_record` (--skip-unchanged), the
    content checks may be answered by the tree's fingerprint, as verified clean after
    its deploy (intact.py); `inv verify` always reads every file."""
    layout = Layout(req.deploy_to)
    rows: List[Dict[str, Any]] = []
    release_id = layout.current_id()
    current_row = check_current(layout, release_id, req.expect)
    rows.append(current_row)
    if not current_row["ok"] and release_id is None:
        return {"release": None, "checks": rows, "lock": layout.lock_owner()}
    release_dir = layout.release(release_id)
    manifest = layout.manifest(release_id) or {}
    recorded = unchanged_since_verified(layout, release_id, manifest) if trust_record else None
    if recorded:
        rows.extend(recorded)
    else:
        source_hashes: Dict[str, bytes] = {}
        rows.append(check_integrity(layout, release_id, manifest, source_hashes))
        rows.append(check_bytecode(release_dir, source_hashes))
    rows.extend(check_processes(layout, release_id, req))
    if (req.health or {}).get("url"):
        rows.append(check_health(layout, release_id, req))
    return {"release": release_id, "revision": manifest.get("revision"), "checks": rows,
            "lock": layout.lock_owner()}


def check_current(layout: Layout, release_id: Optional[str],
                  expect: Optional[str]) -> Dict[str, Any]:
    if not os.path.islink(layout.current):
        return row("current", False, "%s is not a symlink" % layout.current,
                   fix="deploy a release: `inv deploy`")
    target = os.readlink(layout.current)
    if release_id is None:
        return row("current", False, "current -> %s does not resolve to a release" % target,
                   fix="`inv rollback --to ID` to a release that exists")
    manifest = layout.manifest(release_id)
    if not manifest or manifest.get("id") != release_id:
        return row("current", False, "releases/%s has no valid manifest" % release_id,
                   evidence=target, fix=FIX_REDEPLOY)
    evidence = {"release": release_id, "revision": manifest.get("revision"), "link": target}
    if expect and not matches(expect, release_id, manifest.get("revision")):
        return row("current", False, "current is %s (revision %s), expected %s" % (
            release_id, str(manifest.get("revision"))[:12], expect), evidence,
            fix="deploy or roll back to %s" % expect)
    failed = layout.failure(release_id)
    if failed:
        return row("current", False, "current release %s is marked failed: %s"
                   % (release_id, failed), evidence, fix="`inv rollback`")
    return row("current", True, "current -> releases/%s (revision %s)"
               % (release_id, str(manifest.get("revision"))[:12]), evidence)


def matches(expect: str, release_id: str, revision: Optional[str]) -> bool:
    if expect == release_id:
        return True
    return bool(revision) and len(expect) >= 7 and str(revision).startswith(expect)


def integrity_changes(release_dir: str, manifest: Dict[str, Any],
                      source_hashes: Optional[Dict[str, bytes]] = None) -> Dict[str, List[str]]:
    """Files that differ from the manifest: changed, missing, and .py files never shipped.
    `source_hashes` collects each module's import-system hash on the way (one read per
    file serves both this check and the bytecode check)."""
    files: Dict[str, str] = manifest.get("files") or {}
    skip = set(manifest.get("shared_paths") or [])
    changed, missing = [], []
    for rel, digest in sorted(files.items()):
        if in_shared(rel, skip):
            continue  # replaced by a link into shared/
        path = os.path.join(release_dir, rel)
        try:
            if digest.startswith("symlink:"):
                if os.readlink(path) != digest[len("symlink:"):]:
                    changed.append(rel)
            else:
                with open(path, "rb") as fh:
                    data = fh.read()
                if hashlib.sha256(data).hexdigest() != digest:
                    changed.append(rel)
                if source_hashes is not None and rel.endswith(".py"):
                    source_hashes[path] = importlib.util.source_hash(data)
        except OSError:
            missing.append(rel)
    extra = sorted(rel for rel in python_files(release_dir, skip) if rel not in files)
    return {"changed": changed, "missing": missing, "unshipped": extra}


def acknowledge_edits(layout: Layout, release_id: str) -> List[str]:
    """Record the release's in-place edits as deliberate (`inv clear-cache` does this).

    The manifest stays as shipped; the record (path -> sha256 now) lives beside it, so
    verify can tell an acknowledged hotfix from an unexplained change.
    """
    release_dir = layout.release(release_id)
    changes = integrity_changes(release_dir, layout.manifest(release_id) or {})
    edits = {}
    for rel in changes["changed"] + changes["unshipped"]:
        path = os.path.join(release_dir, rel)
        edits[rel] = "symlink:" + os.readlink(path) if os.path.islink(path) else sha256(path)
    for rel in changes["missing"]:
        edits[rel] = "deleted"
    layout.write_state(release_id, in_place_edits=edits, edits_acknowledged_at=time.time())
    return sorted(edits)


def check_integrity(layout: Layout, release_id: str, manifest: Dict[str, Any],
                    source_hashes: Optional[Dict[str, bytes]] = None) -> Dict[str, Any]:
    release_dir = layout.release(release_id)
    changes = integrity_changes(release_dir, manifest, source_hashes)
    acknowledged = layout.state(release_id).get("in_place_edits") or {}
    unexplained: Dict[str, List[str]] = {}
    for kind, paths in changes.items():
        for rel in paths:
            path = os.path.join(release_dir, rel)
            now = "deleted" if kind == "missing" else (
                "symlink:" + os.readlink(path) if os.path.islink(path) else sha256(path))
            if acknowledged.get(rel) != now:
                unexplained.setdefault(kind, []).append(rel)
    count = len(manifest.get("files") or {})
    evidence = dict(changes, acknowledged=sorted(acknowledged))
    if unexplained:
        detail = "; ".join("%d %s (%s)" % (len(v), k.replace("unshipped", ".py not shipped"),
                                            ", ".join(v[:5])) for k, v in unexplained.items())
        return row("integrity", False, detail, evidence,
                   FIX_REDEPLOY + ", or acknowledge a deliberate hotfix with "
                   "`inv clear-cache --restart`")
    note = ""
    if acknowledged:
        note = "; %d in-place edits acknowledged by clear-cache (%s)" % (
            len(acknowledged), ", ".join(sorted(acknowledged)[:5]))
    return row("integrity", True, "%d files match the manifest%s" % (count, note), evidence)


def record_verified(layout: Layout, release_id: str) -> int:
    """Verify the release's content once, after its deploy (in the background), and
    record it for the next run (intact.py): the stat of each intact file, and the tree's
    fingerprint when it is clean and did not change while it was read. Returns how many
    files were recorded."""
    root = layout.release(release_id)
    manifest = layout.manifest(release_id) or {}
    try:
        before = intact.tree_state(root)
    except OSError:
        return 0
    intact.settle(before)
    source_hashes: Dict[str, bytes] = {}
    changes = integrity_changes(root, manifest, source_hashes)
    spoilt = set(changes["changed"]) | set(changes["missing"])
    shared = tuple(manifest.get("shared_paths") or [])
    files = {rel: [digest] + before.files[rel]
             for rel, digest in (manifest.get("files") or {}).items()
             if rel in before.files and rel not in spoilt and not in_shared(rel, shared)}
    tree = None
    pycs = check_bytecode(root, source_hashes)
    try:
        unchanged = intact.tree_state(root).fingerprint == before.fingerprint
    except OSError:
        unchanged = False
    if unchanged and pycs["ok"] and not any(changes.values()):
        tree = dict(fingerprint=before.fingerprint, checked_at=time.time(),
                    **_tree_conditions(manifest), files=len(manifest.get("files") or {}),
                    bytecode=pycs["evidence"])
    intact.write_record(layout, release_id, files, tree)
    return len(files)


def _tree_conditions(manifest: Dict[str, Any]) -> Dict[str, str]:
    """What else the content checks' verdict rests on: the manifest it compared with and
    the interpreter whose pycs it checked."""
    text = json.dumps(manifest, sort_keys=True).encode()
    return {"manifest": hashlib.sha256(text).hexdigest(),
            "cache_tag": str(sys.implementation.cache_tag),
            "magic": importlib.util.MAGIC_NUMBER.hex()}


def unchanged_since_verified(layout: Layout, release_id: str, manifest: Dict[str, Any]
                             ) -> Optional[List[Dict[str, Any]]]:
    """The integrity and bytecode rows, proven by stat alone: None unless the release's
    tree has exactly the fingerprint it had when it was last verified clean."""
    tree = intact.read_tree(layout, release_id)
    if not tree or any(tree.get(k) != v for k, v in _tree_conditions(manifest).items()):
        return None
    try:
        if intact.tree_state(layout.release(release_id)).fingerprint \
                != tree.get("fingerprint"):
            return None
    except OSError:
        return None
    when = processes.stamp(float(tree.get("checked_at") or 0))
    acknowledged = sorted(layout.state(release_id).get("in_place_edits") or {})
    unchanged = "; no file has changed since)"
    evidence = {"changed": [], "missing": [], "unshipped": [], "acknowledged": acknowledged,
                "recorded_at": tree.get("checked_at")}
    checked = tree.get("bytecode") or {}
    count = int(tree.get("files") or 0)
    return [row("integrity", True, "%d files match the manifest (hashed at %s%s"
                % (count, when, unchanged), evidence),
            row("bytecode", True, "%d pycs match their sources, no importable orphans "
                "(checked at %s%s" % (checked.get("checked", 0), when, unchanged),
                dict(checked, recorded_at=tree.get("checked_at")))]


def python_files(root: str, skip: "set[str]") -> List[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if d not in bytecode.DEFAULT_SKIP_DIRS
                       and d not in ("__pycache__", META_DIR) and rel_dir + d not in skip]
        out.extend(rel_dir + f for f in filenames if f.endswith(".py"))
    return out


def check_bytecode(release_dir: str, source_hashes: Dict[str, bytes]) -> Dict[str, Any]:
    scan = bytecode.scan_tree(release_dir, source_hashes=source_hashes)
    importable = [o for o in scan["orphans"] if o["importable"]]
    problems = ["stale %s: %s" % (s["pyc"], s["reason"]) for s in scan["stale"]]
    problems += ["orphan %s: %s" % (o["pyc"], o["reason"]) for o in importable]
    problems += ["unreadable %s: %s" % (e["path"], e["error"]) for e in scan["errors"]]
    evidence = {k: scan[k] for k in ("checked", "sources", "stale", "orphans",
                                     "other_interpreters", "errors", "cache_tag")}
    if problems:
        return row("bytecode", False, "; ".join(problems[:5]) + (
            " (+%d more)" % (len(problems) - 5) if len(problems) > 5 else ""), evidence,
            "clear stale bytecode and restart: `inv clear-cache --restart`")
    notes = ""
    if scan["other_interpreters"]:
        notes = "; %d pycs of other interpreters (ignored)" % len(scan["other_interpreters"])
    return row("bytecode", True, "%d pycs match their sources, no importable orphans%s"
               % (scan["checked"], notes), evidence)


def check_processes(layout: Layout, release_id: str,
                    req: Checks) -> List[Dict[str, Any]]:
    """Each supervised process by the freshness rule (processes.judge), then every other
    process that still runs another release's code."""
    try:
        sup = connect(req.supervisor, timeout=10)
        names = sup.expand(list(req.supervisor["programs"]))
        parent = sup.pid()
    except Exception as exc:
        return [row("processes", False, str(exc), fix="check supervisord on the host")]
    switched_at = os.lstat(layout.current).st_mtime  # born at the switch; rename keeps it
    rows = []
    for name in names:
        info = sup.info(name)
        check = "process %s" % name
        if info["statename"] != "RUNNING":
            rows.append(row(check, False, "%s is %s%s" % (
                name, info["statename"], (": " + info["description"]) if info.get(
                    "description") else ""), {"state": info["statename"]}, FIX_RESTART))
            continue
        seen = processes.judge(info["pid"], layout.current, switched_at, parent,
                               SETTLE_TIMEOUT)
        evidence = {"pid": info["pid"], "cwd": seen["cwd"], "started_at": seen["started_at"],
                    "switched_at": switched_at, "unseen": seen["unseen"]}
        if seen["problems"]:
            rows.append(row(check, False, "pid %d %s" % (info["pid"], "; ".join(
                seen["problems"])), evidence, FIX_RESTART))
            continue
        unseen = ("; not seen: " + "; ".join(seen["unseen"])) if seen["unseen"] else ""
        rows.append(row(check, True, "pid %d RUNNING in the current release, started %s "
                        "(after the switch at %s)%s" % (
                            info["pid"], processes.stamp(seen["started_at"] or 0),
                            processes.stamp(switched_at), unseen), evidence))
    rows.append(check_strays(layout, release_id))
    return rows


def check_strays(layout: Layout, release_id: str) -> Dict[str, Any]:
    found = processes.strays(layout.deploy_to, release_id)
    evidence = {"strays": found["strays"], "unreadable": found["unreadable"]}
    strays = found["strays"]
    if strays:
        more = (" (%d in all: pids %s)" % (len(strays), ", ".join(str(s["pid"]) for s in strays))
                if len(strays) > 3 else "")
        return row("old code", False, "; ".join(processes.describe_stray(s)
                                               for s in strays[:3]) + more,
                   evidence, processes.FIX_STRAY)
    note = (" (%d processes not readable here)" % found["unreadable"]
            if found["unreadable"] else "")
    return row("old code", True, "no process runs another release's code%s" % note, evidence)


def check_health(layout: Layout, release_id: str, req: Checks) -> Dict[str, Any]:
    """The configured expectation (expect_status / expect_json / expect_text) with the
    placeholders of the current release: the same rule as the deploy's check."""
    spec = health.expand_placeholders(req.health,
                                      layout.placeholders(release_id, req.values or {}))
    spec["timeout"] = min(float(spec.get("timeout") or 5), 5.0)
    result = health.check(spec)
    evidence = {"status": result.get("status"), "attempts": result.get("attempts"),
                "body": (result.get("body") or "")[:200]}
    if not result["ok"]:
        return row("health", False, result.get("error") or "unhealthy", evidence, FIX_RESTART)
    return row("health", True, "HTTP %s%s" % (result.get("status"), health.describe(spec)),
               evidence)
