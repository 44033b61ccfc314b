"""The remote agent: JSON requests in, progress events and one JSON result each out.

Run by the host's own Python (stdlib only, 3.8+), once per host and run (a session
serving every request in order), so that a multi-step phase (preflight + lock, or
switch + restart + health check + rollback) costs one round trip on a warm process,
and so that bytecode is judged by the interpreter that will import it. The protocol
on stdin, after the bootstrap has loaded the modules, is a sequence of
``<length>\\n<zlib json request>`` frames (their fields: remote/protocol.py, parsed
strictly), `prepare`'s followed by the artifact
stream once the controller has answered its question. On stdout every line is JSON:
``{"event": "..."}`` for progress, an optional ``{"ask": ...}``, then exactly one
``{"result": ...}`` or ``{"error": {"message", "kind", "ends_session"}}`` per request.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import sys
import time
import zlib
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Optional

from deploytools.remote import (
    build,
    bytecode,
    cost,
    health,
    hooks,
    locking,
    processes,
    protocol,
    unpack,
    verify,
)
from deploytools.remote.bytecode import pyc_path
from deploytools.remote.health import expand_placeholders
from deploytools.remote.intact import intact_files
from deploytools.remote.releases import MANIFEST, META_DIR, Layout, files_digest, in_shared
from deploytools.remote.supervisor import SupervisorError, connect


class AgentError(Exception):
    """A failure to report as one line. `kind` (one of protocol.ERROR_KINDS) travels in
    the error answer for logs and tests; the agent itself acts on "timeout" (the
    session ends), the controller shows the message and acts on `ends_session`."""

    def __init__(self, message: str, kind: str = "failed") -> None:
        super().__init__(message)
        self.kind = kind


_controller_gone = False


def emit(kind: str, value: Any) -> None:
    """Write one protocol line. If the controller went away (Ctrl-C, lost network), keep
    working silently: a half-finished switch is worse than an unreported one."""
    global _controller_gone
    if _controller_gone:
        return
    try:
        sys.stdout.write(json.dumps({kind: value}) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        _controller_gone = True


def controller_gone() -> None:
    global _controller_gone
    _controller_gone = True


def abandoned(layout: Layout, facts: Dict[str, Any]) -> None:
    """The history line of a run whose controller vanished while it held the lock."""
    layout.append_history({
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "action": facts.get("action") or "deploy", "outcome": "abandoned",
        "release": layout.current_id(), "previous": None,
        "error": "the controller went away; the agent finished its step and unlocked"})


def event(message: str) -> None:
    emit("event", message)


# --------------------------------------------------------------------------- facts


def python_facts() -> Dict[str, Any]:
    return {
        "executable": sys.executable,
        "version": "%d.%d.%d" % sys.version_info[:3],
        "magic": importlib.util.MAGIC_NUMBER.hex(),
        "cache_tag": sys.implementation.cache_tag,
    }


# --------------------------------------------------------------------------- ops


def op_preflight(req: protocol.Preflight, stream: BinaryIO) -> Dict[str, Any]:
    """Check everything a deploy needs, then take the lock if asked and all is well.

    With `read_only` (inv check, --dry-run) nothing is created and no lock is taken; the
    lock holder, if any, is reported instead. With `unchanged_if` (--skip-unchanged), a
    host whose current release has that revision and passes every verify check is
    reported `unchanged` and not locked: it will not be touched.
    """
    layout = Layout(req.deploy_to)
    read_only = bool(req.read_only)
    problems: List[str] = []
    result: Dict[str, Any] = {"python": python_facts()}
    problem = check_writable(layout, read_only)
    if problem:
        problems.append(problem)
    try:
        stat = os.statvfs(nearest_existing(layout.deploy_to))
        free_mb = stat.f_bavail * stat.f_frsize // (1024 * 1024)
        result["disk_free_mb"] = free_mb
        need = int(req.min_free_mb or 0)
        if free_mb < need:
            problems.append("only %d MB free under %s (need about %d MB)"
                            % (free_mb, layout.deploy_to, need))
    except OSError:
        pass
    for path in build.missing_shared_files(layout.shared, req.shared or {}):
        problems.append("shared file %s is missing (create it on the host before deploying)"
                        % path)
    if req.supervisor:
        try:
            sup = connect(req.supervisor, timeout=10)
            sup.ping()
            result["programs"] = sup.expand(list(req.supervisor.get("programs") or []))
        except (SupervisorError, OSError) as exc:
            problems.append(str(exc))
        except Exception as exc:  # xmlrpc faults
            problems.append("supervisor: %s" % exc)
    result["current"] = layout.current_id()
    result["releases"] = layout.describe()
    result["problems"] = problems
    if req.unchanged_if and not problems and is_unchanged(layout, req):
        result["unchanged"] = True
        return result
    lock = req.lock
    if read_only:
        result["lock"] = {"acquired": False, "holder": lock_holder(layout, lock or {})}
    elif lock and not problems:
        holder = wait_for_lock(layout, lock)
        result["lock"] = {"acquired": holder is None, "holder": holder}
    return result


def nearest_existing(path: str) -> str:
    while not os.path.exists(path) and path not in ("/", ""):
        path = os.path.dirname(path)
    return path or "/"


def check_writable(layout: Layout, read_only: bool) -> Optional[str]:
    """deploy_to must be writable: created and probed, or (read_only) judged by access()."""
    try:
        if read_only:
            base = nearest_existing(layout.deploy_to)
            if not os.access(base, os.W_OK | os.X_OK):
                return "deploy_to %s is not writable (checked %s)" % (layout.deploy_to, base)
            return None
        layout.ensure()
        probe = os.path.join(layout.meta, ".write-test-%d" % os.getpid())
        with open(probe, "w") as fh:
            fh.write("ok")
        os.unlink(probe)
    except OSError as exc:
        return "deploy_to %s is not writable: %s" % (layout.deploy_to, exc.strerror)
    return None


def is_unchanged(layout: Layout, req: protocol.Preflight) -> bool:
    current = layout.current_id()
    manifest = layout.manifest(current) if current else None
    if not manifest or manifest.get("revision") != req.unchanged_if or layout.failure(current):
        return False
    checks = verify.verify(req, trust_record=True)["checks"]
    failed = [c for c in checks if not c["ok"]]
    if failed:
        event("on revision %s but %s: redeploying" % (
            str(req.unchanged_if)[:12], "; ".join(c["detail"] for c in failed[:2])))
        return False
    by_fingerprint = any("recorded_at" in (c.get("evidence") or {}) for c in checks)
    event("already on %s and verified%s: nothing to do" % (
        current, " (its files by the fingerprint taken when it was last verified)"
        if by_fingerprint else ""))
    return True


def lock_holder(layout: Layout, lock: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    holder = layout.lock_owner()
    if holder is None:
        return None
    holder = dict(holder)
    holder["age_seconds"] = round(time.time() - float(holder.get("acquired_at") or 0), 1)
    holder["stale"] = holder["age_seconds"] > float(lock.get("expiry") or 3600)
    return holder


def wait_for_lock(layout: Layout, lock: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Take the lock, waiting up to `wait` seconds for a live holder. A holder whose
    agent is gone is taken over; one whose controller is gone is waited for (up to
    `orphan_wait`) while it finishes its step and unlocks by itself."""
    owner = locking.owner_record(lock["owner"])
    now = time.time()
    deadline = now + float(lock.get("wait") or 0)
    orphan_deadline = now + float(lock.get("orphan_wait") or 120)
    said = set()
    while True:
        if layout.acquire_lock(owner) is None:
            locking.took(layout, owner)
            return None
        holder = lock_holder(layout, lock) or {"user": "unknown (lock just released)"}
        alive = locking.holder_alive(holder)
        if alive is False:
            locking.take_over(layout, holder, event)
            continue
        orphaned = bool(alive and holder.get("controller_gone_at")
                        and time.time() < orphan_deadline)
        if not orphaned and time.time() >= deadline:
            return holder
        why = "orphaned" if orphaned else "held"
        if why not in said:
            said.add(why)
            event("lock held by a run whose controller is gone; waiting for its agent (pid %s)"
                  " to finish its step and unlock" % holder.get("agent_pid") if orphaned
                  else "lock held by %s; waiting" % holder.get("user", "?"))
        time.sleep(0.2)


