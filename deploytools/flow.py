"""The deploy and rollback order, top to bottom (our `deploy.rake`).

deploy:
  1. plan      build the artifact once, locally; one release id for every host
  2. check     connect to every host in parallel; preflight; take the deploy lock
  3. prepare   every host in parallel: new releases/<id>, files streamed in,
               manifest, bytecode. Nothing served has changed yet.
  4. activate  batch by batch, on each host in one round trip: switch `current`
               atomically, supervisor stop -> start, health check; a host that
               fails is switched back, restarted and re-checked there and then
  5. finish    history line, cleanup of old releases, unlock (every exit path)

Each step is a function over one host's `HostRun`; the flow decides what a
failure means for the rest of the fleet.
"""

from __future__ import annotations

import getpass
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deploytools.artifact import Artifact, build_artifact
from deploytools.errors import ConfigError, ExitCode, LockHeldError, RemoteError
from deploytools.inventory import Host
from deploytools.report import (
    CONNECTED,
    FAILED,
    HEALTHY,
    LOCKED,
    LOCKED_OUT,
    PREPARED,
    ROLLBACK_FAILED,
    ROLLED_BACK,
    SKIPPED,
    UNREACHABLE,
    Console,
    HostRun,
)
from deploytools.rollout import batches, in_parallel, parse_serial
from deploytools.transport import AgentCall, HostConnection


@dataclass
class RunResult:
    """What a task reports: per-host outcomes and the exit code derived from them."""

    action: str
    run_id: str
    release_id: str | None
    runs: list[HostRun]
    exit_code: ExitCode
    started_at: float
    ended_at: float
    extra: dict[str, Any] = field(default_factory=dict)


def new_run_id() -> str:
    return secrets.token_hex(6)


# =========================================================================== deploy


def deploy(hosts: list[Host], console: Console, *, ref: str | None = None,
           serial: str | int | None = None, lock_wait: float = 0) -> RunResult:
    """Ship a new release to every host, or leave each host on the release it had."""
    started = time.time()
    run_id = new_run_id()
    artifact = plan(hosts, console, ref)
    runs = [HostRun(host) for host in hosts]
    try:
        owner = lock_owner(run_id, "deploy", artifact.release_id)
        in_parallel(runs, lambda r: check_and_lock(r, console, owner, lock_wait,
                                                   need_bytes=artifact.size), console)
        if stop_if_any_failed(runs, console, "preflight"):
            return finish(runs, console, "deploy", run_id, artifact, started)
        artifact.avoid_ids({row["id"] for r in runs for row in r.facts["releases"]})

        once = runs[0]  # run_once hooks (migrations) run on the first host only
        in_parallel(runs, lambda r: prepare(r, console, artifact, r is once), console)
        if stop_if_any_failed(runs, console, "prepare"):
            return finish(runs, console, "deploy", run_id, artifact, started)
        if any(r.host.get("hooks.before_switch") for r in runs):
            in_parallel(runs, lambda r: run_hook_point(r, console, "before_switch",
                                                       artifact.release_id, r is once), console)
            if stop_if_any_failed(runs, console, "before_switch"):
                return finish(runs, console, "deploy", run_id, artifact, started)

        size = parse_serial(serial, len(runs))
        for number, batch in enumerate(batches(runs, size), 1):
            if len(runs) > size:
                console.info(f"batch {number}: {', '.join(r.name for r in batch)}")
            in_parallel(batch, lambda r: activate(r, console, artifact.release_id,
                                                  run_once_here=r is once), console)
            if stop_if_any_failed(runs, console, "activate"):
                break
        return finish(runs, console, "deploy", run_id, artifact, started)
    finally:
        artifact.close()
        close_all(runs)


def plan(hosts: list[Host], console: Console, ref: str | None) -> Artifact:
    """Build the artifact once for the whole fleet (every host must share the source)."""
    sources = {repr(sorted(h.settings["source"].items())) for h in hosts}
    if len(sources) > 1:
        raise ConfigError("the selected hosts have different 'source' settings; "
                          "deploy them in separate runs")
    source = hosts[0].settings["source"]
    console.info(f"building release from {source.get('repo') or source.get('path')}"
                 + (f" at {ref or source.get('ref')}" if source.get("repo") else ""))
    artifact = build_artifact(source, ref)
    console.info(f"release {artifact.release_id}: {len(artifact.manifest['files'])} files, "
                 f"{artifact.size / 1e6:.1f} MB, revision {artifact.revision}")
    return artifact


