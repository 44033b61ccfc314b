"""Process trees read from /proc, to find (and kill or freeze by PID) exactly the
processes a test started or must prove gone."""

from __future__ import annotations

import os
from pathlib import Path


def children_by_parent() -> dict[int, list[int]]:
    """Every live PID, grouped by its parent's PID."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # gone meanwhile
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    return children


def children(pid: int) -> list[int]:
    return children_by_parent().get(pid, [])


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    by_parent = children_by_parent()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(by_parent.get(current, []))
    return found
