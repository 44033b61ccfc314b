"""The orchestration against the fake backend (tests/support/fakehosts.py): batching,
stop rules, failure policy, rollback choice, exit codes and interrupts, in milliseconds.

The real-fleet tests (test_rollout, test_pipeline, test_crash) check the same behaviours
against sshd and supervisord; these pin the decisions themselves, host by host.
"""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from deploytools import flow, operations
from deploytools.console import make_console
from deploytools.dryrun import DryRunConnection
from deploytools.errors import ConfigError, ExitCode
from deploytools.fleetrun import exit_code
from deploytools.hoststate import (
    DONE,
    FAILED,
    HEALTHY,
    LOCK_HELD,
    ROLLBACK_FAILED,
    ROLLED_BACK,
    SKIPPED,
    UNCHANGED,
    UNREACHABLE,
    HostRun,
)
from deploytools.inventory import Host
from deploytools.rollout import ROLLBACK_ALL, RolloutPolicy
from tests.support.fakehosts import FakeFleet

OLD = "20260101T000000Z"
OLDER = "20250101T000000Z"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    app = tmp_path / "src"
    app.mkdir()
    (app / "app.py").write_text("VERSION = 2\n")
    return app


def make_fleet(tmp_path: Path, source: Path, count: int, *installed: str) -> FakeFleet:
    fleet = FakeFleet(tmp_path / "hosts", count, source)
    for host in fleet.hosts.values():
        host.install(*(installed or (OLD,)))
    return fleet


class Recorder:
    """The order activations started in, across hosts (one shared, locked list)."""

    def __init__(self, fleet: FakeFleet) -> None:
        self.order: list[str] = []
        self.lock = threading.Lock()
        for name, host in fleet.hosts.items():
            host.script.before["activate"] = self._record(name)

    def _record(self, name: str):
        def record() -> None:
            with self.lock:
                self.order.append(name)
        return record


def deploy(fleet: FakeFleet, out: io.StringIO | None = None, **policy: object):
    console = make_console(out or io.StringIO(), live=False)
    return flow.deploy(fleet.inventory, console, policy=RolloutPolicy(**policy),
                       connector=fleet.connector)


def outcome(result) -> dict[str, str]:
    return {r.name: r.state for r in result.runs}


def currents(fleet: FakeFleet) -> dict[str, str | None]:
    return {name: host.current for name, host in fleet.hosts.items()}


def assert_unlocked(fleet: FakeFleet) -> None:
    assert [name for name, host in fleet.hosts.items() if host.locked()] == []


# =========================================================================== batches


def test_one_batch_switches_every_host_and_unlocks(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 3)
    result = deploy(fleet)
    assert result.exit_code == ExitCode.OK
    assert set(outcome(result).values()) == {HEALTHY}
    assert set(currents(fleet).values()) == {result.release_id}
    assert_unlocked(fleet)
    assert fleet["web1"].calls == ["preflight", "prepare", "activate", "finish"]


def test_serial_batches_follow_inventory_order(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 5)
    recorder = Recorder(fleet)
    result = deploy(fleet, serial=2)
    assert result.exit_code == ExitCode.OK
    order = recorder.order
    assert set(order[:2]) == {"web1", "web2"}
    assert set(order[2:4]) == {"web3", "web4"}
    assert order[4:] == ["web5"]


def test_canary_goes_alone_first(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 5)
    recorder = Recorder(fleet)
    deploy(fleet, serial="50%", canary=True)
    assert recorder.order[0] == "web1"
    assert set(recorder.order[1:3]) == {"web2", "web3"}
    assert set(recorder.order[3:]) == {"web4", "web5"}


def test_failed_canary_leaves_the_rest_untouched(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 4)
    recorder = Recorder(fleet)
    unhealthy_new_release(fleet, "web1")
    result = deploy(fleet, serial=2, canary=True)
    assert recorder.order == ["web1"]
    assert outcome(result) == {"web1": ROLLED_BACK, "web2": SKIPPED, "web3": SKIPPED,
                               "web4": SKIPPED}
    assert set(currents(fleet).values()) == {OLD}
    assert result.exit_code == ExitCode.FAILED_ROLLED_BACK
    assert_unlocked(fleet)


