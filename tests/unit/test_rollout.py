"""Rollout policy: --serial and --canary batches, the failure budget and policy."""

from __future__ import annotations

import pytest

from deploytools.errors import ConfigError
from deploytools.rollout import RolloutPolicy, batches, parse_count, parse_serial


def test_serial_and_batches() -> None:
    assert parse_serial(None, 7) == 7
    assert parse_serial("2", 7) == 2
    assert parse_serial("25%", 8) == 2
    assert parse_serial("10%", 3) == 1  # never zero
    for bad in ("0%", "-1", "x", "150%"):
        with pytest.raises(ConfigError):
            parse_serial(bad, 4)
    hosts = list("abcde")
    assert batches(hosts, 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert batches(hosts, 2, canary=True) == [["a"], ["b", "c"], ["d", "e"]]
    assert batches(hosts, 5, canary=True) == [["a"], ["b", "c", "d", "e"]]


def test_failure_budget_and_policy() -> None:
    assert parse_count("0", 10, "--max-failures") == 0
    assert parse_count("20%", 10, "--max-failures") == 2
    assert parse_count("1", 10, "--max-failures") == 1
    with pytest.raises(ConfigError, match="--on-failure"):
        RolloutPolicy(on_failure="panic")
