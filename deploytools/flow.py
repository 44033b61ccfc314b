"""The deploy and rollback order, top to bottom (our `deploy.rake`).

deploy:
  1. plan           build the artifact once, locally; one release id for every host
                    (with --skip-unchanged and git, only the revision, until needed)
  2. check          connect to every host at once (while planning), then preflight and
                    the deploy lock in one round trip (the first host alone, then the rest)
  3. prepare        every host in parallel, one round trip: the host names its current
                    release, gets only what changed (and bytecode compiled here once),
                    links shared paths, builds or reuses its venv, runs after_prepare.
                    Nothing served has changed yet.
  4. before_switch  hooks on every host (migrations run_once), still before any switch
  5. activate       batch by batch, on each host in one round trip: switch `current`
                    atomically, supervisor stop -> start, health check; a host that
                    fails is switched back, restarted and re-checked there and then
  6. finish         history line, cleanup of old releases, unlock (every exit path)

rollback: check and lock, pick the previous good release, activate it.

Each step is a function over one host's `HostRun`; the flow decides what a failure
means for the rest of the fleet (rollout.StopRule). Other tasks: operations.py.
"""

from __future__ import annotations

import contextlib
import getpass
import importlib.util
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from deploytools import balancer as lb
from deploytools import local_hooks
from deploytools.artifact import Artifact, build_artifact
from deploytools.console import Console
from deploytools.errors import ConfigError, ExitCode, LockHeldError, RemoteError
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
    UNREACHABLE,
    HostRun,
)
from deploytools.inventory import Host
from deploytools.rollout import (
    ROLLBACK_ALL,
    Interrupts,
    RolloutPolicy,
    StopRule,
    batches,
    in_parallel,
    parse_serial,
)
from deploytools.sources import resolve_revision
from deploytools.transport import AgentCall, Answer, HostConnection, Upload


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
           policy: RolloutPolicy | None = None, lock_wait: float = 0, dry_run: bool = False,
           skip_unchanged: bool = False,
           inventory_hosts: dict[str, Host] | None = None) -> RunResult:
    """Ship a new release to every host, or leave each host on the release it had.

    `inventory_hosts` (every host of the inventory) lets `balancer.haproxy.via` name a
    host that is not deployed in this run."""
    policy = policy or RolloutPolicy()
    started = time.time()
    run_id = new_run_id()
    source = single_source(hosts)
    # --skip-unchanged with git: the revision alone says who is current; build only if needed
    target = resolve_revision(source, ref or source.get("ref") or "HEAD") \
        if skip_unchanged and source.get("repo") else None
    artifact: Artifact | None = None
    runs = [HostRun(host, dry_run=dry_run) for host in hosts]
    stop = StopRule(policy, len(runs), console)
    connections = connect_in_background(runs, console)
    drain: lb.Balancer | None = None
    with Interrupts(console) as interrupts:
        stop.interrupts = interrupts
        try:
            if lb.Balancer.configured(runs) and not dry_run:
                drain = lb.Balancer(runs, console, inventory_hosts)
            artifact = None if target else plan(source, console, ref)
            connections.join()
            owner = lock_owner(run_id, "deploy", artifact.release_id if artifact else target)
            if skip_unchanged:
                in_parallel(active(runs), lambda r: skip_if_unchanged(
                    r, console, target or artifact.revision), console)
            lock_fleet(active(runs), console, lambda r: check_and_lock(
                r, console, owner, lock_wait, need_bytes=artifact.size if artifact else 0))
            if stop.halted(runs, "preflight") or not active(runs):
                return finish(runs, console, "deploy", run_id, artifact, started, interrupts)
            if drain is not None:  # socket answers, servers exist, no batch empties a backend
                drain.preflight(active(runs), batches(
                    active(runs), parse_serial(policy.serial, len(active(runs))), policy.canary))
            if artifact is None:
                artifact = plan(source, console, ref)
            artifact.avoid_ids({row["id"] for r in runs for row in r.facts.get("releases", [])})

            fresh = [r for r in active(runs) if compiles_here(r) and not r.previous]
            if fresh:  # compile while the sources travel; redeploys compile only changes
                artifact.start_precompile(fresh[0].host.settings["pyc_invalidation"])

            once = active(runs)[0]  # run_once hooks (migrations): one host only
            in_parallel(active(runs), lambda r: prepare(r, console, artifact, r is once),
                        console)
            if stop.halted(runs, "prepare") or run_once_failed(runs, once, "after_prepare",
                                                               console):
                return finish(runs, console, "deploy", run_id, artifact, started, interrupts)
            if any(r.host.get("hooks.before_switch") for r in runs) or \
                    local_hooks.registered("before_switch"):
                once = active(runs)[0] if once.failed else once
                in_parallel(active(runs), lambda r: run_hook_point(
                    r, console, "before_switch", artifact.release_id, r is once), console)
                if stop.halted(runs, "before_switch") or run_once_failed(
                        runs, once, "before_switch", console):
                    return finish(runs, console, "deploy", run_id, artifact, started,
                                  interrupts)

            size = parse_serial(policy.serial, len(active(runs)))
            plan_batches = batches(active(runs), size, policy.canary)
            for number, batch in enumerate(plan_batches, 1):
                if len(plan_batches) > 1 or dry_run:
                    console.info(f"batch {number}/{len(plan_batches)}: "
                                 f"{', '.join(r.name for r in batch)}")
                in_parallel(batch, lambda r: lb.activate_in_rotation(
                    drain, r, lambda: activate(r, console, artifact.release_id,
                                               run_once_here=r is once),
                    lambda: interrupts.requested), console)
                if stop.halted(runs, f"batch {number}"):
                    break
                if policy.batch_wait and number < len(plan_batches):
                    pause_between_batches(policy.batch_wait, console, interrupts)
            if policy.on_failure == ROLLBACK_ALL and any(r.failed for r in runs):
                roll_back_switched(runs, console, artifact.release_id)
            return finish(runs, console, "deploy", run_id, artifact, started, interrupts)
        except BaseException:
            connections.join()
            abandon(runs, console, interrupts)
            raise
        finally:
            if drain is not None:  # never leave a server drained (errors, Ctrl-C)
                drain.restore()
                drain.close()
            connections.join()  # nothing may connect behind close_all
            if artifact is not None:
                artifact.close()
            close_all(runs)