def unhealthy_new_release(fleet: FakeFleet, *names: str) -> None:
    """The new release fails its health check on these hosts (the old one stays fine)."""
    for name in names:
        host = fleet[name]
        previous = host.script.before.get("activate")

        def before(host=host, previous=previous) -> None:
            if previous:
                previous()
            host.script.unhealthy |= set(os.listdir(host.layout.releases)) - {OLD, OLDER}
        host.script.before["activate"] = before


# =========================================================================== stop rules


def test_failure_stops_the_next_batches_by_default(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 4)
    unhealthy_new_release(fleet, "web2")
    result = deploy(fleet, serial=1)
    assert outcome(result) == {"web1": HEALTHY, "web2": ROLLED_BACK, "web3": SKIPPED,
                               "web4": SKIPPED}
    assert currents(fleet) == {"web1": result.release_id, "web2": OLD, "web3": OLD,
                               "web4": OLD}
    assert "activate" not in fleet["web3"].calls
    assert result.exit_code == ExitCode.PARTIAL
    assert_unlocked(fleet)


def test_max_failures_lets_the_run_continue_within_budget(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 5)
    unhealthy_new_release(fleet, "web2", "web4")
    result = deploy(fleet, serial=1, max_failures=1)
    # web2 is within the budget; web4 is one too many: web5 is never switched
    assert outcome(result) == {"web1": HEALTHY, "web2": ROLLED_BACK, "web3": HEALTHY,
                               "web4": ROLLED_BACK, "web5": SKIPPED}
    assert result.exit_code == ExitCode.PARTIAL


def test_max_failures_as_a_percentage(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 4)
    unhealthy_new_release(fleet, "web1")
    result = deploy(fleet, serial=1, max_failures="25%")
    assert outcome(result)["web4"] == HEALTHY


def test_a_failed_prepare_switches_no_host(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 3)
    fleet["web2"].script.fail["prepare"] = "disk full"
    result = deploy(fleet)
    assert outcome(result) == {"web1": SKIPPED, "web2": FAILED, "web3": SKIPPED}
    assert "disk full" in result.runs[1].error
    assert set(currents(fleet).values()) == {OLD}
    assert result.exit_code == ExitCode.FAILED_ROLLED_BACK
    assert_unlocked(fleet)


def test_an_unreachable_host_is_named_and_the_rest_is_untouched(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 3)
    fleet["web3"].script.unreachable = True
    result = deploy(fleet)
    assert outcome(result) == {"web1": SKIPPED, "web2": SKIPPED, "web3": UNREACHABLE}
    assert "connection refused" in result.runs[2].error
    assert result.exit_code == ExitCode.UNREACHABLE
    assert [h.current for h in fleet.hosts.values()][:2] == [OLD, OLD]
    assert_unlocked(fleet)


def test_a_lock_held_by_another_run_stops_before_any_change(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 3)
    fleet["web2"].layout.acquire_lock({"user": "ci", "run_id": "other", "token": "t0",
                                       "action": "deploy", "started_at": time.time()})
    result = deploy(fleet)
    assert outcome(result)["web2"] == LOCK_HELD
    assert result.exit_code == ExitCode.LOCKED
    assert set(currents(fleet).values()) == {OLD}
    assert fleet["web2"].layout.lock_owner()["run_id"] == "other"  # theirs, untouched
    assert not fleet["web1"].locked() and not fleet["web3"].locked()


# =========================================================================== failure policy


def test_keep_leaves_healthy_hosts_on_the_new_release(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 4)
    unhealthy_new_release(fleet, "web3")
    result = deploy(fleet, serial=2)
    assert outcome(result) == {"web1": HEALTHY, "web2": HEALTHY, "web3": ROLLED_BACK,
                               "web4": HEALTHY}
    assert currents(fleet)["web1"] == result.release_id
    assert result.exit_code == ExitCode.PARTIAL


def test_rollback_all_returns_every_switched_host(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 4)
    unhealthy_new_release(fleet, "web3")
    result = deploy(fleet, serial=2, on_failure=ROLLBACK_ALL)
    assert set(outcome(result).values()) == {ROLLED_BACK}
    assert set(currents(fleet).values()) == {OLD}
    assert result.exit_code == ExitCode.FAILED_ROLLED_BACK
    assert_unlocked(fleet)


