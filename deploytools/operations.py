"""The tasks that inspect or tend hosts without shipping a release: releases, verify,
status, check, clear-cache and unlock. Each is a short body inside one `FleetRun`, over
the same steps as deploy, so every task connects, locks, stops on Ctrl-C and reports
the same way.

verify proves, host by host, that the code shipped is the code that runs; the checks
run on each host in one read-only round trip (deploytools/remote/verify.py): current
points at a release with a valid manifest (and the expected one, with --expect); every
shipped file is intact; no bytecode is stale or orphaned; every supervised program
runs from that release and was started after it was switched in; no process runs
another release's code; the health endpoint answers as configured.
"""

from __future__ import annotations

import time

from deploytools import steps
from deploytools.connection import Connector
from deploytools.console import Console
from deploytools.errors import ConfigError, RemoteError
from deploytools.fleetrun import FleetRun, RunResult
from deploytools.hoststate import DONE, FAILED, HEALTHY, LOCK_HELD, UNREACHABLE, HostRun
from deploytools.inventory import Host, normalise_path
from deploytools.remote import protocol
from deploytools.sources import resolve_revision

# =========================================================================== releases


def list_releases(hosts: list[Host], console: Console,
                  connector: Connector | None = None) -> RunResult:
    """Read each host's releases, current marker, failures and recent history."""
    with FleetRun("releases", hosts, console, connector=connector) as fleet:
        def read(run: HostRun) -> None:
            steps.connect(run)
            result = steps.call(run, protocol.Releases(deploy_to=run.host.deploy_to), console)
            run.facts.update(result)
            run.release = result["current"]
            run.state = DONE

        fleet.each(read)
        for run in fleet.runs:
            if run.state == DONE:
                show_releases(run, console)
        return fleet.finish(summary=False)


def show_releases(run: HostRun, console: Console) -> None:
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


# =========================================================================== verify, status


def verify(hosts: list[Host], console: Console, expect: str | None = None,
           connector: Connector | None = None) -> RunResult:
    """Verify every host; exit 0 only when every check passes everywhere."""
    if expect:
        expect = resolve_revision(hosts[0].settings["source"], expect) or expect
    with FleetRun("verify", hosts, console, connector=connector) as fleet:
        fleet.each(lambda r: verify_host(r, console, expect))
        show_checks(fleet.runs, console)
        return fleet.finish(extra={"expect": expect}, summary=False)


def status(hosts: list[Host], console: Console,
           connector: Connector | None = None) -> RunResult:
    """One view of the fleet: what each host actually runs, and whether it is sound."""
    with FleetRun("status", hosts, console, connector=connector) as fleet:
        fleet.each(lambda r: verify_host(r, console, None))
        show_status(fleet.runs, console)
        return fleet.finish(summary=False)


def verify_host(run: HostRun, console: Console, expect: str | None) -> None:
    """Run the checks on one host; the host passes only when every check passes."""
    if run.conn is None:
        steps.connect(run)
    result = steps.call(run, steps.verify_request(run, expect), console, quiet=True)
    run.release = result["release"]
    run.facts["verify"] = result
    failed = [c for c in result["checks"] if not c["ok"]]
    if failed:
        raise RemoteError(run.name, "; ".join(f"{c['check']}: {c['detail']}" for c in failed))
    run.state = HEALTHY


def show_checks(runs: list[HostRun], console: Console) -> None:
    """Per host, one row per check with its evidence; fixes under the failing ones."""
    for run in runs:
        checks = (run.facts.get("verify") or {}).get("checks")
        verdict = "ok" if run.state == HEALTHY else "FAILED"
        console.line(f"\n{run.name} ({run.host.address}): {verdict}")
        if not checks:
            console.line(f"  {run.error}")
            continue
        for check in checks:
            console.line(f"  {'ok  ' if check['ok'] else 'FAIL'}  {check['check']:<18} "
                         f"{check['detail']}")
            if check.get("fix"):
                console.line(f"        fix: {check['fix']}")
    failing = [r for r in runs if r.state == FAILED or r.state == UNREACHABLE]
    console.line("")
    console.line(f"verify: {len(runs) - len(failing)} of {len(runs)} hosts pass")


