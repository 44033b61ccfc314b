"""User hooks: shell commands run on the host at named points of a deploy (stdlib only).

A hook runs in the release directory with the release's virtualenv first on PATH and
DEPLOYTOOLS_* variables describing the release, so `python manage.py migrate` just
works. A hook that fails (non-zero exit or timeout) fails the host, and its output
travels into the report. `run_once` hooks (migrations) run on one host per deploy.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from typing import Any, Callable, Dict, List, Optional

from deploytools.remote.health import expand_placeholders

OUTPUT_LIMIT = 4000


class HookFailed(Exception):
    """A hook exited non-zero or timed out; the message carries its output."""


def hook_environment(release_dir: str, values: Dict[str, str]) -> Dict[str, str]:
    env = dict(os.environ)
    venv = os.path.join(release_dir, ".venv")
    if os.path.isdir(venv):
        env["VIRTUAL_ENV"] = venv
        env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    env.update({
        "DEPLOYTOOLS_RELEASE": values.get("release", ""),
        "DEPLOYTOOLS_RELEASE_PATH": release_dir,
        "DEPLOYTOOLS_PREVIOUS_RELEASE": values.get("previous", ""),
        "DEPLOYTOOLS_DEPLOY_TO": values.get("deploy_to", ""),
        "DEPLOYTOOLS_HOST": values.get("name", ""),
    })
    return env


def shell_command(template: str, values: Dict[str, str]) -> str:
    """The hook's command with {deploy_to}, {host}, {release}, ... filled in, each value
    shell-quoted: a hook runs with shell=True, and a value (a host name, a path from the
    inventory) must never become shell syntax. Write `cd {deploy_to}`, not
    `cd "{deploy_to}"`; $DEPLOYTOOLS_* variables are there too."""
    return expand_placeholders(template, {k: shlex.quote(str(v)) for k, v in values.items()})


def run_hooks(point: str, hooks: Optional[Dict[str, Any]], release_dir: str,
              values: Dict[str, str], run_once_here: bool,
              event: Callable[[str], None]) -> List[Dict[str, Any]]:
    """Run the hooks configured for `point`; raise HookFailed on the first failure."""
    results: List[Dict[str, Any]] = []
    for entry in (hooks or {}).get(point) or []:
        spec = {"run": entry} if isinstance(entry, str) else dict(entry)
        if spec.get("run_once") and not run_once_here:
            continue
        command = shell_command(spec["run"], values)
        timeout = float(spec.get("timeout") or 600)
        event("%s hook: %s" % (point, command))
        cwd = release_dir if os.path.isdir(release_dir) else values.get("deploy_to") or "/"
        try:
            done = subprocess.run(command, shell=True, cwd=cwd, timeout=timeout,
                                  env=hook_environment(release_dir, values),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
            output = done.stdout.decode("utf-8", "replace")[-OUTPUT_LIMIT:]
            code: Optional[int] = done.returncode
        except subprocess.TimeoutExpired as exc:
            output = (exc.output or b"").decode("utf-8", "replace")[-OUTPUT_LIMIT:]
            code = None
        results.append({"point": point, "command": command, "exit": code, "output": output})
        if code != 0:
            why = "timed out after %.0fs" % timeout if code is None else "exited %d" % code
            tail = output.strip()
            raise HookFailed("%s hook `%s` %s%s" % (point, command, why,
                                                    (": " + tail) if tail else ""))
    return results
