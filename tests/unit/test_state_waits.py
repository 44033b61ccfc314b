"""Waiting for supervisor states: few polls while startsecs cannot have passed yet, and
a process that dies meanwhile still seen within longest_pause (on a fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from deploytools.remote import supervisor
from deploytools.remote.supervisor import START_FAILED_STATES, StateWaits, SupervisorError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


class Scripted(StateWaits):
    """One process whose state follows a timeline: [(seconds from the start, statename)]."""

    def __init__(self, clock: Clock, timeline: list[tuple[float, str]]) -> None:
        self.clock, self.t0, self.timeline = clock, clock.now, timeline

    def all_info(self) -> list[dict[str, Any]]:
        state = [s for at, s in self.timeline if at <= self.clock.now - self.t0][-1]
        return [{"group": "app", "name": "app", "statename": state}]

    def failure_reason(self, name: str, fault: str = "") -> str:
        return f"{name} died"


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(supervisor, "time", fake)
    return fake


def test_polls_are_sparse_until_startsecs_can_have_passed(clock: Clock) -> None:
    waits = Scripted(clock, [(0, "STARTING"), (1.0, "RUNNING")])
    waits.wait_states(["app:app"], ("RUNNING",), 5, START_FAILED_STATES,
                      quiet_until=clock.now + 1.0)
    assert len(clock.pauses) <= 6  # 0.05 s apart: 20
    assert max(clock.pauses) == waits.longest_pause
    assert clock.now - waits.t0 <= 1.0 + waits.poll  # RUNNING seen within one poll


def test_without_a_known_startsecs_it_polls_as_before(clock: Clock) -> None:
    waits = Scripted(clock, [(0, "STARTING"), (0.5, "RUNNING")])
    waits.wait_states(["app:app"], ("RUNNING",), 5, START_FAILED_STATES)
    assert set(clock.pauses) == {waits.poll}


def test_a_process_dying_while_starting_is_seen_within_longest_pause(clock: Clock) -> None:
    waits = Scripted(clock, [(0, "STARTING"), (0.1, "BACKOFF")])
    with pytest.raises(SupervisorError, match="app:app died"):
        waits.wait_states(["app:app"], ("RUNNING",), 5, START_FAILED_STATES,
                          quiet_until=clock.now + 10)
    assert clock.now - waits.t0 <= 0.1 + waits.longest_pause