def show_status(runs: list[HostRun], console: Console) -> None:
    rows = []
    for run in runs:
        result = run.facts.get("verify") or {}
        checks = {c["check"]: c for c in result.get("checks", [])}
        processes = [c for name, c in checks.items()
                     if name.startswith("process ") or name == "old code"]
        health = checks.get("health")
        lock = result.get("lock")
        rows.append([
            run.name,
            run.release or "-",
            str(result.get("revision") or "-")[:12],
            "-" if not processes else ("ok" if all(c["ok"] for c in processes) else "STALE"),
            "-" if not health else ("ok" if health["ok"] else "FAIL"),
            f"held by {lock.get('user', '?')}" if lock else "free",
            "ok" if run.state == HEALTHY else (run.error or run.state),
        ])
    console.line("")
    console.table(["host", "release", "revision", "processes", "health", "lock", "status"],
                  rows)
    releases = {r.release for r in runs if r.release}
    if len(releases) > 1:
        console.line(f"\nfleet on {len(releases)} different releases: "
                     f"{', '.join(sorted(releases))}")


# =========================================================================== check


def check(hosts: list[Host], console: Console, connector: Connector | None = None) -> RunResult:
    """Preflight every host without changing anything: reachable with a known key,
    deploy_to writable, disk space, interpreter, supervisor and programs, lock free."""
    # a dry run's preflight is read-only: nothing is created and no lock is taken
    with FleetRun("check", hosts, console, dry_run=True, connector=connector) as fleet:
        owner = steps.lock_owner(fleet.run_id, "check", None)

        def preflight(run: HostRun) -> None:
            steps.check_and_lock(run, console, owner)
            run.state = DONE

        fleet.each(preflight)
        rows = []
        for run in fleet.runs:
            python = run.facts.get("python") or {}
            rows.append([run.name, "ok" if run.state == DONE else run.state,
                         python.get("version", "-"), run.release or "-", run.error or ""])
        console.line("")
        console.table(["host", "check", "python", "current", "problem"], rows)
        return fleet.finish(summary=False)


# =========================================================================== clear-cache


def clear_cache(hosts: list[Host], console: Console, *, path: str | None = None,
                restart: bool = False, include_venv: bool = False,
                lock_wait: float = 0, dry_run: bool = False,
                connector: Connector | None = None) -> RunResult:
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
    with FleetRun("clear-cache", hosts, console, dry_run=dry_run,
                  connector=connector) as fleet:
        if fleet.lock(None, lock_wait):
            fleet.each(lambda r: clear_host(r, console, path, restart, include_venv))
        return fleet.finish()


def clear_host(run: HostRun, console: Console, path: str | None, restart: bool,
               include_venv: bool) -> None:
    result = steps.call(run, protocol.ClearCache(deploy_to=run.host.deploy_to, path=path,
                                                  include_venv=include_venv), console)
    run.facts["cleared"] = result
    if restart:
        if not run.previous:
            raise RemoteError(run.name, "no current release to restart")
        steps.activate(run, console, run.previous, fallback=None, mark_failed=False,
                       action="restart")
    else:
        run.state = HEALTHY


# =========================================================================== unlock


def unlock(hosts: list[Host], console: Console, *, force: bool = False,
           connector: Connector | None = None) -> RunResult:
    """Remove deploy locks: stale ones (older than lock_expiry), or any with `force`."""
    with FleetRun("unlock", hosts, console, connector=connector) as fleet:
        def release(run: HostRun) -> None:
            steps.connect(run)
            result = steps.call(run, protocol.Unlock(
                deploy_to=run.host.deploy_to, force=force,
                stale_after=run.host.settings["lock_expiry"]), console)
            owner = result["owner"]
            run.state = DONE
            if owner is None:
                console.host(run.name, "not locked")
            elif result["removed"]:
                console.host(run.name, f"removed lock of {steps.describe_owner(owner)}, "
                                       f"{result['age_seconds']}s old")
            else:
                run.fail(LOCK_HELD, f"lock of {steps.describe_owner(owner)} is "
                                    f"{result['age_seconds']}s old and not stale; pass "
                                    "--force to remove it anyway")

        fleet.each(release)
        return fleet.finish(summary=False)