def op_prepare(req: protocol.Prepare, stream: BinaryIO) -> Dict[str, Any]:
    """Build releases/<id> off to the side, then rename it into place.

    The new release starts from the current one: files that are unchanged and still
    intact there are hard-linked (with their bytecode), and only the rest crosses the
    wire. Nothing the app serves changes here. Any failure removes the release being
    built, so a failed or interrupted prepare leaves no release behind.
    """
    layout = Layout(req.deploy_to)
    release_id = req.release_id
    final = layout.release(release_id)
    partial = layout.partial(release_id)
    if os.path.exists(final):
        raise AgentError("release %s already exists on this host" % release_id)
    layout.ensure()
    shutil.rmtree(partial, ignore_errors=True)
    timings: Dict[str, float] = {}
    result: Dict[str, Any] = {"release": release_id, "timings": timings}
    try:
        base, base_manifest, files, linked_paths = receive_files(layout, partial, stream,
                                                                 result)
        manifest = build_release(layout, partial, req, files, linked_paths, base,
                                 base_manifest, result)
        os.rename(partial, final)
        locking.note(layout.deploy_to, prepared=release_id)
        layout.write_state(release_id, **{k: manifest.get(k) for k in SUMMARY_KEYS})
        result["hooks"] = run_hooks_or_fail(layout, "after_prepare", release_id, req)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        if isinstance(exc, (build.BuildError, OSError)):
            raise AgentError(str(exc)) from None
        raise
    return result


