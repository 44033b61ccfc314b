"""The deploy and rollback order, top to bottom (our `deploy.rake`).

deploy, as named phases (each may stop the run; finish always runs):
  1. plan           connect to every host (their agents load meanwhile) while the
                    artifact is built once, locally: one release id for every host
                    (with --skip-unchanged and git, only the revision, until needed)
  2. check          preflight and the deploy lock in one round trip (the first host
                    alone, then the rest); --skip-unchanged leaves verified hosts alone
  3. prepare        every host in parallel, one round trip: the host names its current
                    release, gets only what changed (and bytecode compiled here once),
                    links shared paths, builds or reuses its venv, runs after_prepare.
                    Nothing served has changed yet.
  4. before_switch  hooks on every host (migrations run_once), still before any switch
  5. activate       batch by batch, on each host in one round trip: switch `current`
                    atomically, supervisor stop -> start, health check; a host that
                    fails is switched back, restarted and re-checked there and then
  6. finish         history line, cleanup of old releases, unlock (every exit path:
                    FleetRun)

rollback: check and lock, pick the previous release that served, activate it.

The steps on one host are in steps.py; this file decides what a failure means for the
rest of the fleet (rollout.StopRule, --on-failure). Other tasks: operations.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from deploytools import balancer as lb
from deploytools import local_hooks, steps
from deploytools.artifact import Artifact, build_artifact
from deploytools.connection import Connector
from deploytools.console import Console
from deploytools.errors import ConfigError, RemoteError
from deploytools.fleetrun import FleetRun, RunResult
from deploytools.hoststate import HEALTHY, ROLLBACK_FAILED, ROLLED_BACK, SKIPPED, HostRun
from deploytools.inventory import Host
from deploytools.rollout import ROLLBACK_ALL, RolloutPolicy, batches, in_parallel, parse_serial
from deploytools.sources import resolve_revision

# =========================================================================== deploy


def deploy(hosts: list[Host], console: Console, *, ref: str | None = None,
           policy: RolloutPolicy | None = None, lock_wait: float = 0, dry_run: bool = False,
           skip_unchanged: bool = False, inventory_hosts: dict[str, Host] | None = None,
           connector: Connector | None = None) -> RunResult:
    """Ship a new release to every host, or leave each host on the release it had.

    `inventory_hosts` (every host of the inventory) lets `balancer.haproxy.via` name a
    host that is not deployed in this run."""
    with FleetRun("deploy", hosts, console, policy=policy, dry_run=dry_run,
                  connector=connector) as fleet:
        run = Deploy(fleet, ref, lock_wait, skip_unchanged, inventory_hosts)
        for phase in (run.plan, run.check, run.prepare, run.before_switch, run.activate):
            if not phase():
                break
        return run.finish()


class Deploy:
    """One deploy between its phases. Each phase returns False when the run stops."""

    def __init__(self, fleet: FleetRun, ref: str | None, lock_wait: float,
                 skip_unchanged: bool, inventory_hosts: dict[str, Host] | None) -> None:
        self.fleet = fleet
        self.console = fleet.console
        self.source = single_source([r.host for r in fleet.runs])
        self.ref = ref
        self.lock_wait = lock_wait
        self.skip_unchanged = skip_unchanged
        self.inventory_hosts = inventory_hosts
        # --skip-unchanged with git: the revision alone says who is current
        self.target = resolve_revision(self.source, ref or self.source.get("ref") or "HEAD") \
            if skip_unchanged and self.source.get("repo") else None
        self.artifact: Artifact | None = None
        self.drain: lb.Balancer | None = None
        self.once: HostRun | None = None  # where run_once hooks (migrations) run

    # ------------------------------------------------------------------ phases

    def plan(self) -> bool:
        """1. Connect to every host in the background while the artifact is built."""
        fleet = self.fleet
        connections = threading.Thread(target=in_parallel,
                                       args=(fleet.runs, steps.connect, self.console),
                                       name="connect", daemon=True)
        connections.start()
        fleet.on_exit(connections.join)  # nothing may connect behind closing
        if lb.Balancer.configured(fleet.runs) and not fleet.dry_run:
            self.drain = lb.Balancer(fleet.runs, self.console, self.inventory_hosts)
            fleet.on_exit(self.drain.close)
            fleet.on_exit(self.drain.restore)  # never leave a server drained
        if self.target is None:
            self.build()
        connections.join()
        return True

    def check(self) -> bool:
        """2. Preflight and lock; --skip-unchanged leaves hosts already on the revision."""
        fleet = self.fleet
        if self.skip_unchanged:
            revision = self.target or self.artifact_built().revision
            fleet.each(lambda r: steps.skip_if_unchanged(r, self.console, revision))
        release = self.artifact.release_id if self.artifact else self.target
        if not fleet.lock(release, self.lock_wait,
                          need_bytes=self.artifact.size if self.artifact else 0):
            return False
        if not fleet.active():
            return False
        if self.drain is not None:  # socket answers, servers exist, no batch empties a backend
            self.drain.preflight(fleet.active(), self.batches())
        artifact = self.artifact_built()
        artifact.avoid_ids({row["id"] for r in fleet.runs
                            for row in r.facts.get("releases", [])})
        return True

    def prepare(self) -> bool:
        """3. Create the release on every host; nothing served changes yet."""
        fleet, artifact = self.fleet, self.artifact_built()
        fresh = [r for r in fleet.active() if steps.compiles_here(r) and not r.previous]
        if fresh:  # compile while the sources travel; redeploys compile only changes
            artifact.start_precompile(fresh[0].host.settings["pyc_invalidation"])
        once = self.once = fleet.active()[0]
        fleet.each(lambda r: steps.prepare(r, self.console, artifact, r is once))
        return not (fleet.halted("prepare") or self.run_once_failed("after_prepare"))

    def before_switch(self) -> bool:
        """4. Fleet-wide hooks (migrations) after every host prepared, before any switch."""
        fleet = self.fleet
        if not (any(r.host.get("hooks.before_switch") for r in fleet.runs)
                or local_hooks.registered("before_switch")):
            return True
        if self.once is None or self.once.failed:
            self.once = fleet.active()[0]
        once, release_id = self.once, self.artifact_built().release_id
        fleet.each(lambda r: steps.run_hook_point(r, self.console, "before_switch",
                                                  release_id, r is once))
        return not (fleet.halted("before_switch") or self.run_once_failed("before_switch"))

    def activate(self) -> bool:
        """5. Batch by batch: switch, restart, health-check; --on-failure decides the rest."""
        fleet, policy = self.fleet, self.fleet.policy
        plan = self.batches()
        for number, batch in enumerate(plan, 1):
            if len(plan) > 1 or fleet.dry_run:
                self.console.info(f"batch {number}/{len(plan)}: "
                                  f"{', '.join(r.name for r in batch)}")
            fleet.each(self.activate_in_rotation, batch)
            if fleet.halted(f"batch {number}"):
                break
            if policy.batch_wait and number < len(plan):
                self.pause_between_batches(policy.batch_wait)
        if policy.on_failure == ROLLBACK_ALL and any(r.failed for r in fleet.runs):
            self.roll_back_switched()
        return True

    def finish(self) -> RunResult:
        """6. History, cleanup and unlock everywhere; the exit code."""
        artifact = self.artifact
        return self.fleet.finish(
            artifact.release_id if artifact else None,
            {"revision": artifact.revision, "ref": artifact.ref} if artifact else None)

    # ------------------------------------------------------------------ parts

    def build(self) -> Artifact:
        self.artifact = plan(self.source, self.console, self.ref)
        self.fleet.on_exit(self.artifact.close)
        return self.artifact

    def artifact_built(self) -> Artifact:
        """The artifact (--skip-unchanged builds it only once a host needs it)."""
        return self.artifact or self.build()

    def batches(self) -> list[list[HostRun]]:
        active, policy = self.fleet.active(), self.fleet.policy
        return batches(active, parse_serial(policy.serial, len(active)), policy.canary)

    def activate_in_rotation(self, run: HostRun) -> None:
        """Out of the balancer's rotation, activate, back in (when a balancer is set)."""
        release_id = self.artifact_built().release_id
        lb.activate_in_rotation(
            self.drain, run,
            lambda: steps.activate(run, self.console, release_id,
                                   run_once_here=run is self.once),
            lambda: self.fleet.interrupted)

    def run_once_failed(self, point: str) -> bool:
        """A run_once hook (a migration) that failed on its host must stop the run,
        whatever --max-failures allows: the other hosts would switch to code whose
        migration did not run. True when the run stops here."""
        once = self.once
        assert once is not None
        hooks = once.host.get(f"hooks.{point}") or []
        if not once.failed or not any(isinstance(h, dict) and h.get("run_once")
                                      for h in hooks):
            return False
        reason = f"not switched: the run_once {point} hooks failed on {once.name}"
        self.console.error(reason)
        for run in self.fleet.active():
            run.fail(SKIPPED, reason)
        return True

    def pause_between_batches(self, seconds: float) -> None:
        """--batch-wait: let the fleet settle (caches warm, errors surface) before the
        next batch; an interrupt ends the pause at once."""
        self.console.info(f"waiting {seconds:g}s before the next batch (--batch-wait)")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.fleet.interrupted:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def roll_back_switched(self) -> None:
        """Policy rollback-all: return every host this run switched to its previous
        release."""
        runs, release_id = self.fleet.runs, self.artifact_built().release_id
        switched = [r for r in runs if r.state == HEALTHY and r.release == release_id]
        if not switched:
            return
        failed = ", ".join(r.name for r in runs if r.failed)
        self.console.info(f"rollback-all: {failed} failed; returning "
                          f"{', '.join(r.name for r in switched)} to their previous release")

        def back(run: HostRun) -> None:
            if not run.previous:
                raise RemoteError(run.name, "no previous release to return to")
            steps.activate(run, self.console, run.previous, fallback=release_id,
                           mark_failed=False, action="rollback")
            if run.state == HEALTHY:
                run.fail(ROLLED_BACK, f"rolled back to {run.previous}: fleet policy "
                                      f"rollback-all ({failed} failed)")

        self.fleet.each(back, switched, failed_state=ROLLBACK_FAILED)


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


# =========================================================================== rollback


def rollback(hosts: list[Host], console: Console, *, to: str | None = None,
             lock_wait: float = 0, dry_run: bool = False,
             connector: Connector | None = None) -> RunResult:
    """Return every host to the release that served before (or `to`), restart, check."""
    with FleetRun("rollback", hosts, console, dry_run=dry_run, connector=connector) as fleet:
        if fleet.lock(to, lock_wait):
            fleet.each(lambda r: steps.roll_back_host(r, console, to))
        return fleet.finish()
