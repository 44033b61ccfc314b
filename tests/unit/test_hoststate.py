"""ssh.host_timeout bounds the time a host spends in remote steps, not the time it
waits for its --serial batch (a host in the last batch must not time out idle)."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from deploytools.hoststate import STEP_GRACE, HostRun
from deploytools.inventory import load_inventory


def host(tmp_path: Path, host_timeout: int, command_timeout: int):
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({
        "defaults": {"deploy_to": "/srv/myapp", "source": {"repo": "/src/app"},
                     "supervisor": {"programs": ["web"]}},
        "ssh": {"host_timeout": host_timeout, "command_timeout": command_timeout},
        "groups": {"prod": {"hosts": {"web1": {"host": "10.0.0.1"}}}},
    }))
    return load_inventory(path).hosts["web1"]


def test_waiting_for_other_batches_does_not_spend_the_host_budget(tmp_path: Path) -> None:
    run = HostRun(host(tmp_path, host_timeout=30, command_timeout=600))
    run.started = time.monotonic() - 3600  # an hour spent waiting for earlier batches
    assert run.remaining_time() == 30


def test_time_in_remote_steps_spends_it(tmp_path: Path) -> None:
    run = HostRun(host(tmp_path, host_timeout=30, command_timeout=600))
    run.busy = 25
    assert run.remaining_time() == 5
    run.busy = 40
    assert run.remaining_time() == 1.0  # never zero: the call still gets its answer
    quick = HostRun(host(tmp_path, host_timeout=3600, command_timeout=10))
    assert quick.remaining_time() == 10 + STEP_GRACE
