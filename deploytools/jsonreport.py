"""The machine-readable run report (`--json PATH`, or `-` for stdout).

One JSON document per run, the same shape for every task, described by
`report.schema.json` beside this file (validated against real runs in the tests).
Built from the per-host states, never from log lines; secrets are masked.
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from deploytools import __version__
from deploytools.costs import run_cost
from deploytools.fleetrun import RunResult
from deploytools.hoststate import HostRun
from deploytools.masking import mask_secrets

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


def host_entry(run: HostRun) -> dict[str, Any]:
    conn = run.conn
    verify = run.facts.get("verify") or {}
    entry: dict[str, Any] = {
        "name": run.name,
        "address": run.host.address,
        "outcome": run.state,
        "release": run.release,
        "previous": run.previous,
        "error": run.error,
        "phases": {k: round(v, 3) for k, v in run.timings.items()},
        "programs": [
            {"name": p.get("name"), "old_pid": p.get("old_pid"), "new_pid": p.get("new_pid"),
             "started_at": iso(p.get("started_at")), "cwd": p.get("cwd")}
            for p in run.programs
        ],
        "health": health_entry(run.health),
        "transport": {
            "connections": conn.connections if conn else 0,
            "commands": conn.commands if conn else 0,
            "requests": conn.requests if conn else 0,
            "bytes_sent": conn.bytes_sent if conn else 0,
        },
        "cost": conn.costs.report() if conn else {},
    }
    if verify.get("checks") is not None:
        entry["checks"] = [{"check": c["check"], "ok": c["ok"], "detail": c["detail"],
                            "fix": c.get("fix")} for c in verify["checks"]]
    if run.facts.get("warnings"):
        entry["warnings"] = list(run.facts["warnings"])
    if "lock" in verify or "lock" in run.facts:
        entry["lock"] = verify.get("lock", run.facts.get("lock"))
    if run.facts.get("releases") is not None and isinstance(run.facts["releases"], list):
        entry["releases"] = run.facts["releases"]
    if run.facts.get("availability") is not None:
        entry["availability"] = run.facts["availability"].as_dict()
    if run.facts.get("cleared"):
        cleared = run.facts["cleared"]
        entry["cleared"] = {"path": cleared.get("path"), "dirs": cleared.get("dirs", 0),
                            "files": cleared.get("files", 0)}
    return entry


def health_entry(health: dict[str, Any] | None) -> dict[str, Any] | None:
    if not health:
        return None
    return {"ok": bool(health.get("ok")), "status": health.get("status") or None,
            "attempts": health.get("attempts"), "seconds": health.get("seconds"),
            "error": health.get("error")}


def build_report(result: RunResult, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "deploytools", "version": __version__},
        "run": {
            "id": result.run_id,
            "action": result.action,
            "release_id": result.release_id,
            "revision": result.extra.get("revision"),
            "ref": result.extra.get("ref"),
            "user": getpass.getuser(),
            "controller": socket.gethostname(),
            "started_at": iso(result.started_at),
            "ended_at": iso(result.ended_at),
            "seconds": round(result.ended_at - result.started_at, 3),
            "dry_run": bool(options.get("dry_run")),
            "options": {k: v for k, v in options.items() if v is not None},
            "cost": run_cost(),
        },
        "exit_code": int(result.exit_code),
        "outcome": result.exit_code.name.lower(),
        "hosts": [host_entry(run) for run in result.runs],
    }


def write_report(result: RunResult, options: dict[str, Any], target: str) -> None:
    """Write the report to a file (atomically) or to stdout with `-`."""
    write_document(build_report(result, options), target)


def error_report(action: str, options: dict[str, Any], started_at: float, exit_code: int,
                 message: str) -> dict[str, Any]:
    """The report of a run that ended without a result (exit 1, 2, an abort): a pipeline
    reading `--json` must never find the previous run's report, or none."""
    now = time.time()
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "deploytools", "version": __version__},
        "run": {
            "id": uuid.uuid4().hex[:12],
            "action": action,
            "release_id": None,
            "revision": None,
            "ref": None,
            "user": getpass.getuser(),
            "controller": socket.gethostname(),
            "started_at": iso(started_at),
            "ended_at": iso(now),
            "seconds": round(max(0.0, now - started_at), 3),
            "dry_run": bool(options.get("dry_run")),
            "options": {k: v for k, v in options.items() if v is not None},
        },
        "exit_code": exit_code,
        "outcome": "error",
        "error": message,
        "hosts": [],
    }


def write_document(document: dict[str, Any], target: str) -> None:
    """Write a report document, masked, to a file (atomically) or to stdout with `-`."""
    text = mask_secrets(json.dumps(document, indent=2, sort_keys=True, default=str)) + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
