"""`inv verify`: prove, host by host, that the code shipped is the code that runs.

The checks run on each host in one read-only round trip (deploytools/remote/verify.py):
current points at a release with a valid manifest (and the expected one, with
--expect); every shipped file is intact; no bytecode is stale or orphaned; every
supervised program runs from that release and was started after it was switched in;
the health endpoint answers and reports that release.
"""

from __future__ import annotations

import time

from deploytools.console import Console
from deploytools.errors import ExitCode, RemoteError
from deploytools.flow import (
    RunResult,
    call,
    close_all,
    connect,
    exit_code_for,
    new_run_id,
    verify_request,
)
from deploytools.hoststate import FAILED, HEALTHY, UNREACHABLE, HostRun
from deploytools.inventory import Host
from deploytools.rollout import in_parallel
from deploytools.sources import resolve_revision


def verify_host(run: HostRun, console: Console, expect: str | None) -> None:
    """Run the checks on one host; the host passes only when every check passes."""
    if run.conn is None:
        connect(run)
    result = call(run, verify_request(run, expect), console, quiet=True)
    run.release = result["release"]
    run.facts["verify"] = result
    failed = [c for c in result["checks"] if not c["ok"]]
    if failed:
        raise RemoteError(run.name, "; ".join(f"{c['check']}: {c['detail']}" for c in failed))
    run.state = HEALTHY


def verify_fleet(hosts: list[Host], console: Console, expect: str | None = None) -> RunResult:
    """Verify every host; exit 0 only when every check passes everywhere."""
    started = time.time()
    if expect:
        expect = resolve_revision(hosts[0].settings["source"], expect) or expect
    runs = [HostRun(host) for host in hosts]
    try:
        in_parallel(runs, lambda r: verify_host(r, console, expect), console)
    finally:
        close_all(runs)
    show_checks(runs, console)
    return RunResult("verify", new_run_id(), None, runs, verdict(runs), started, time.time(),
                     extra={"expect": expect})


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


def status_fleet(hosts: list[Host], console: Console) -> RunResult:
    """One view of the fleet: what each host actually runs, and whether it is sound."""
    started = time.time()
    runs = [HostRun(host) for host in hosts]
    try:
        in_parallel(runs, lambda r: verify_host(r, console, None), console)
    finally:
        close_all(runs)
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
    return RunResult("status", new_run_id(), None, runs, verdict(runs), started, time.time())


def verdict(runs: list[HostRun]) -> ExitCode:
    if all(r.state == HEALTHY for r in runs):
        return ExitCode.OK
    if any(r.state == UNREACHABLE for r in runs):
        return exit_code_for(runs)
    return ExitCode.VERIFY_FAILED