def lock_owner(run_id: str, action: str, release_id: str | None) -> dict[str, Any]:
    """Who holds the lock: enough for a colleague to find the run (the token proves it)."""
    return {
        "user": getpass.getuser(),
        "controller": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": time.time(),
        "action": action,
        "release": release_id,
        "run_id": run_id,
        "token": secrets.token_hex(16),
    }


def check_and_lock(run: HostRun, console: Console, owner: dict[str, Any] | None,
                   lock_wait: float = 0, need_bytes: int = 0) -> None:
    """Connect, run preflight checks and take the deploy lock, in one round trip."""
    step_started = time.monotonic()
    connect(run)
    settings = run.host.settings
    request: dict[str, Any] = {
        "op": "preflight",
        "deploy_to": run.host.deploy_to,
        "supervisor": settings["supervisor"],
        "programs": settings["supervisor"]["programs"],
        "min_free_mb": 3 * need_bytes // (1024 * 1024) + 1,
        "shared": settings["shared"],
    }
    if owner:
        request["lock"] = {"owner": owner, "wait": lock_wait, "expiry": settings["lock_expiry"]}
    result = call(run, request, console)
    run.facts["python"] = result["python"]
    run.facts["releases"] = result["releases"]
    run.previous = run.release = result["current"]
    if result["problems"]:
        raise RemoteError(run.name, "; ".join(result["problems"]))
    lock = result.get("lock")
    if lock and not lock["acquired"]:
        raise LockHeldError(run.name, describe_lock_holder(lock["holder"]))
    if lock:
        run.lock_token = owner["token"] if owner else None
        run.state = LOCKED
    run.timings["check"] = time.monotonic() - step_started


def connect(run: HostRun) -> None:
    """Open the run's single SSH connection to this host (host key verified)."""
    run.conn = HostConnection(run.host)
    run.conn.open()
    run.state = CONNECTED


def describe_lock_holder(holder: dict[str, Any]) -> str:
    who = f"{holder.get('user', '?')}@{holder.get('controller', '?')} (pid {holder.get('pid')})"
    age = holder.get("age_seconds")
    stale = " — STALE, remove it with `inv unlock --force`" if holder.get("stale") else ""
    return (f"deploy lock held by {who}, {holder.get('action', 'run')} of release "
            f"{holder.get('release')}, for {age}s{stale}; retry later or pass --lock-wait")


def prepare(run: HostRun, console: Console, artifact: Artifact, run_once_here: bool) -> None:
    """Create releases/<id> from the artifact; the host still serves its old release."""
    step_started = time.monotonic()
    settings = run.host.settings
    request = {
        "op": "prepare",
        "deploy_to": run.host.deploy_to,
        "release_id": artifact.release_id,
        "manifest": artifact.manifest,
        "artifact_size": artifact.size,
        "bytecode": settings["bytecode"],
        "pyc_invalidation": settings["pyc_invalidation"],
        "shared": settings["shared"],
        "venv": settings.get("venv"),
        **hook_context(run, run_once_here),
    }
    result = call(run, request, console, upload=artifact.stream())
    run.facts["prepare"] = result
    run.state = PREPARED
    run.timings["prepare"] = time.monotonic() - step_started


def activate(run: HostRun, console: Console, release_id: str, *, fallback: str | None = None,
             mark_failed: bool = True, action: str = "deploy", run_once_here: bool = False) -> None:
    """Switch, restart, health-check on the host; on failure it switches back itself."""
    step_started = time.monotonic()
    request = activation_request(run, release_id, fallback or run.previous, mark_failed)
    request.update(action=action, **hook_context(run, run_once_here))
    result = call(run, request, console)
    record_activation(run, result)
    run.timings["activate"] = time.monotonic() - step_started


def activation_request(run: HostRun, target: str, fallback: str | None,
                       mark_failed: bool) -> dict[str, Any]:
    settings = run.host.settings
    return {
        "op": "activate",
        "deploy_to": run.host.deploy_to,
        "target": target,
        "fallback": fallback if fallback != target else None,
        "mark_failed": mark_failed,
        "supervisor": settings["supervisor"],
        "programs": settings["supervisor"]["programs"],
        "health": settings["health"],
    }


def hook_context(run: HostRun, run_once_here: bool) -> dict[str, Any]:
    """What the agent needs to run hooks and fill placeholders for this host."""
    return {
        "hooks": run.host.settings["hooks"],
        "run_once_here": run_once_here,
        "values": host_values(run),
    }