def pause_between_batches(seconds: float, console: Console, interrupts: Interrupts) -> None:
    """--batch-wait: let the fleet settle (caches warm, errors surface) before the next
    batch; an interrupt ends the pause at once."""
    console.info(f"waiting {seconds:g}s before the next batch (--batch-wait)")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not interrupts.requested:
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def connect_in_background(runs: list[HostRun], console: Console) -> threading.Thread:
    """Connect to every host while the caller plans (the agents load meanwhile);
    join() the thread before using or closing the connections."""
    worker = threading.Thread(target=in_parallel, args=(runs, connect, console),
                              name="connect", daemon=True)
    worker.start()
    return worker


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


def run_once_failed(runs: list[HostRun], once: HostRun, point: str,
                    console: Console) -> bool:
    """A run_once hook (a migration) that failed on its host must stop the run, whatever
    --max-failures allows: the other hosts would switch to code whose migration did not
    run. True when the run stops here."""
    hooks = once.host.get(f"hooks.{point}") or []
    if not once.failed or not any(isinstance(h, dict) and h.get("run_once") for h in hooks):
        return False
    reason = f"not switched: the run_once {point} hooks failed on {once.name}"
    console.error(reason)
    for run in active(runs):
        run.fail(SKIPPED, reason)
    return True


def active(runs: list[HostRun]) -> list[HostRun]:
    return [r for r in runs if r.active]


