"""The --json report is written, and valid, even when a run fails before any host."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import yaml

from deploytools.jsonreport import SCHEMA_PATH
from tests.support.cli import inv_command
from tests.support.inventories import one_host_inventory


def _run_inv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(inv_command(*args), capture_output=True, text=True, timeout=120)


def test_json_report_is_written_on_config_errors(tmp_path: Path) -> None:
    """Exit 2 (a refused inventory) still writes --json: outcome "error", the message,
    valid against the schema; a stale report from an earlier run is replaced."""
    inventory = tmp_path / "inventory.yaml"
    data = one_host_inventory()
    data["groups"]["prod"]["hosts"]["web1"]["host"] = "10.0.0.1:2222"
    inventory.write_text(yaml.safe_dump(data))
    target = tmp_path / "report.json"
    target.write_text('{"outcome": "ok", "stale": true}')
    for task in ("deploy", "clear-cache", "status"):
        done = _run_inv(task, "--hosts", "prod", "--inventory", str(inventory),
                        "--json", str(target))
        assert done.returncode == 2, done.stderr
        document = json.loads(target.read_text())
        jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))
        assert document["outcome"] == "error" and document["exit_code"] == 2
        assert "port: 2222" in document["error"] and document["run"]["action"] == task
    done = _run_inv("deploy", "--hosts", "prod", "--inventory", str(inventory), "--json", "-")
    assert json.loads(done.stdout)["outcome"] == "error"


def test_json_report_is_written_when_planning_fails(tmp_path: Path) -> None:
    """A run that stops while planning (an unreachable git URL) writes the report too,
    its secrets masked like everything printed."""
    inventory = tmp_path / "inventory.yaml"
    data = one_host_inventory()
    data["defaults"]["source"] = {"repo": "https://deployer:tok3nXYZ@127.0.0.1:9/none.git"}
    inventory.write_text(yaml.safe_dump(data))
    target = tmp_path / "report.json"
    done = _run_inv("deploy", "--hosts", "prod", "--inventory", str(inventory),
                    "--json", str(target))
    assert done.returncode != 0
    document = json.loads(target.read_text())
    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))
    assert document["outcome"] == "error" and document["exit_code"] == done.returncode
    assert "tok3nXYZ" not in target.read_text() + done.stdout + done.stderr
