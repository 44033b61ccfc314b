"""The step library: what one task does on one host, one function per step.

Each step takes that host's `HostRun`, talks to its agent through `call` (one round
trip per step) and records the outcome in the run's state. Steps never decide what a
failure means for the rest of the fleet; the tasks that use them do (flow.py for
deploy and rollback, operations.py for the others), inside one `FleetRun`.
"""

from __future__ import annotations

import getpass
import importlib.util
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from deploytools import balancer as lb
from deploytools import local_hooks
from deploytools.artifact import Artifact
from deploytools.console import Console
from deploytools.errors import LockHeldError, RemoteError
from deploytools.hoststate import (
    CONNECTED,
    FAILED,
    HEALTHY,
    LOCK_HELD,
    LOCKED,
    PREPARED,
    ROLLBACK_FAILED,
    ROLLED_BACK,
    SKIPPED,
    UNCHANGED,
    HostRun,
)
from deploytools.remote import protocol
from deploytools.rollout import in_parallel
from deploytools.transport import AgentCall, Answer, Upload


def active(runs: list[HostRun]) -> list[HostRun]:
    return [r for r in runs if r.active]


# =========================================================================== connect, lock

def connect(run: HostRun) -> None:
    """Open the run's single SSH connection to this host (host key verified) and start
    its agent session, which loads on the host while the controller goes on."""
    step_started = time.monotonic()
    run.conn = run.connector(run.host)
    with run.conn.costs.measure("connect", run.conn):
        run.conn.open()
        run.conn.start_agent()
    run.state = CONNECTED
    run.timings["connect"] = time.monotonic() - step_started



def lock_fleet(runs: list[HostRun], console: Console,
               check: Callable[[HostRun], None]) -> None:
    """Connect to every host at once, then preflight and lock the first reachable host
    alone, then the rest in parallel.

    Two runs started at once then meet on the same first host: exactly one gets on,
    the other stops there without having locked anything else (no split fleet).
    """
    in_parallel([r for r in runs if r.conn is None and r.active], connect, console)
    reachable = active(runs)
    in_parallel(reachable[:1], check, console)
    if reachable and reachable[0].state == LOCK_HELD:
        for run in reachable[1:]:
            run.fail(SKIPPED, f"not contacted: {reachable[0].name} is locked")
        return
    in_parallel(reachable[1:], check, console)



def check_and_lock(run: HostRun, console: Console, owner: dict[str, Any] | None,
                   lock_wait: float = 0, need_bytes: int = 0) -> None:
    """Connect, run preflight checks and take the deploy lock, in one round trip.

    In a dry run the preflight is read-only: nothing is created and no lock is taken.
    """
    step_started = time.monotonic()
    if run.conn is None:
        connect(run)
    settings = run.host.settings
    # a run whose controller vanished finishes its step within its own limit
    lock = {"owner": owner, "wait": lock_wait, "expiry": settings["lock_expiry"],
            "orphan_wait": float(settings["ssh"]["command_timeout"]) + 10} if owner else None
    request = protocol.Preflight(
        deploy_to=run.host.deploy_to, supervisor=settings["supervisor"],
        min_free_mb=3 * need_bytes // (1024 * 1024) + 1, shared=settings["shared"],
        read_only=run.dry_run, lock=lock)
    result = call(run, request, console)
    run.facts["python"] = result["python"]
    run.facts["releases"] = result["releases"]
    run.previous = run.release = result["current"]
    run.timings["check"] = time.monotonic() - step_started
    if result["problems"]:
        raise RemoteError(run.name, "; ".join(result["problems"]))
    lock = result.get("lock")
    if lock and lock.get("holder"):
        raise LockHeldError(run.name, describe_lock_holder(lock["holder"]))
    if lock and (lock["acquired"] or run.dry_run):
        run.lock_token = owner["token"] if owner else None
        run.state = LOCKED



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



def describe_owner(owner: dict[str, Any]) -> str:
    return (f"{owner.get('user', '?')}@{owner.get('controller', '?')} (pid {owner.get('pid')}, "
            f"{owner.get('action', 'run')} of {owner.get('release') or 'current'})")


def describe_lock_holder(holder: dict[str, Any]) -> str:
    who = f"{holder.get('user', '?')}@{holder.get('controller', '?')} (pid {holder.get('pid')})"
    age = holder.get("age_seconds")
    stale = " — STALE, remove it with `inv unlock --force`" if holder.get("stale") else ""
    return (f"deploy lock held by {who}, {holder.get('action', 'run')} of release "
            f"{holder.get('release')}, for {age}s{stale}; retry later or pass --lock-wait")



