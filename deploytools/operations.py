"""The tasks that inspect or tend hosts without shipping a release: releases, check,
clear-cache and unlock. They reuse the deploy flow's steps (connect, preflight and lock,
finish) so that every task connects, locks and reports the same way."""

from __future__ import annotations

import time

from deploytools.console import Console
from deploytools.errors import ConfigError, ExitCode, RemoteError
from deploytools.flow import (
    RunResult,
    activate,
    call,
    check_and_lock,
    close_all,
    connect,
    describe_owner,
    exit_code_for,
    lock_owner,
    locked_run,
    new_run_id,
)
from deploytools.hoststate import HEALTHY, LOCK_HELD, HostRun
from deploytools.inventory import Host, normalise_path
from deploytools.rollout import in_parallel

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
    code = exit_code_for(runs)
    return RunResult("releases", new_run_id(), None, runs, code, started, time.time())


# =========================================================================== clear-cache


def clear_cache(hosts: list[Host], console: Console, *, path: str | None = None,
                restart: bool = False, include_venv: bool = False,
                lock_wait: float = 0, dry_run: bool = False) -> RunResult:
    """Remove bytecode from the current release (or PATH) under the deploy lock; optionally
    restart the programs (stop -> start) and health-check them."""
    if path:
        if ".." in path.split("/"):
            raise ConfigError(f"--path {path} must not contain '..'")
        path = normalise_path(path)
    for host in hosts:
        if path and not (path + "/").startswith(host.deploy_to + "/"):
            raise ConfigError(f"--path {path} is not under deploy_to {host.deploy_to} "
                              f"of {host.name}")
    return locked_run(hosts, console, "clear-cache", None,
                      lambda r: clear_host(r, console, path, restart, include_venv),
                      lock_wait=lock_wait, dry_run=dry_run)


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


# =========================================================================== unlock


def unlock(hosts: list[Host], console: Console, *, force: bool = False) -> RunResult:
    """Remove deploy locks: stale ones (older than lock_expiry), or any with `force`."""
    started = time.time()
    runs = [HostRun(host) for host in hosts]

    def release(run: HostRun) -> None:
        connect(run)
        result = call(run, {"op": "unlock", "deploy_to": run.host.deploy_to, "force": force,
                            "stale_after": run.host.settings["lock_expiry"]}, console)
        owner = result["owner"]
        run.state = HEALTHY
        if owner is None:
            console.host(run.name, "not locked")
        elif result["removed"]:
            console.host(run.name, f"removed lock of {describe_owner(owner)}, "
                                   f"{result['age_seconds']}s old")
        else:
            run.fail(LOCK_HELD, f"lock of {describe_owner(owner)} is {result['age_seconds']}s "
                                 "old and not stale; pass --force to remove it anyway")

    try:
        in_parallel(runs, release, console)
    finally:
        close_all(runs)
    return RunResult("unlock", new_run_id(), None, runs, exit_code_for(runs), started,
                     time.time())


# =========================================================================== check


def check(hosts: list[Host], console: Console) -> RunResult:
    """Preflight every host without changing anything: reachable with a known key,
    deploy_to writable, disk space, interpreter, supervisor and programs, lock free."""
    started = time.time()
    runs = [HostRun(host, dry_run=True) for host in hosts]
    owner = lock_owner(new_run_id(), "check", None)

    def preflight(run: HostRun) -> None:
        check_and_lock(run, console, owner)
        run.state = HEALTHY

    try:
        in_parallel(runs, preflight, console)
    finally:
        close_all(runs)
    rows = []
    for run in runs:
        python = run.facts.get("python") or {}
        rows.append([run.name, "ok" if run.state == HEALTHY else run.state,
                     python.get("version", "-"), run.release or "-", run.error or ""])
    console.line("")
    console.table(["host", "check", "python", "current", "problem"], rows)
    code = exit_code_for(runs)
    if code == ExitCode.FAILED_ROLLED_BACK:
        code = ExitCode.VERIFY_FAILED  # problems found, nothing was attempted
    return RunResult("check", new_run_id(), None, runs, code, started, time.time())
