"""The invoke task collection: thin wrappers that parse flags, run a flow, set the exit code.

Add it to your own `tasks.py`::

    from invoke import Collection
    import deploytools.tasks
    ns = Collection(deploytools.tasks.collection)      # or ns.add_collection(..., "deploy")

Every task takes ``--hosts`` (group, host names, or ``all``) and ``--inventory``
(default ``inventory.yaml`` or ``$DEPLOYTOOLS_INVENTORY``; also settable as
``deploytools.inventory`` in invoke's config). Errors are one line; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from deploytools import flow
from deploytools.errors import DeployToolsError, ExitCode
from deploytools.inventory import Host, load_inventory
from deploytools.report import Console
from deploytools.rollout import RolloutPolicy

COMMON_HELP = {
    "hosts": "Hosts to act on: a group, host names, or 'all' (comma-separated).",
    "inventory": "Inventory file (default: inventory.yaml or $DEPLOYTOOLS_INVENTORY).",
    "debug": "Show tracebacks for errors.",
}


def _select(c: Context, hosts: str | None, inventory: str | None) -> list[Host]:
    configured = c.config.get("deploytools", {}) if hasattr(c, "config") else {}
    path = inventory or configured.get("inventory")
    return load_inventory(path).select(hosts or configured.get("hosts"))


def _run(debug: bool, body: Callable[[Console], flow.RunResult | None]) -> None:
    """Run a flow and turn its outcome (or error) into a one-line message and an exit code."""
    console = Console()
    try:
        result = body(console)
    except KeyboardInterrupt:
        raise Exit("interrupted", ExitCode.INTERRUPTED) from None
    except DeployToolsError as exc:
        if debug:
            traceback.print_exc()
        raise Exit(f"error: {exc}", int(exc.exit_code)) from None
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        raise Exit(f"internal error: {type(exc).__name__}: {exc}", ExitCode.INTERNAL) from None
    if result is not None and result.exit_code != ExitCode.OK:
        failed = [f"{r.name}: {r.error}" for r in result.runs if r.error]
        message = "; ".join(failed) or result.exit_code.name
        raise Exit(f"{result.action} failed ({result.exit_code.name.lower()}): {message}",
                   int(result.exit_code))


@task(help={**COMMON_HELP, "ref": "Git ref to deploy (default: source.ref, else HEAD).",
            "serial": "Batch size: N hosts or P% at a time (default: all at once).",
            "canary": "Switch one host alone first; the rest only if it is healthy.",
            "max_failures": "Failed hosts (N or P%) the run may lose and go on (default 0).",
            "on_failure": "keep (default: healthy batches stay) or rollback-all.",
            "lock_wait": "Seconds to wait for another run's lock (default: fail at once)."})
def deploy(c: Context, hosts: str | None = None, inventory: str | None = None,
           ref: str | None = None, serial: str | None = None, canary: bool = False,
           max_failures: str = "0", on_failure: str = "keep", lock_wait: float = 0,
           debug: bool = False) -> None:
    """Ship a release to every selected host: prepare, switch, restart, health-check."""
    def body(console: Console) -> flow.RunResult:
        policy = RolloutPolicy(serial=serial, canary=canary, max_failures=max_failures,
                               on_failure=on_failure)
        return flow.deploy(_select(c, hosts, inventory), console, ref=ref, policy=policy,
                           lock_wait=lock_wait)

    _run(debug, body)


@task(help={**COMMON_HELP, "to": "Release id to return to (default: the previous good one).",
            "lock_wait": "Seconds to wait for another run's lock."})
def rollback(c: Context, hosts: str | None = None, inventory: str | None = None,
             to: str | None = None, lock_wait: float = 0, debug: bool = False) -> None:
    """Switch back to the previous good release (or --to ID), restart and health-check."""
    _run(debug, lambda console: flow.rollback(_select(c, hosts, inventory), console, to=to,
                                              lock_wait=lock_wait))


@task(help=COMMON_HELP)
def releases(c: Context, hosts: str | None = None, inventory: str | None = None,
             debug: bool = False) -> None:
    """List each host's releases: current marked, revision, switch time, failures."""
    _run(debug, lambda console: flow.list_releases(_select(c, hosts, inventory), console))


@task(help={**COMMON_HELP, "force": "Remove locks that are not stale too."})
def unlock(c: Context, hosts: str | None = None, inventory: str | None = None,
           force: bool = False, debug: bool = False) -> None:
    """Remove stale deploy locks (older than lock_expiry), or any lock with --force."""
    _run(debug, lambda console: flow.unlock(_select(c, hosts, inventory), console, force=force))


@task(help={**COMMON_HELP,
            "expect": "Release id, revision or git ref that current must be."})
def verify(c: Context, hosts: str | None = None, inventory: str | None = None,
           expect: str | None = None, debug: bool = False) -> None:
    """Prove each host runs the code shipped: current, files, bytecode, processes, health."""
    from deploytools.verify import verify_fleet

    _run(debug, lambda console: verify_fleet(_select(c, hosts, inventory), console,
                                             expect=expect))


@task(name="clear-cache",
      help={**COMMON_HELP,
            "path": "Directory to clean (must lie under deploy_to; default: current).",
            "restart": "Then stop/start the supervisor programs and health-check.",
            "include_venv": "Also clean inside virtualenvs (.venv, venv).",
            "lock_wait": "Seconds to wait for another run's lock."})
def clear_cache(c: Context, hosts: str | None = None, inventory: str | None = None,
                path: str | None = None, restart: bool = False, include_venv: bool = False,
                lock_wait: float = 0, debug: bool = False) -> None:
    """Remove __pycache__ dirs and *.pyc/*.pyo under the current release; optionally restart."""
    _run(debug, lambda console: flow.clear_cache(
        _select(c, hosts, inventory), console, path=path, restart=restart,
        include_venv=include_venv, lock_wait=lock_wait))


@task(help={"hosts": "Number of simulated hosts (default 3).",
            "keep": "Leave the sandbox running and print how to use and stop it."})
def demo(c: Context, hosts: int = 3, keep: bool = False, debug: bool = False) -> None:
    """Run a local sandbox fleet and deploy a sample app to it: v1, v2, then a failing v3."""
    from deploytools.demo import run_demo  # the sandbox is only imported when asked for

    _run(debug, lambda console: run_demo(console, hosts=hosts, keep=keep))


collection = Collection(deploy, rollback, releases, verify, clear_cache, unlock, demo)
collection.configure({"deploytools": {"inventory": None, "hosts": None}})