def roll_back_switched(runs: list[HostRun], console: Console, release_id: str) -> None:
    """Policy rollback-all: return every host this run switched to its previous release."""
    switched = [r for r in runs if r.state == HEALTHY and r.release == release_id]
    if not switched:
        return
    failed = ", ".join(r.name for r in runs if r.failed)
    console.info(f"rollback-all: {failed} failed; returning "
                 f"{', '.join(r.name for r in switched)} to their previous release")

    def back(run: HostRun) -> None:
        if not run.previous:
            raise RemoteError(run.name, "no previous release to return to")
        activate(run, console, run.previous, fallback=release_id, mark_failed=False,
                 action="rollback")
        if run.state == HEALTHY:
            run.fail(ROLLED_BACK, f"rolled back to {run.previous}: fleet policy rollback-all "
                                  f"({failed} failed)")

    in_parallel(switched, back, console, failed_state=ROLLBACK_FAILED)


def abandon(runs: list[HostRun], console: Console, interrupts: Interrupts) -> None:
    """A hard abort (second Ctrl-C, or a bug): say what may be inconsistent, free what we can.

    Hosts with a remote step in flight keep their lock: the step may still be switching
    them. Every other lock is released so the next run is not blocked for nothing.
    """
    in_flight = [r for r in runs if r.in_flight]
    idle = [r for r in runs if r.lock_token and not r.in_flight and r.conn is not None]
    if idle:
        with contextlib.suppress(BaseException):
            in_parallel(idle, lambda r: unlock_host(r, console), console)
    if in_flight:
        console.error("aborted while a remote step was running on "
                      f"{', '.join(r.name for r in in_flight)}: those hosts may be mid-step; "
                      "their agents finish it (a switch ends healthy or rolled back) and "
                      "unlock by themselves. Check them with `inv verify`.")


def unlock_host(run: HostRun, console: Console) -> None:
    call(run, {"op": "unlock", "deploy_to": run.host.deploy_to, "token": run.lock_token},
         console, quiet=True)
    run.lock_token = None


def single_source(hosts: list[Host]) -> dict[str, Any]:
    """One artifact serves the whole run, so every selected host must share the source."""
    sources = {repr(sorted(h.settings["source"].items())) for h in hosts}
    if len(sources) > 1:
        raise ConfigError("the selected hosts have different 'source' settings; "
                          "deploy them in separate runs")
    return dict(hosts[0].settings["source"])


def plan(source: dict[str, Any], console: Console, ref: str | None) -> Artifact:
    """Build the artifact once for the whole fleet."""
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


def skip_if_unchanged(run: HostRun, console: Console, revision: str) -> None:
    """--skip-unchanged: a host already on `revision` that passes every verify check is
    left alone (never locked). All hosts are asked at once; the rest go on to lock."""
    step_started = time.monotonic()
    request = dict(verify_request(run, None), op="preflight", read_only=True,
                   unchanged_if=revision)
    result = call(run, request, console)
    run.timings["check"] = time.monotonic() - step_started
    if result.get("unchanged"):
        run.previous = run.release = result["current"]
        run.state = UNCHANGED


def verify_request(run: HostRun, expect: str | None) -> dict[str, Any]:
    """What the agent's proof checks need (inv verify, and --skip-unchanged's question)."""
    settings = run.host.settings
    return {
        "op": "verify",
        "deploy_to": run.host.deploy_to,
        "expect": expect,
        "supervisor": settings["supervisor"],
        "programs": settings["supervisor"]["programs"],
        "health": settings["health"],
        "values": host_values(run),
    }


def check_and_lock(run: HostRun, console: Console, owner: dict[str, Any] | None,
                   lock_wait: float = 0, need_bytes: int = 0) -> None:
    """Connect, run preflight checks and take the deploy lock, in one round trip.

    In a dry run the preflight is read-only: nothing is created and no lock is taken.
    """
    step_started = time.monotonic()
    if run.conn is None:
        connect(run)
    settings = run.host.settings
    request: dict[str, Any] = {
        "op": "preflight",
        "deploy_to": run.host.deploy_to,
        "supervisor": settings["supervisor"],
        "programs": settings["supervisor"]["programs"],
        "min_free_mb": 3 * need_bytes // (1024 * 1024) + 1,
        "shared": settings["shared"],
        "read_only": run.dry_run,
    }
    if owner:
        # a run whose controller vanished finishes its step within its own limit
        request["lock"] = {"owner": owner, "wait": lock_wait, "expiry": settings["lock_expiry"],
                           "orphan_wait": float(settings["ssh"]["command_timeout"]) + 10}
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


