"""Hooks: placeholders reach the shell quoted."""

from __future__ import annotations

from pathlib import Path

from deploytools.remote.hooks import run_hooks


def test_hook_placeholders_are_shell_quoted(tmp_path: Path) -> None:
    """A hostile value (here a deploy_to with shell syntax) reaches the hook as one word
    and runs nothing: the hook is run for real by the host-side runner, in a real shell."""
    pwned = tmp_path / "PWNED"
    hostile = f"/srv/a b; touch {pwned}; $(touch {pwned}) `touch {pwned}` '\""
    values = {"deploy_to": hostile, "name": "web1", "release": "r1"}
    results = run_hooks("after_restart", {"after_restart": ["printf '%s|' {deploy_to} {name}"]},
                        str(tmp_path), values, True, lambda line: None)
    assert results[0]["output"] == f"{hostile}|web1|"
    assert not pwned.exists()
