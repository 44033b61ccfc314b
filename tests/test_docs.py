"""The README must stay true: CI runs the exact test command it prints."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    command = ci_lines[-1]
    assert command.startswith("python3 -m pytest")
    readme = (ROOT / "README.md").read_text()
    assert f"\n{command} " in readme or f"\n{command}\n" in readme
