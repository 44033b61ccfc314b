"""The README must stay true: CI runs the exact test command it prints."""

from __future__ import annotations

from tests.support.cli import REPO_ROOT as ROOT


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    command = ci_lines[-1]
    assert command.startswith(".venv/bin/python -m pytest")  # the venv .ci/install made
    readme = (ROOT / "README.md").read_text()
    assert f"\n{command} " in readme or f"\n{command}\n" in readme


def test_readme_quickstart_uses_the_venv_that_ci_installs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/install && .venv/bin/inv demo" in readme
    assert "bash .ci/install\n" in ci_run and "bash .ci/quickstart\n" in ci_run
    install = (ROOT / ".ci" / "install").read_text()
    assert '-m venv "$VENV"' in install and '"$VENV/bin/python" -m pip install' in install