def host_values(run: HostRun) -> dict[str, str]:
    """Placeholder values known to the controller ({release}/{revision} come from the host)."""
    return {"host": run.host.address, "name": run.name, "deploy_to": run.host.deploy_to,
            "previous": run.previous or ""}


def run_hook_point(run: HostRun, console: Console, point: str, release_id: str,
                   run_once_here: bool) -> None:
    request = {"op": "hooks", "deploy_to": run.host.deploy_to, "point": point,
               "release_id": release_id, **hook_context(run, run_once_here)}
    run.facts.setdefault("hooks", []).extend(call(run, request, console)["hooks"])


def record_activation(run: HostRun, result: dict[str, Any]) -> None:
    attempt = result["attempt"]
    run.programs = attempt.get("programs", [])
    run.health = attempt.get("health")
    run.release = result.get("release")
    outcome = result["outcome"]
    if outcome == "healthy":
        run.state = HEALTHY
        return
    back = result.get("rollback") or {}
    if outcome == "rolled_back":
        run.fail(ROLLED_BACK, f"{result['error']} (rolled back to {result['fallback']})")
    elif outcome == "rollback_failed":
        run.fail(ROLLBACK_FAILED, f"{result['error']}; rollback to {result['fallback']} "
                                  f"failed too: {back.get('error')}")
    else:
        run.fail(ROLLBACK_FAILED if run.release else FAILED,
                 f"{result['error']} (no previous release to return to)")


def stop_if_any_failed(runs: list[HostRun], console: Console, phase: str) -> bool:
    """The default failure policy: any failed host stops the run before further switches.

    Hosts not yet switched are marked skipped; they keep serving their release.
    """
    failed = [r for r in runs if not r.active]
    if not failed:
        return False
    names = ", ".join(r.name for r in failed)
    console.info(f"{phase} failed on {names}: no further host will be switched")
    for run in runs:
        if run.active and run.state != HEALTHY:
            run.fail(SKIPPED, f"not switched: {phase} failed on {names}")
    return True


def finish(runs: list[HostRun], console: Console, action: str, run_id: str,
           artifact: Artifact | None, started: float) -> RunResult:
    """History line, cleanup and unlock on every host that was locked."""
    release_id = artifact.release_id if artifact else None

    def wrap_up(run: HostRun) -> None:
        if not run.lock_token or run.conn is None:
            return
        request: dict[str, Any] = {
            "op": "finish",
            "deploy_to": run.host.deploy_to,
            "lock_token": run.lock_token,
            "history": history_entry(run, action, run_id),
        }
        if run.state == HEALTHY:
            request["keep_releases"] = run.host.settings["keep_releases"]
        elif release_id and run.release != release_id and run.state in (FAILED, SKIPPED):
            request["discard_release"] = release_id
        result = call(run, request, console, quiet=True)
        if result.get("removed"):
            console.host(run.name, f"removed old releases {', '.join(result['removed'])}")

    for run in runs:
        run.timings["total"] = time.monotonic() - run.started
    in_parallel([r for r in runs if r.lock_token], lambda r: wrap_up(r), console,
                failed_state=FAILED)
    result = RunResult(action, run_id, release_id, runs, exit_code_for(runs), started, time.time())
    console.summary(runs)
    return result


def history_entry(run: HostRun, action: str, run_id: str) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "action": action,
        "run_id": run_id,
        "user": getpass.getuser(),
        "controller": socket.gethostname(),
        "outcome": run.state,
        "release": run.release,
        "previous": run.previous,
        "error": run.error,
    }


def exit_code_for(runs: list[HostRun]) -> ExitCode:
    """One exit code for the fleet's end state (see ExitCode for the meanings)."""
    states = [r.state for r in runs]
    if ROLLBACK_FAILED in states:
        return ExitCode.PARTIAL
    if all(s == HEALTHY for s in states):
        return ExitCode.OK
    if UNREACHABLE in states:
        return ExitCode.UNREACHABLE
    if LOCKED_OUT in states:
        return ExitCode.LOCKED
    if HEALTHY in states:
        return ExitCode.PARTIAL
    return ExitCode.FAILED_ROLLED_BACK


def close_all(runs: list[HostRun]) -> None:
    for run in runs:
        if run.conn is not None:
            run.conn.close()