def test_a_rollback_that_fails_is_partial(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 2)
    unhealthy_new_release(fleet, "web2")
    fleet["web2"].script.rollback_fails = True
    result = deploy(fleet)
    assert outcome(result)["web2"] == ROLLBACK_FAILED
    assert result.exit_code == ExitCode.PARTIAL


def test_a_failed_release_is_marked_and_never_a_rollback_target(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 1, OLDER, OLD)
    unhealthy_new_release(fleet, "web1")
    result = deploy(fleet)
    host = fleet["web1"]
    assert host.layout.failure(result.release_id)
    assert host.layout.rollback_target() == OLDER  # OLD serves; the failed one never


def test_unknown_on_failure_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="--on-failure"):
        RolloutPolicy(on_failure="pray")


# =========================================================================== rollback


def rollback(fleet: FakeFleet, to: str | None = None):
    return flow.rollback(fleet.inventory, make_console(io.StringIO(), live=False), to=to,
                         connector=fleet.connector)


def test_rollback_follows_the_served_order_not_the_names(tmp_path, source):
    # served b, then c, then a: the release before a is c, although "a" sorts first
    fleet = make_fleet(tmp_path, source, 2, "b", "c", "a")
    first = rollback(fleet)
    assert first.exit_code == ExitCode.OK
    assert set(currents(fleet).values()) == {"c"}
    second = rollback(fleet)  # goes further back, never to the one just rolled back from
    assert second.exit_code == ExitCode.OK
    assert set(currents(fleet).values()) == {"b"}
    assert_unlocked(fleet)


def test_rollback_skips_a_release_marked_failed(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 1, "a", "b", "c")
    fleet["web1"].layout.mark_failed("b", "health check failed")
    rollback(fleet)
    assert fleet["web1"].current == "a"


def test_rollback_to_an_explicit_release(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 2, "a", "b", "c")
    result = rollback(fleet, to="a")
    assert result.exit_code == ExitCode.OK
    assert set(currents(fleet).values()) == {"a"}


def test_rollback_without_a_target_fails_that_host_only(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 2, "a", "b")
    fleet["web2"].layout.discard(fleet["web2"].layout.release("a"))
    result = rollback(fleet)
    assert outcome(result) == {"web1": HEALTHY, "web2": FAILED}
    assert "no previous good release" in result.runs[1].error
    assert fleet["web2"].current == "b"
    assert result.exit_code == ExitCode.PARTIAL
    assert_unlocked(fleet)


# =========================================================================== exit codes


def runs_in(*states: str) -> list[HostRun]:
    host = Host("h", "127.0.0.1", None, None, (), {})
    return [HostRun(host, state=state) for state in states]


@pytest.mark.parametrize(("action", "states", "code"), [
    ("deploy", [HEALTHY, HEALTHY], ExitCode.OK),
    ("deploy", [HEALTHY, UNCHANGED], ExitCode.OK),
    ("deploy", [ROLLED_BACK, SKIPPED], ExitCode.FAILED_ROLLED_BACK),
    ("deploy", [FAILED, SKIPPED], ExitCode.FAILED_ROLLED_BACK),
    ("deploy", [HEALTHY, ROLLED_BACK], ExitCode.PARTIAL),
    ("deploy", [ROLLBACK_FAILED, UNREACHABLE], ExitCode.PARTIAL),
    ("deploy", [UNREACHABLE, SKIPPED], ExitCode.UNREACHABLE),
    ("deploy", [LOCK_HELD, SKIPPED], ExitCode.LOCKED),
    ("verify", [HEALTHY, FAILED], ExitCode.VERIFY_FAILED),
    ("verify", [HEALTHY, UNREACHABLE], ExitCode.UNREACHABLE),
    ("releases", [DONE, DONE], ExitCode.OK),
    ("unlock", [DONE, LOCK_HELD], ExitCode.LOCKED),
    ("check", [DONE, FAILED], ExitCode.VERIFY_FAILED),
])
def test_one_exit_code_rule(action, states, code):
    assert exit_code(action, runs_in(*states)) == code


