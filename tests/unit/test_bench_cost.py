"""The per-step cost table of benchmarks/run.py, from hand-made --json reports."""

from __future__ import annotations

import sys

from tests.support.cli import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import cost_table  # noqa: E402


def host(name: str, **ops: dict) -> dict:
    return {"name": name, "cost": ops}


REPORT = {
    "run": {"cost": {"controller_cpu_s": 1.5, "peak_rss_mb": 60.0, "compile_cpu_s": None}},
    "hosts": [
        host("web1",
             connect={"wall_s": 0.2, "controller_cpu_s": 0.05, "agent_cpu_s": None,
                      "sshd_cpu_s": None, "supervisord_cpu_s": None, "bytes_sent": 1000,
                      "files_written": None},
             prepare={"wall_s": 1.0, "controller_cpu_s": 0.3, "agent_cpu_s": 0.5,
                      "sshd_cpu_s": 0.1, "supervisord_cpu_s": None, "bytes_sent": 2_000_000,
                      "files_written": 100}),
        host("web2",
             prepare={"wall_s": 3.0, "controller_cpu_s": 0.2, "agent_cpu_s": 0.7,
                      "sshd_cpu_s": 0.3, "bytes_sent": 4_000_000, "files_written": 300},
             connect={"wall_s": 0.4, "controller_cpu_s": 0.07, "bytes_sent": 1000},
             custom={"wall_s": 0.1}),
        {"name": "web3"},  # a host that reported no cost at all is left out
    ],
}


def test_hosts_fold_as_the_columns_say() -> None:
    rows = {row["op"]: row for row in cost_table.cost_rows([REPORT])}
    assert list(rows) == ["connect", "prepare", "custom"]  # known order, then others
    prepare = rows["prepare"]
    assert prepare["wall_s"] == 3.0  # slowest host
    assert prepare["controller_cpu_s"] == 0.5  # sum over hosts
    assert prepare["agent_cpu_s"] == 0.6  # median per host
    assert prepare["sshd_cpu_s"] == 0.2
    assert prepare["bytes_sent"] == 3_000_000
    assert prepare["files_written"] == 200
    assert prepare["supervisord_cpu_s"] is None  # nobody reported it: n/a
    assert rows["connect"]["agent_cpu_s"] is None


def test_runs_fold_by_median_and_missing_reports_are_na() -> None:
    slower = {"hosts": [host("web1", prepare={"wall_s": 5.0})],
              "run": {"cost": {"controller_cpu_s": 2.5}}}
    rows = {r["op"]: r for r in cost_table.cost_rows([REPORT, slower, {"hosts": []}])}
    assert rows["prepare"]["wall_s"] == 4.0  # median of 3.0 and 5.0
    assert cost_table.run_cost([REPORT, slower]) == {
        "controller_cpu_s": 2.0, "peak_rss_mb": 60.0, "compile_cpu_s": None}
    assert cost_table.cost_rows([{"hosts": [{"name": "web1"}]}, {}]) == []


def test_markdown_shows_na_and_megabytes() -> None:
    lines = cost_table.markdown_table(cost_table.cost_rows([REPORT]))
    assert lines[0].startswith("| op | wall s (slowest host) | controller CPU s (sum over hosts)")
    prepare = next(line for line in lines if line.startswith("| prepare |"))
    assert prepare == "| prepare | 3.00 | 0.50 | 0.60 | n/a | 0.20 | n/a | 3.00 | 200 |"
    assert cost_table.markdown_table([]) == []
    assert "compile CPU n/a" in cost_table.run_cost_line(cost_table.run_cost([REPORT]))