def call(run: HostRun, request: dict[str, Any], console: Console,
         upload: Any = None, quiet: bool = False) -> dict[str, Any]:
    """One agent call on this host's connection; progress lines are prefixed with the host."""
    assert run.conn is not None
    on_event: Callable[[str], None] | None = None
    if not quiet:
        def on_event(message: str) -> None:
            console.host(run.name, message)
    answer: AgentCall = run.conn.call(request, upload=upload, on_event=on_event)
    if answer.error:
        raise RemoteError(run.name, answer.error["message"])
    assert answer.result is not None
    return answer.result


# =========================================================================== rollback


def rollback(hosts: list[Host], console: Console, *, to: str | None = None,
             lock_wait: float = 0) -> RunResult:
    """Return every host to its previous good release (or `to`), restart and check."""
    started = time.time()
    run_id = new_run_id()
    runs = [HostRun(host) for host in hosts]
    try:
        owner = lock_owner(run_id, "rollback", to)
        in_parallel(runs, lambda r: check_and_lock(r, console, owner, lock_wait), console)
        if not stop_if_any_failed(runs, console, "preflight"):
            in_parallel(runs, lambda r: roll_back_host(r, console, to), console)
        return finish(runs, console, "rollback", run_id, None, started)
    finally:
        close_all(runs)


def roll_back_host(run: HostRun, console: Console, to: str | None) -> None:
    target = call(run, {"op": "resolve_rollback", "deploy_to": run.host.deploy_to, "to": to},
                  console)["target"]
    console.host(run.name, f"rolling back {run.previous} -> {target}")
    activate(run, console, target, fallback=run.previous, mark_failed=False, action="rollback")


# =========================================================================== releases


def list_releases(hosts: list[Host], console: Console) -> RunResult:
    """Read each host's releases, current marker, failures and recent history."""
    started = time.time()
    runs = [HostRun(host) for host in hosts]

    def read(run: HostRun) -> None:
        connect(run)
        result = call(run, {"op": "releases", "deploy_to": run.host.deploy_to}, console)
        run.facts.update(result)
        run.release = result["current"]
        run.state = HEALTHY

    try:
        in_parallel(runs, read, console)
    finally:
        close_all(runs)
    for run in runs:
        if run.state != HEALTHY:
            continue
        rows = [[("* " if r["current"] else "  ") + r["id"], (r["revision"] or "-")[:12],
                 r.get("switched_at") and time.strftime(
                     "%Y-%m-%d %H:%M:%S", time.localtime(r["switched_at"])) or "-",
                 f"FAILED: {r['failed']}" if r["failed"] else ""]
                for r in run.facts["releases"]]
        console.line(f"\n{run.name} ({run.host.address}:{run.host.deploy_to})")
        if rows:
            console.table(["release", "revision", "switched at", "status"], rows)
        else:
            console.line("  no releases")
    code = ExitCode.OK if all(r.state == HEALTHY for r in runs) else exit_code_for(runs)
    return RunResult("releases", new_run_id(), None, runs, code, started, time.time())


# =========================================================================== clear-cache


def clear_cache(hosts: list[Host], console: Console, *, path: str | None = None,
                restart: bool = False, include_venv: bool = False,
                lock_wait: float = 0) -> RunResult:
    """Remove bytecode from the current release (or PATH) under the deploy lock; optionally
    restart the programs (stop -> start) and health-check them."""
    for host in hosts:
        if path and not (path.rstrip("/") + "/").startswith(host.deploy_to + "/"):
            raise ConfigError(f"--path {path} is not under deploy_to {host.deploy_to} "
                              f"of {host.name}")
    started = time.time()
    run_id = new_run_id()
    runs = [HostRun(host) for host in hosts]
    try:
        owner = lock_owner(run_id, "clear-cache", None)
        in_parallel(runs, lambda r: check_and_lock(r, console, owner, lock_wait), console)
        if not stop_if_any_failed(runs, console, "preflight"):
            in_parallel(runs, lambda r: clear_host(r, console, path, restart, include_venv),
                        console)
        return finish(runs, console, "clear-cache", run_id, None, started)
    finally:
        close_all(runs)


def clear_host(run: HostRun, console: Console, path: str | None, restart: bool,
               include_venv: bool) -> None:
    result = call(run, {"op": "clear_cache", "deploy_to": run.host.deploy_to, "path": path,
                        "include_venv": include_venv}, console)
    run.facts["cleared"] = result
    if restart:
        if not run.previous:
            raise RemoteError(run.name, "no current release to restart")
        activate(run, console, run.previous, fallback=None, mark_failed=False, action="restart")
    else:
        run.state = HEALTHY