def test_an_interrupt_exits_130_unless_the_fleet_is_partial():
    assert exit_code("deploy", runs_in(SKIPPED, SKIPPED), interrupted=True) == \
        ExitCode.INTERRUPTED
    assert exit_code("deploy", runs_in(ROLLED_BACK, SKIPPED), interrupted=True) == \
        ExitCode.INTERRUPTED
    # hosts on different releases: the more urgent news for a pipeline
    assert exit_code("deploy", runs_in(HEALTHY, SKIPPED), interrupted=True) == ExitCode.PARTIAL
    assert exit_code("deploy", runs_in(ROLLBACK_FAILED), interrupted=True) == ExitCode.PARTIAL


def test_hosts_with_different_sources_are_a_config_error(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 2)
    first = fleet.inventory[0]
    other = dataclasses.replace(first, name="odd",
                                settings=dict(first.settings, source={"path": "/elsewhere"}))
    with pytest.raises(ConfigError, match="different 'source'") as raised:
        deploy_hosts = [*fleet.inventory, other]
        flow.deploy(deploy_hosts, make_console(io.StringIO(), live=False),
                    connector=fleet.connector)
    assert raised.value.exit_code == ExitCode.CONFIG
    assert set(currents(fleet).values()) == {OLD}


# =========================================================================== read-only tasks


def test_verify_finds_an_unhealthy_host_and_exits_7(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 2)
    fleet["web2"].script.unhealthy = {OLD}
    result = operations.verify(fleet.inventory, make_console(io.StringIO(), live=False),
                               connector=fleet.connector)
    assert outcome(result) == {"web1": HEALTHY, "web2": FAILED}
    assert result.exit_code == ExitCode.VERIFY_FAILED


def test_releases_reports_ok_per_host(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 2, "a", "b")
    result = operations.list_releases(fleet.inventory, make_console(io.StringIO(), live=False),
                                      connector=fleet.connector)
    assert set(outcome(result).values()) == {DONE}
    assert result.exit_code == ExitCode.OK


def test_dry_run_backend_changes_nothing(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 2)
    out = io.StringIO()
    result = flow.deploy(fleet.inventory, make_console(out, live=False), dry_run=True,
                         connector=lambda h: DryRunConnection(fleet.connector(h)))
    assert result.exit_code == ExitCode.OK
    assert set(currents(fleet).values()) == {OLD}
    assert [c for c in fleet["web1"].calls if c != "preflight"] == []  # only the read
    assert_unlocked(fleet)
    assert "would " in out.getvalue()


# =========================================================================== interrupts


def send_sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # let the main thread's handler run before the step goes on


def test_first_interrupt_finishes_the_step_then_stops_and_unlocks(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 3)
    fleet["web2"].script.before["prepare"] = send_sigint
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background
    result = deploy(fleet)
    assert result.exit_code == ExitCode.INTERRUPTED
    assert set(outcome(result).values()) == {SKIPPED}
    assert all("interrupted" in r.error for r in result.runs)
    assert set(currents(fleet).values()) == {OLD}
    assert not any("activate" in h.calls for h in fleet.hosts.values())
    assert_unlocked(fleet)
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_first_interrupt_between_batches_keeps_switched_hosts(tmp_path, source):
    fleet = make_fleet(tmp_path, source, 3)
    fleet["web1"].script.before["activate"] = send_sigint
    result = deploy(fleet, serial=1)
    assert outcome(result) == {"web1": HEALTHY, "web2": SKIPPED, "web3": SKIPPED}
    assert result.exit_code == ExitCode.PARTIAL  # split fleet: more urgent than 130
    assert_unlocked(fleet)


@pytest.mark.parametrize("serial", [1, None], ids=["alone", "in-parallel"])
def test_second_interrupt_aborts_frees_idle_hosts_and_names_those_in_flight(
        tmp_path, source, serial):
    fleet = make_fleet(tmp_path, source, 3)
    release_step = threading.Event()

    def twice_then_hang() -> None:
        send_sigint()
        send_sigint()
        release_step.wait(5)  # still in flight while the controller aborts

    fleet["web2"].script.before["activate"] = twice_then_hang
    out = io.StringIO()
    try:
        with pytest.raises(KeyboardInterrupt):
            deploy(fleet, out, serial=serial)
        assert fleet["web2"].locked()  # mid-step: its agent unlocks when the step ends
        assert not fleet["web1"].locked() and not fleet["web3"].locked()
        assert "web2: those hosts may be mid-step" in out.getvalue()
        if serial == 1:
            assert fleet["web1"].current != OLD and fleet["web3"].current == OLD
    finally:
        release_step.set()
