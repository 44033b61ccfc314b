"""``--profile``: summarise the cProfile dumps deploytools writes under DEPLOYTOOLS_PROFILE.

Why here and not in deploytools: the product only dumps raw ``*.pstats`` (controller
and one agent); which functions dominate is the question of whoever reads the
benchmark, so each dump gets a text file beside it with its top functions by
cumulative time, readable without a pstats session.
"""

from __future__ import annotations

import pstats
from pathlib import Path

TOP_FUNCTIONS = 15


def summarise(directory: Path) -> list[dict[str, str]]:
    """For each ``*.pstats`` in ``directory``: ``<name>.txt`` with the top functions by
    cumulative time. Returns what was written; an unreadable dump is named with its
    error instead of failing the benchmark."""
    written = []
    for dump in sorted(directory.glob("*.pstats")):
        text_path = dump.with_suffix(".txt")
        entry = {"pstats": str(dump), "text": str(text_path)}
        try:
            with text_path.open("w", encoding="utf-8") as fh:
                pstats.Stats(str(dump), stream=fh).sort_stats("cumulative").print_stats(
                    TOP_FUNCTIONS)
        except (OSError, EOFError, TypeError, ValueError) as exc:
            entry["error"] = f"unreadable: {exc}"
        written.append(entry)
    return written


def markdown_lines(title: str, directory: Path, written: list[dict[str, str]]) -> list[str]:
    """What the profiled run left, for the summary."""
    if not written:
        return [f"* {title}: profile: none written (in {directory})"]
    return [f"* {title}: `{e['pstats']}` → " + (e["error"] if "error" in e else f"`{e['text']}`")
            for e in written]