def connect(run: HostRun) -> None:
    """Open the run's single SSH connection to this host (host key verified) and start
    its agent session, which loads on the host while the controller goes on."""
    step_started = time.monotonic()
    run.conn = HostConnection(run.host, dry_run=run.dry_run)
    run.conn.open()
    run.conn.start_agent()
    run.state = CONNECTED
    run.timings["connect"] = time.monotonic() - step_started


def describe_owner(owner: dict[str, Any]) -> str:
    return (f"{owner.get('user', '?')}@{owner.get('controller', '?')} (pid {owner.get('pid')}, "
            f"{owner.get('action', 'run')} of {owner.get('release') or 'current'})")


def describe_lock_holder(holder: dict[str, Any]) -> str:
    who = f"{holder.get('user', '?')}@{holder.get('controller', '?')} (pid {holder.get('pid')})"
    age = holder.get("age_seconds")
    stale = " — STALE, remove it with `inv unlock --force`" if holder.get("stale") else ""
    return (f"deploy lock held by {who}, {holder.get('action', 'run')} of release "
            f"{holder.get('release')}, for {age}s{stale}; retry later or pass --lock-wait")


def prepare(run: HostRun, console: Console, artifact: Artifact, run_once_here: bool) -> None:
    """Create releases/<id> on the host; it still serves its old release.

    One remote command: the host names the release it can start from and which of its
    files are intact; only the difference is sent, with bytecode compiled here once
    when the host's interpreter has our magic number.
    """
    step_started = time.monotonic()
    settings = run.host.settings
    request = {
        "op": "prepare",
        "deploy_to": run.host.deploy_to,
        "release_id": artifact.release_id,
        "manifest": {k: v for k, v in artifact.manifest.items() if k != "files"},
        "file_count": len(artifact.files),
        "artifact_size": artifact.size,
        "bytecode": settings["bytecode"],
        "pyc_invalidation": settings["pyc_invalidation"],
        "shared": settings["shared"],
        "venv": settings.get("venv"),
        **hook_context(run, run_once_here),
    }

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


def activate(run: HostRun, console: Console, release_id: str, *, fallback: str | None = None,
             mark_failed: bool = True, action: str = "deploy", run_once_here: bool = False) -> None:
    """Switch, restart, health-check on the host; on failure it switches back itself."""
    step_started = time.monotonic()
    request = activation_request(run, release_id, fallback or run.previous, mark_failed)
    request.update(action=action, **hook_context(run, run_once_here))
    fire_local("before_restart", run, release_id, console)  # leaves rotation (may veto)
    result = call(run, request, console)
    lb.availability(run).unavailable = lb.unavailable_seconds(result)
    record_activation(run, result)
    run.timings["activate"] = time.monotonic() - step_started
    fire_local("after_restart" if run.state == HEALTHY else "after_failure", run,
               run.release, console)


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
    endpoint = run.conn.endpoint if run.conn is not None else None
    address = endpoint.hostname if endpoint is not None else run.host.address  # ssh_config HostName
    return {"host": address, "name": run.name, "deploy_to": run.host.deploy_to,
            "previous": run.previous or ""}


def run_hook_point(run: HostRun, console: Console, point: str, release_id: str,
                   run_once_here: bool) -> None:
    """A fleet-wide hook phase: the host's shell hooks, then the controller's Python ones."""
    if run.host.get(f"hooks.{point}"):
        request = {"op": "hooks", "deploy_to": run.host.deploy_to, "point": point,
                   "release_id": release_id, **hook_context(run, run_once_here)}
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