def receive_files(layout: Layout, partial: str, stream: BinaryIO, result: Dict[str, Any]
                  ) -> "tuple[Optional[str], Dict[str, Any], Dict[str, str], set[str]]":
    """Prepare's transfer: pick the base release, ask the controller for the difference
    from it, hard-link the unchanged files and unpack the sent ones (and shipped pycs)
    into `partial`. Returns the base, its manifest, the new file list and the linked paths."""
    timings = result["timings"]
    started = time.time()
    base = choose_base(layout)
    base_manifest = (layout.manifest(base) or {}) if base else {}
    base_files = intact_files(layout, base, base_manifest) if base else {}
    timings["base"] = round(time.time() - started, 3)
    plan = ask({"base": base, "files": base_files}, stream)
    started = time.time()
    removed = set(plan["removed"])
    files = {p: d for p, d in base_files.items() if p not in removed}
    files.update(plan["changed"])
    if files_digest(files) != plan["digest"]:
        raise AgentError("assembled manifest does not match the artifact (internal error)")
    os.makedirs(partial)
    linked_paths = set(files) - plan["changed"].keys()  # empty without a base
    linked = link_unchanged(layout.release(base), partial, linked_paths) if base else 0
    count, size = extract(stream, int(plan["archive_size"]), partial)
    shipped_pycs = extract(stream, int(stream.readline()), partial)[0] \
        if plan.get("pycs_follow") else 0
    timings["transfer"] = round(time.time() - started, 3)
    cost.count("files_written", count + shipped_pycs)
    result.update(files=len(files), linked=linked, received=count, bytes=size,
                  base=base, shipped_pycs=shipped_pycs)
    event("%d files: %d received (%d bytes), %d linked from %s" % (
        len(files), count, size, linked, base or "no previous release"))
    return base, base_manifest, files, linked_paths


def build_release(layout: Layout, partial: str, req: protocol.Prepare, files: Dict[str, str],
                  linked_paths: "set[str]", base: Optional[str], base_manifest: Dict[str, Any],
                  result: Dict[str, Any]) -> Dict[str, Any]:
    """Prepare's build, in `partial`: REVISION, shared links, the virtualenv, bytecode,
    and the release's manifest written last. Returns the manifest."""
    timings = result["timings"]
    manifest = dict(req.manifest, files=files)
    with open(os.path.join(partial, "REVISION"), "w") as fh:
        fh.write(str(manifest.get("revision") or "") + "\n")
    manifest["shared_paths"] = build.link_shared(partial, layout.shared, req.shared or {})
    if req.venv:
        started = time.time()
        result["venv"] = build.ensure_venv(partial, layout.shared, req.venv, event)
        manifest["venv"] = result["venv"]["key"]
        timings["venv"] = round(time.time() - started, 3)
    started = time.time()
    own_files = {p: d for p, d in files.items()  # shared paths are links: not ours
                 if not in_shared(p, manifest["shared_paths"])}
    compiled = apply_bytecode(partial, req, own_files, linked_paths,
                              layout.release(base) if base else None, base_manifest)
    timings["bytecode"] = round(time.time() - started, 3)
    cost.count("files_written", compiled.get("compiled") or compiled.get("cleared_files") or 0)
    manifest["python"] = python_facts()
    manifest["bytecode"] = dict(compiled, mode=req.bytecode,
                                invalidation=req.pyc_invalidation,
                                magic=manifest["python"]["magic"],
                                cache_tag=manifest["python"]["cache_tag"])
    result["bytecode"] = manifest["bytecode"]
    os.makedirs(os.path.join(partial, META_DIR), exist_ok=True)
    with open(os.path.join(partial, META_DIR, MANIFEST), "w") as fh:
        # dumps, one line: json.dump and any indent take the pure-Python encoder (0.08
        # CPU-s a host for 4,000 files); dumps without one takes the C encoder
        fh.write(json.dumps(manifest, sort_keys=True, separators=(",", ":")))
    return manifest