def unlock_host(run: HostRun, console: Console) -> None:
    call(run, protocol.Unlock(deploy_to=run.host.deploy_to, token=run.lock_token),
         console, quiet=True)
    run.lock_token = None



# =========================================================================== prepare


def prepare(run: HostRun, console: Console, artifact: Artifact, run_once_here: bool) -> None:
    """Create releases/<id> on the host; it still serves its old release.

    One remote command: the host names the release it can start from and which of its
    files are intact; only the difference is sent, with bytecode compiled here once
    when the host's interpreter has our magic number.
    """
    step_started = time.monotonic()
    settings = run.host.settings
    request = protocol.Prepare(
        deploy_to=run.host.deploy_to,
        release_id=artifact.release_id,
        manifest={k: v for k, v in artifact.manifest.items() if k != "files"},
        file_count=len(artifact.files),
        artifact_size=artifact.size,
        bytecode=settings["bytecode"],
        pyc_invalidation=settings["pyc_invalidation"],
        shared=settings["shared"],
        venv=settings.get("venv"),
        **hook_context(run, run_once_here),
    )

    def send_difference(question: dict[str, Any]) -> tuple[dict[str, Any], Upload | None]:
        changed, removed = artifact.delta(question["files"])
        fresh = not question["base"]
        size, stream = artifact.archive(None if fresh else list(changed))
        ship_pycs = compiles_here(run)
        answer: dict[str, Any] = {"changed": changed, "removed": removed,
                                  "digest": artifact.digest, "archive_size": size,
                                  "pycs_follow": ship_pycs}

        def upload() -> Iterator[bytes]:
            yield from stream()
            if ship_pycs:  # compiled meanwhile (or now): sent right after the sources
                pycs = artifact.pycs(list(changed), settings["pyc_invalidation"])
                pyc_size, pyc_stream = artifact.archive([], pycs)
                yield f"{pyc_size}\n".encode()
                yield from pyc_stream()

        return answer, upload

    result = call(run, request, console, answer=send_difference)
    run.facts["prepare"] = result
    fire_local("after_prepare", run, artifact.release_id, console)
    run.state = PREPARED
    run.timings["prepare"] = time.monotonic() - step_started


def compiles_here(run: HostRun) -> bool:
    """Compile once on the controller: hash-based pycs from our interpreter are valid on a
    host whose interpreter has the same magic number and cache tag."""
    settings = run.host.settings
    python = run.facts.get("python") or {}
    return (settings["bytecode"] == "precompile"
            and settings["pyc_invalidation"] in ("checked-hash", "unchecked-hash")
            and python.get("magic") == importlib.util.MAGIC_NUMBER.hex()
            and python.get("cache_tag") == sys.implementation.cache_tag)



# =========================================================================== activate


def activate(run: HostRun, console: Console, release_id: str, *, fallback: str | None = None,
             mark_failed: bool = True, action: str = "deploy", run_once_here: bool = False) -> None:
    """Switch, restart, health-check on the host; on failure it switches back itself."""
    step_started = time.monotonic()
    request = activation_request(run, release_id, fallback or run.previous, mark_failed,
                                 action, run_once_here)
    fire_local("before_restart", run, release_id, console)  # leaves rotation (may veto)
    result = call(run, request, console)
    lb.availability(run).unavailable = lb.unavailable_seconds(result)
    record_activation(run, result)
    run.timings["activate"] = time.monotonic() - step_started
    fire_local("after_restart" if run.state == HEALTHY else "after_failure", run,
               run.release, console)


def activation_request(run: HostRun, target: str, fallback: str | None, mark_failed: bool,
                       action: str, run_once_here: bool) -> protocol.Activate:
    settings = run.host.settings
    return protocol.Activate(
        deploy_to=run.host.deploy_to,
        target=target,
        fallback=fallback if fallback != target else None,
        mark_failed=mark_failed,
        supervisor=settings["supervisor"],
        health=settings["health"],
        action=action,
        **hook_context(run, run_once_here),
    )


def hook_context(run: HostRun, run_once_here: bool) -> dict[str, Any]:
    """What the agent needs to run hooks and fill placeholders for this host."""
    return dict(hooks=run.host.settings["hooks"], run_once_here=run_once_here,
                values=host_values(run))


def host_values(run: HostRun) -> dict[str, str]:
    """Placeholder values known to the controller ({release}/{revision} come from the host)."""
    endpoint = run.conn.endpoint if run.conn is not None else None
    address = endpoint.hostname if endpoint is not None else run.host.address  # ssh_config HostName
    return {"host": address, "name": run.name, "deploy_to": run.host.deploy_to,
            "previous": run.previous or ""}