def finish(runs: list[HostRun], console: Console, action: str, run_id: str,
           artifact: Artifact | None, started: float,
           interrupts: Interrupts | None = None) -> RunResult:
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
            "record_intact": action == "deploy",  # the next deploy's base, in the background
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
    # A host that timed out or vanished cannot be wrapped up: its lock stays, reported.
    in_parallel([r for r in runs if r.lock_token and r.state != UNREACHABLE],
                wrap_up, console)
    code = exit_code_for(runs)
    if interrupts is not None and interrupts.requested and code != ExitCode.PARTIAL:
        code = ExitCode.INTERRUPTED
    extra = {"revision": artifact.revision, "ref": artifact.ref} if artifact else {}
    result = RunResult(action, run_id, release_id, runs, code, started, time.time(), extra)
    console.summary(runs)
    if any(r.dry_run for r in runs):
        console.info("dry run: nothing was changed on any host")
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
    states = [HEALTHY if r.state == UNCHANGED else r.state for r in runs]
    if ROLLBACK_FAILED in states:
        return ExitCode.PARTIAL
    if all(s == HEALTHY for s in states):
        return ExitCode.OK
    if UNREACHABLE in states:
        return ExitCode.UNREACHABLE
    if LOCK_HELD in states:
        return ExitCode.LOCKED
    if HEALTHY in states:
        return ExitCode.PARTIAL
    return ExitCode.FAILED_ROLLED_BACK


def close_all(runs: list[HostRun]) -> None:
    for run in runs:
        if run.conn is not None:
            run.conn.close()


def call(run: HostRun, request: dict[str, Any], console: Console, quiet: bool = False,
         answer: Answer | None = None) -> dict[str, Any]:
    """One agent call on this host's connection; progress lines are prefixed with the host."""
    assert run.conn is not None
    if run.lock_token and not run.dry_run and "deploy_to" in request:
        # the host refuses changes from a run that no longer holds its lock
        request = dict(request, lock_token=run.lock_token)
    on_event: Callable[[str], None] | None = None
    if not quiet:
        def on_event(message: str) -> None:
            console.host(run.name, message)
    run.in_flight = True
    step_started = time.monotonic()
    try:
        reply: AgentCall = run.conn.call(request, on_event=on_event,
                                         timeout=run.remaining_time(), answer=answer)
    finally:
        run.in_flight = False
        run.busy += time.monotonic() - step_started
    if reply.error:
        raise RemoteError(run.name, reply.error["message"])
    assert reply.result is not None
    return reply.result


# =========================================================================== rollback


def rollback(hosts: list[Host], console: Console, *, to: str | None = None,
             lock_wait: float = 0, dry_run: bool = False) -> RunResult:
    """Return every host to its previous good release (or `to`), restart and check."""
    return locked_run(hosts, console, "rollback", to, lambda r: roll_back_host(r, console, to),
                      lock_wait=lock_wait, dry_run=dry_run)


def locked_run(hosts: list[Host], console: Console, action: str, release: str | None,
               step: Callable[[HostRun], None], *, lock_wait: float = 0,
               dry_run: bool = False) -> RunResult:
    """The shape of every task that changes hosts without a new release: connect,
    preflight and lock, one step per host in parallel, then history and unlock."""
    started = time.time()
    run_id = new_run_id()
    runs = [HostRun(host, dry_run=dry_run) for host in hosts]
    with Interrupts(console) as interrupts:
        stop = StopRule(RolloutPolicy(), len(runs), console)
        stop.interrupts = interrupts
        try:
            owner = lock_owner(run_id, action, release)
            lock_fleet(runs, console, lambda r: check_and_lock(r, console, owner, lock_wait))
            if not stop.halted(runs, "preflight"):
                in_parallel(active(runs), step, console)
            return finish(runs, console, action, run_id, None, started, interrupts)
        except BaseException:
            abandon(runs, console, interrupts)
            raise
        finally:
            close_all(runs)


def roll_back_host(run: HostRun, console: Console, to: str | None) -> None:
    target = call(run, {"op": "resolve_rollback", "deploy_to": run.host.deploy_to, "to": to},
                  console)["target"]
    console.host(run.name, f"rolling back {run.previous} -> {target}")
    activate(run, console, target, fallback=run.previous, mark_failed=False, action="rollback")
