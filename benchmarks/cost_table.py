"""Where a deploy's cost goes, step by step: a table from deploytools' ``--json`` reports.

Why: wall time alone cannot say whether a slow step is the controller, the agent, the
SSH server or supervisord. The report carries, per host, a ``cost`` object per step
(``hosts[i]["cost"][op]``: wall, controller CPU, the host's measured CPU, bytes sent,
files written) and, per run, the controller's CPU and memory (``run["cost"]``). Hosts
are folded the way a reader asks about them: the run waits for the slowest host's wall,
the controller pays for every host, the hosts' own costs are typical per host. Anything
missing (an older deploytools, a host that did not tell) is ``None`` and shown "n/a".
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

KNOWN_OPS = ("connect", "preflight", "prepare", "activate", "finish")


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# key in a host's cost entry, column title, how hosts are folded, scale, format
COLUMNS: tuple[tuple[str, str, Callable[[Sequence[float]], float], float, str], ...] = (
    ("wall_s", "wall s (slowest host)", max, 1.0, "{:.2f}"),
    ("controller_cpu_s", "controller CPU s (sum over hosts)", sum, 1.0, "{:.2f}"),
    ("agent_cpu_s", "agent CPU s/host (median)", _median, 1.0, "{:.2f}"),
    ("children_cpu_s", "its programs CPU s/host (tar, compile, hooks)", _median, 1.0, "{:.2f}"),
    ("sshd_cpu_s", "sshd CPU s/host", _median, 1.0, "{:.2f}"),
    ("supervisord_cpu_s", "supervisord CPU s/host", _median, 1.0, "{:.2f}"),
    ("bytes_sent", "MB sent/host", _median, 1e-6, "{:.2f}"),
    ("files_written", "files written/host", _median, 1.0, "{:g}"),
)
RUN_KEYS = ("controller_cpu_s", "peak_rss_mb", "compile_cpu_s")


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _host_costs(report: dict[str, Any]) -> list[dict[str, Any]]:
    hosts = report.get("hosts") if isinstance(report, dict) else None
    return [h["cost"] for h in hosts or ()
            if isinstance(h, dict) and isinstance(h.get("cost"), dict)]


def _ops(reports: Sequence[dict[str, Any]]) -> list[str]:
    """The known steps in deploy order, then any others in the order first seen."""
    seen = [op for report in reports for cost in _host_costs(report) for op in cost]
    return [op for op in KNOWN_OPS if op in seen] + \
        list(dict.fromkeys(op for op in seen if op not in KNOWN_OPS))


def fold_hosts(report: dict[str, Any], op: str) -> dict[str, float | None]:
    """One run's ``op`` over its hosts, column by column (hosts without the value are
    left out; None when no host has it)."""
    entries = [cost.get(op) for cost in _host_costs(report)]
    entries = [e for e in entries if isinstance(e, dict)]
    out: dict[str, float | None] = {}
    for key, _title, fold, _scale, _fmt in COLUMNS:
        values = [v for v in (_number(e.get(key)) for e in entries) if v is not None]
        out[key] = round(fold(values), 6) if values else None
    return out


def cost_rows(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step: each column folded over hosts, then the median over runs (reports)."""
    rows = []
    for op in _ops(reports):
        folded = [fold_hosts(report, op) for report in reports]
        row: dict[str, Any] = {"op": op}
        for key, *_ in COLUMNS:
            values = [f[key] for f in folded if f[key] is not None]
            row[key] = round(_median(values), 6) if values else None
        rows.append(row)
    return rows


def run_cost(reports: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """The median over runs of ``run["cost"]`` (controller CPU, peak RSS, compile CPU)."""
    costs = [((r.get("run") or {}).get("cost") or {}) for r in reports if isinstance(r, dict)]
    out: dict[str, float | None] = {}
    for key in RUN_KEYS:
        values = [v for v in (_number(c.get(key)) for c in costs) if v is not None]
        out[key] = round(_median(values), 3) if values else None
    return out


def _cell(value: float | None, scale: float, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value * scale)


def markdown_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The rows as Markdown lines (no lines when there are no rows)."""
    if not rows:
        return []
    lines = ["| op | " + " | ".join(title for _k, title, *_ in COLUMNS) + " |",
             "| --- | " + " | ".join("---:" for _ in COLUMNS) + " |"]
    for row in rows:
        cells = [_cell(row.get(key), scale, fmt) for key, _t, _f, scale, fmt in COLUMNS]
        lines.append(f"| {row['op']} | " + " | ".join(cells) + " |")
    return lines


def run_cost_line(cost: dict[str, float | None]) -> str:
    """``run["cost"]`` in one sentence."""
    def show(key: str, fmt: str) -> str:
        value = cost.get(key)
        return "n/a" if value is None else fmt.format(value)

    return (f"whole run: controller CPU {show('controller_cpu_s', '{:.2f} s')}, peak RSS "
            f"{show('peak_rss_mb', '{:.1f} MB')}, compile CPU {show('compile_cpu_s', '{:.2f} s')}")