SUMMARY_KEYS = ("revision", "ref", "created_at", "deployed_by")


def choose_base(layout: Layout) -> Optional[str]:
    """The release to start from: current if it is good, else the newest good one."""
    current = layout.current_id()
    if current and not layout.failure(current) and layout.manifest(current):
        return current
    good = [r for r in layout.good_ids() if layout.manifest(r)]
    return good[-1] if good else None


def link_unchanged(base_dir: str, dest: str, paths: "set[str]") -> int:
    """Hard-link every unchanged file from the base release into the new one."""
    missing = link_files(base_dir, dest, paths)
    if missing:
        raise AgentError("%s vanished from %s while the release was being built"
                         % (missing[0], base_dir))
    return len(paths)


def link_files(src_root: str, dst_root: str, rels: Iterable[str]) -> List[str]:
    """Hard-link these files from src_root into dst_root (folders created); returns the
    ones src_root lacks. Links go through folder descriptors, one folder at a time: the
    kernel then resolves one name per link instead of two whole paths."""
    groups: Dict[str, List[str]] = {}
    for rel in rels:
        folder, _, name = rel.rpartition("/")
        groups.setdefault(folder, []).append(name)
    missing: List[str] = []
    for folder, names in groups.items():
        os.makedirs(os.path.join(dst_root, folder), exist_ok=True)
        try:
            src_fd = os.open(os.path.join(src_root, folder), os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            missing.extend(folder + "/" + name if folder else name for name in names)
            continue
        dst_fd = os.open(os.path.join(dst_root, folder), os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in names:
                try:
                    os.link(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
                except FileNotFoundError:
                    missing.append(folder + "/" + name if folder else name)
        finally:
            os.close(src_fd)
            os.close(dst_fd)
    return missing


def run_hooks_or_fail(layout: Layout, point: str, release_id: str,
                      req: protocol.HookRequest) -> List[Dict[str, Any]]:
    """Run a point's hooks for a release; a failure runs after_failure hooks, then raises."""
    values = layout.placeholders(release_id, req.values or {})
    release_dir = layout.release(release_id)
    try:
        return hooks.run_hooks(point, req.hooks, release_dir, values,
                               bool(req.run_once_here), event)
    except hooks.HookFailed as exc:
        if point != "after_failure":
            with contextlib.suppress(hooks.HookFailed):
                hooks.run_hooks("after_failure", req.hooks, release_dir, values,
                                bool(req.run_once_here), event)
        raise AgentError(str(exc), "hook_failed") from None


def extract(stream: BinaryIO, size: int, dest: str) -> "tuple[int, int]":
    """Unpack exactly `size` bytes of the artifact into dest (see unpack.py)."""
    try:
        return unpack.extract(stream, size, dest)
    except unpack.UnpackError as exc:
        raise AgentError(str(exc), exc.kind) from None


def apply_bytecode(root: str, req: protocol.Prepare, files: Dict[str, str], linked: "set[str]",
                   base_dir: Optional[str], base_manifest: Dict[str, Any]) -> Dict[str, Any]:
    """Precompile (reusing the base release's pycs of unchanged, hard-linked modules, and
    keeping pycs the controller shipped), clear, or leave bytecode alone."""
    mode = req.bytecode
    if mode == "clear":
        return {"cleared_files": bytecode.clear_tree(root)["files"]}
    if mode != "precompile":
        return {}
    tag = sys.implementation.cache_tag
    previous = base_manifest.get("bytecode") or {}
    # the base's pycs fit when they were made the same way, by the same interpreter
    reusable = bool(base_dir) and previous.get("mode") == "precompile" and \
        previous.get("invalidation") == req.pyc_invalidation and \
        previous.get("magic") == importlib.util.MAGIC_NUMBER.hex()
    sources = [rel for rel in files if rel.endswith(".py")]
    # a symlinked module's pyc follows its target, which may have changed: never reused
    reuse = {pyc_path(rel, tag): rel for rel in sources if reusable and rel in linked
             and not files[rel].startswith("symlink:")}
    # a pyc missing in the base (cleared, never compiled there) is compiled here
    not_there = set(link_files(base_dir or "", root, reuse)) if reuse else set()
    reused = len(reuse) - len(not_there)
    shipped = 0
    todo = []
    for rel in sources:
        pyc = pyc_path(rel, tag)
        if pyc in reuse and pyc not in not_there:
            continue
        if os.path.exists(os.path.join(root, pyc)):
            shipped += 1  # compiled once on the controller
        else:
            todo.append(rel)
    result = bytecode.compile_tree(root, invalidation_mode=req.pyc_invalidation, files=todo)
    if result["errors"]:
        first = result["errors"][0]
        raise AgentError("cannot compile %s line %s: %s" % (
            first["file"], first.get("line"), first["message"]), "syntax_error")
    event("bytecode (%s): %d from the controller, %d reused, %d compiled here" % (
        req.pyc_invalidation, shipped, reused, result["compiled"]))
    return {"compiled": result["compiled"], "reused": reused, "shipped": shipped}


def op_activate(req: protocol.Activate, stream: BinaryIO) -> Dict[str, Any]:
    """Switch to `target`, restart, health-check; on failure go back to `fallback`.

    The whole decision runs here, on the host, in one round trip: a controller that
    loses the connection mid-way cannot leave the host switched but unchecked.
    `action` is deploy, rollback or restart; it decides which hooks run.
    """
    layout = Layout(req.deploy_to)
    target = req.target
    fallback = req.fallback
    if layout.failure(target):
        raise AgentError("release %s is marked failed (%s)" % (target, layout.failure(target)))
    result: Dict[str, Any] = {"target": target, "fallback": fallback}
    locking.note(layout.deploy_to, activated=True)  # tried: healthy, or marked failed
    rolling_back = req.action == "rollback"
    attempt = switch_restart_check(layout, target, req, rolling_back)
    result["attempt"] = attempt
    if attempt["ok"]:
        result["outcome"] = "healthy"
        result["release"] = target
        return result
    result["error"] = attempt["error"]
    if req.mark_failed:
        with contextlib.suppress(OSError):  # a full disk must not stop the switch back
            layout.mark_failed(target, attempt["error"])
    if not attempt.get("failure_hooks_ran"):
        with contextlib.suppress(AgentError):
            run_hooks_or_fail(layout, "after_failure", target, req)
    if not fallback:
        result["outcome"] = "failed"
        result["release"] = layout.current_id()
        return result
    event("rolling back to %s" % fallback)
    back = switch_restart_check(layout, fallback, req, rolling_back=True)
    result["rollback"] = back
    result["outcome"] = "rolled_back" if back["ok"] else "rollback_failed"
    result["release"] = layout.current_id()
    return result


def switch_restart_check(layout: Layout, target: str, req: protocol.Activate,
                         rolling_back: bool) -> Dict[str, Any]:
    """Switch (if needed), restart, check health, then run the hooks that follow."""
    steps: Dict[str, Any] = {"release": target, "ok": False}
    started = time.time()
    try:
        if layout.current_id() != target:
            layout.switch(target)
            event("switched current -> releases/%s" % target)
            steps["hooks"] = run_hooks_or_fail(layout, "after_switch", target, req)
        # before_restart: the host leaves rotation here (its old process still serves)
        steps.setdefault("hooks", []).extend(run_hooks_or_fail(layout, "before_restart",
                                                               target, req))
        steps["restart_started"] = time.time()  # availability: stop requested -> healthy
        steps["programs"] = restart(layout, req)
        spec = req.health
        if spec and spec.get("url"):
            spec = expand_placeholders(spec, layout.placeholders(target, req.values or {}))
            result = health.check(spec)
            steps["health"] = result
            if not result["ok"]:
                raise AgentError("health check failed after %d attempts in %.1fs: %s"
                                 % (result["attempts"], result["seconds"], result["error"]))
            event("healthy after %.2fs" % result["seconds"])
        steps["healthy_at"] = time.time()
        layout.record_served(target, req.action or "deploy")
        steps["strays"] = warn_strays(layout)
        for point in ("after_restart", "after_rollback") if rolling_back else ("after_restart",):
            steps.setdefault("hooks", []).extend(run_hooks_or_fail(layout, point, target, req))
        steps["ok"] = True
    except AgentError as exc:
        steps["error"] = str(exc)
        steps["failure_hooks_ran"] = exc.kind == "hook_failed"
        event("failed: %s" % exc)
    except (SupervisorError, OSError, RuntimeError) as exc:
        steps["error"] = str(exc)
        event("failed: %s" % exc)
    except Exception as exc:  # noqa: BLE001 - after a switch, anything is a failed activation
        # (an XML-RPC Fault, a KeyError in a state wait, a bug): the caller must still
        # switch back, restart, re-check and mark the release failed.
        steps["error"] = "%s: %s" % (type(exc).__name__, exc)
        event("failed: %s" % steps["error"])
    steps["seconds"] = round(time.time() - started, 3)
    return steps


def op_hooks(req: protocol.Hooks, stream: BinaryIO) -> Dict[str, Any]:
    """Run one hook point for a release (the fleet-wide before_switch phase)."""
    layout = Layout(req.deploy_to)
    return {"hooks": run_hooks_or_fail(layout, req.point, req.release_id, req)}


def restart(layout: Layout, req: protocol.Activate) -> List[Dict[str, Any]]:
    """Stop every program, then start every program, each confirmed by its state and by
    the freshness rule (processes.judge): exec'd in the new release, started after it."""
    sup_settings = req.supervisor
    sup = connect(sup_settings, timeout=float(sup_settings.get("stop_timeout") or 60) + 5)
    names = sup.expand(list(sup_settings["programs"]))
    rows = [{"name": name, "old_pid": sup.info(name).get("pid") or None} for name in names]
    supervisord = cost.process_cpu(sup.pid())
    sup.stop_all(names, float(sup_settings.get("stop_timeout") or 60))
    event("stopped %s" % ", ".join(names))
    release_dir = layout.current
    switched_at = os.lstat(layout.current).st_mtime
    start_timeout = float(sup_settings.get("start_timeout") or 60)
    infos = sup.start_all(names, start_timeout)
    parent = sup.pid()
    cost.add("supervisord_cpu_s", supervisord, cost.process_cpu(parent))
    for row in rows:
        info = infos[row["name"]]
        seen = processes.judge(info["pid"], release_dir, switched_at, parent, start_timeout)
        row.update(new_pid=info["pid"], started_at=seen["started_at"], cwd=seen["cwd"])
        if seen["problems"]:
            raise AgentError("%s (pid %s) %s" % (row["name"], info["pid"],
                                                 "; ".join(seen["problems"])))
        for note in seen["unseen"]:
            event("note: %s" % note)
    event("started %s" % ", ".join("%s (pid %s)" % (r["name"], r["new_pid"]) for r in rows))
    return rows


def warn_strays(layout: Layout) -> List[Dict[str, Any]]:
    """After a restart: processes still running another release's code are reported (a
    warning here; `inv verify` fails on them)."""
    found = processes.strays(layout.deploy_to, layout.current_id())["strays"]
    for stray in found:
        event("warning: %s; fix: %s" % (processes.describe_stray(stray), processes.FIX_STRAY))
    return found


def op_finish(req: protocol.Finish, stream: BinaryIO) -> Dict[str, Any]:
    """Write the history line, remove old releases, release the lock: the end of every run.

    What nothing waits for happens afterwards, in the background: deleting the removed
    releases' files and (`record_verified`, after a deploy) verifying the current
    release once and recording what was intact, so that the next deploy need not hash
    every file, nor --skip-unchanged any.
    """
    layout = Layout(req.deploy_to)
    result: Dict[str, Any] = {}
    if req.history:
        layout.append_history(req.history)
    if req.keep_releases:
        result["removed"] = layout.cleanup(int(req.keep_releases))
        stale_venvs = build.unused_venvs(layout.shared, [layout.release(r)
                                                         for r in layout.release_ids()])
        for venv in stale_venvs:
            shutil.rmtree(venv, ignore_errors=True)
        result["removed_venvs"] = [os.path.basename(v) for v in stale_venvs]
    if req.lock_token:
        result["unlocked"] = layout.release_lock(req.lock_token)
        locking.released(layout.deploy_to)
    discard = req.discard_release
    if discard and discard != layout.current_id():
        shutil.rmtree(layout.partial(discard), ignore_errors=True)
        shutil.rmtree(layout.release(discard), ignore_errors=True)
        result["discarded"] = discard
    current = layout.current_id() if req.record_intact else None
    if current or layout.has_trash():
        in_background(lambda: tidy_up(layout, current))
    return result


def tidy_up(layout: Layout, record_release: Optional[str]) -> None:
    layout.empty_trash()
    if record_release:
        verify.record_verified(layout, record_release)


def in_background(work: Callable[[], None]) -> None:
    """Run `work` in a detached grandchild that outlives the session: the controller
    never waits for it, and a time limit or a closed channel does not stop it. It runs
    at the lowest CPU priority: housekeeping must not slow the app that just started.
    (With autogroup scheduling a new session is a group of its own, weighed like any
    other whatever its nice value, so the group's own nice is lowered too.)"""
    child = os.fork()
    if child:
        os.waitpid(child, 0)  # it only forks the worker and exits
        return
    try:
        os.setsid()
        os.nice(19)
        with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as group:
            group.write("19")
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        work()
    finally:
        os._exit(0)


def op_unlock(req: protocol.Unlock, stream: BinaryIO) -> Dict[str, Any]:
    """Release the lock: by its owner's token, when it is stale (`stale_after` seconds
    old, with no token), or unconditionally with `force`."""
    layout = Layout(req.deploy_to)
    owner = layout.lock_owner()
    if owner is None:
        return {"owner": None, "removed": False, "reason": "not locked"}
    age = time.time() - float(owner.get("acquired_at") or 0)
    stale = req.stale_after is not None and age > float(req.stale_after)
    if req.force or stale:
        removed = layout.release_lock(None, force=True)
    else:
        removed = layout.release_lock(req.token)
    if removed:
        locking.released(layout.deploy_to)
    return {"owner": owner, "removed": removed, "age_seconds": round(age, 1), "stale": stale}


def op_releases(req: protocol.Releases, stream: BinaryIO) -> Dict[str, Any]:
    layout = Layout(req.deploy_to)
    return {"current": layout.current_id(), "releases": layout.describe(),
            "lock": layout.lock_owner(), "history": layout.read_history(20)}


def op_resolve_rollback(req: protocol.ResolveRollback, stream: BinaryIO) -> Dict[str, Any]:
    """Pick a rollback target: `to` (must exist, not failed) or the previous good release."""
    layout = Layout(req.deploy_to)
    current = layout.current_id()
    wanted = req.to
    if wanted:
        if not os.path.isdir(layout.release(wanted)):
            raise AgentError("release %s does not exist (have: %s)"
                             % (wanted, ", ".join(layout.release_ids()) or "none"))
        if layout.failure(wanted):
            raise AgentError("release %s is marked failed: %s" % (wanted, layout.failure(wanted)))
        target = wanted
    else:
        target = layout.rollback_target()
        if not target:
            raise AgentError("no previous good release to roll back to (current: %s)" % current)
    return {"current": current, "target": target}


def op_verify(req: protocol.Verify, stream: BinaryIO) -> Dict[str, Any]:
    return verify.verify(req)


def op_clear_cache(req: protocol.ClearCache, stream: BinaryIO) -> Dict[str, Any]:
    """Remove bytecode under the current release (or `path`, which must lie in deploy_to)."""
    layout = Layout(req.deploy_to)
    root = os.path.realpath(req.path or layout.current)
    base = os.path.realpath(layout.deploy_to)
    if not (root + "/").startswith(base + "/") or root == base + "/releases":
        raise AgentError("%s is not inside a release under %s" % (root, layout.deploy_to),
                         "config")
    if not os.path.isdir(root):
        raise AgentError("%s does not exist" % root)
    skip = ((".git", "node_modules") if req.include_venv
            else bytecode.DEFAULT_SKIP_DIRS)
    counts = bytecode.clear_tree(root, skip_dirs=skip)
    current = layout.current_id()
    edits: List[str] = []
    if current and (root + "/").startswith(os.path.realpath(layout.release(current)) + "/"):
        edits = verify.acknowledge_edits(layout, current)
        if edits:
            event("acknowledged in-place edits: %s" % ", ".join(edits[:10]))
    event("removed %d __pycache__ dirs and %d bytecode files under %s"
          % (counts["dirs"], counts["files"], root))
    return {"path": root, "dirs": counts["dirs"], "files": counts["files"],
            "errors": counts.get("errors", []), "current": current, "edits": edits}


OPS: Dict[str, Callable[[Any, BinaryIO], Dict[str, Any]]] = {
    "preflight": op_preflight,
    "prepare": op_prepare,
    "activate": op_activate,
    "finish": op_finish,
    "unlock": op_unlock,
    "releases": op_releases,
    "resolve_rollback": op_resolve_rollback,
    "verify": op_verify,
    "hooks": op_hooks,
    "clear_cache": op_clear_cache,
}


def read_frame(stream: BinaryIO) -> Optional[Dict[str, Any]]:
    """One compressed JSON frame from the controller (see transport.frame); None at EOF."""
    header = stream.readline()
    if not header:
        return None
    length = int(header)
    return json.loads(zlib.decompress(stream.read(length)).decode())


def ask(question: Dict[str, Any], stream: BinaryIO) -> Dict[str, Any]:
    """Ask the controller mid-call (it answers on stdin, the upload following)."""
    emit("ask", question)
    answer = read_frame(stream)
    if answer is None:
        raise AgentError("the controller went away before answering")
    return answer


def time_limit_hit(signum: int, frame: Any) -> None:
    """A request ran past its limit (ssh.command_timeout): end the step's processes
    (hooks), then fail the step itself right where it is. An activation that had
    switched then still switches back, restarts and re-checks the previous release,
    instead of leaving `current` on a release nothing was restarted from (the limit
    counts wall time, so a host frozen mid-step meets it the moment it resumes)."""
    for child in processes.descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGTERM)
    raise AgentError("remote step hit its time limit (ssh.command_timeout)", "timeout")


STARTUP: List[Dict[str, Any]] = []  # the session's start-up cost, until reported


def serve(wire: Dict[str, Any], stream: BinaryIO) -> bool:
    """Answer one request; False when the session must end after it: a failed request
    that streamed data may have left part of it unread (the error says so)."""
    ends = bool(wire.get("streams"))
    try:
        req = protocol.parse_request(wire)
        if req.lock_token and not locking.adopt(Layout(req.deploy_to), req.lock_token) and \
                req.locked:
            raise AgentError("this run no longer holds the deploy lock on this host (another "
                             "run took it over); nothing was changed", "lock_lost")
        if wire.get("profile"):
            cost.profile.start()
        meter = cost.Meter()
        result = OPS[req.op](req, stream)
        result["cost"] = meter.stop()
        if STARTUP:
            result["cost"]["startup"] = STARTUP.pop()  # reported once, with the first result
        if cost.profile.running():
            result["profile"] = cost.profile.stats(stop=req.op == "finish")
        emit("result", result)
        return True
    except protocol.ProtocolError as exc:
        emit("error", {"message": "bad request: %s" % exc, "kind": exc.kind,
                       "ends_session": ends})
    except AgentError as exc:
        ends = ends or exc.kind == "timeout"  # the controller starts a fresh session
        emit("error", {"message": str(exc), "kind": exc.kind, "ends_session": ends})
    except Exception as exc:
        import traceback

        emit("error", {"message": "%s: %s" % (type(exc).__name__, exc), "kind": "internal",
                       "traceback": traceback.format_exc(), "ends_session": ends})
    return not ends


def main() -> None:
    """Serve requests until the controller closes stdin (the end of its run), or until
    a request ends the session (the controller starts a new one if it needs to)."""
    STARTUP.append(cost.startup())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the SSH session may end before we do
    signal.signal(signal.SIGALRM, time_limit_hit)
    stream = sys.stdin.buffer
    locking.watch_controller(stream.fileno(), controller_gone)
    while True:
        try:
            req = read_frame(stream)
        except (OSError, ValueError):
            req = None
        if req is None:  # the controller closed the session, or vanished
            locking.abandon_all(abandoned)
            return
        signal.alarm(int(math.ceil(float(req.get("time_limit") or 0))))
        go_on = serve(req, stream)
        signal.alarm(0)
        if not go_on:
            return