def run_hook_point(run: HostRun, console: Console, point: str, release_id: str,
                   run_once_here: bool) -> None:
    """A fleet-wide hook phase: the host's shell hooks, then the controller's Python ones."""
    if run.host.get(f"hooks.{point}"):
        request = protocol.Hooks(deploy_to=run.host.deploy_to, point=point,
                                 release_id=release_id, **hook_context(run, run_once_here))
        run.facts.setdefault("hooks", []).extend(call(run, request, console)["hooks"])
    fire_local(point, run, release_id, console)


def fire_local(point: str, run: HostRun, release: str | None, console: Console) -> None:
    """Call the controller-side Python hooks registered for this point (local_hooks)."""
    if not local_hooks.registered(point):
        return
    context = local_hooks.HookContext(
        point=point, name=run.name, address=run.host.address, deploy_to=run.host.deploy_to,
        release=release, previous=run.previous, settings=run.host.settings,
        connection=None if run.dry_run or run.conn is None else run.conn.fabric)
    for problem in local_hooks.fire(point, context):
        console.host(run.name, problem)


def record_activation(run: HostRun, result: dict[str, Any]) -> None:
    attempt = result["attempt"]
    run.facts["warnings"] = [
        f"pid {s['pid']} ({s['user']}: {s['command'][:80]}) runs from {', '.join(s['runs'])}"
        for s in attempt.get("strays") or []]
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



# =========================================================================== read-only


def skip_if_unchanged(run: HostRun, console: Console, revision: str) -> None:
    """--skip-unchanged: a host already on `revision` that passes every verify check is
    left alone (never locked). All hosts are asked at once; the rest go on to lock."""
    step_started = time.monotonic()
    checks = verify_request(run, None)
    request = protocol.Preflight(
        deploy_to=checks.deploy_to, supervisor=checks.supervisor, health=checks.health,
        values=checks.values, read_only=True, unchanged_if=revision)
    result = call(run, request, console)
    run.timings["check"] = time.monotonic() - step_started
    if result.get("unchanged"):
        run.previous = run.release = result["current"]
        run.state = UNCHANGED


def verify_request(run: HostRun, expect: str | None) -> protocol.Verify:
    """What the agent's proof checks need (inv verify, and --skip-unchanged's question)."""
    settings = run.host.settings
    return protocol.Verify(deploy_to=run.host.deploy_to, expect=expect,
                           supervisor=settings["supervisor"], health=settings["health"],
                           values=host_values(run))



def roll_back_host(run: HostRun, console: Console, to: str | None) -> None:
    target = protocol.ResolveRollbackResult.from_wire(call(
        run, protocol.ResolveRollback(deploy_to=run.host.deploy_to, to=to), console)).target
    console.host(run.name, f"rolling back {run.previous} -> {target}")
    activate(run, console, target, fallback=run.previous, mark_failed=False, action="rollback")


# =========================================================================== finish


def wrap_up(run: HostRun, console: Console, action: str, run_id: str,
            release_id: str | None) -> None:
    """History line, cleanup of old releases (or of this run's unused one) and unlock."""
    if not run.lock_token or run.conn is None:
        return
    request = protocol.Finish(
        deploy_to=run.host.deploy_to,
        lock_token=run.lock_token,
        history=history_entry(run, action, run_id),
        record_intact=action == "deploy",  # the next deploy's base, in the background
    )
    if run.state == HEALTHY:
        request.keep_releases = run.host.settings["keep_releases"]
    elif release_id and run.release != release_id and run.state in (FAILED, SKIPPED):
        request.discard_release = release_id
    result = call(run, request, console, quiet=True)
    if result.get("removed"):
        console.host(run.name, f"removed old releases {', '.join(result['removed'])}")


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



# =========================================================================== agent calls


def call(run: HostRun, request: protocol.Request, console: Console, quiet: bool = False,
         answer: Answer | None = None) -> dict[str, Any]:
    """One agent call on this host's connection; progress lines are prefixed with the host."""
    assert run.conn is not None
    if run.lock_token and not run.dry_run:
        # the host refuses changes from a run that no longer holds its lock
        request = request.replace(lock_token=run.lock_token)
    on_event: Callable[[str], None] | None = None
    if not quiet:
        def on_event(message: str) -> None:
            console.host(run.name, message)
    run.in_flight = True
    step_started = time.monotonic()
    try:
        reply: AgentCall = run.conn.call(request, on_event=on_event,
                                         timeout=run.remaining_time(), answer=answer)
    except Exception:
        run.in_flight = False
        raise
    finally:  # an abort (KeyboardInterrupt) leaves it in flight: the agent goes on
        run.busy += time.monotonic() - step_started
    run.in_flight = False
    if reply.error:
        raise RemoteError(run.name, reply.error["message"])
    assert reply.result is not None
    return reply.result

