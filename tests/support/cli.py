"""The one place that builds the `inv` command line the tests run, and the runners on top
of it: a foreground `Cli` bound to an inventory and a `Background` run read line by line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def inv_command(*args: str, inventory: Path | None = None,
                search_root: Path | None = REPO_ROOT) -> list[str]:
    """`inv ARGS` as a user runs it: this checkout's tasks unless `search_root` is None
    (then invoke finds the tasks of the working directory, like a user's own project)."""
    command = [sys.executable, "-m", "invoke"]
    if search_root is not None:
        command += ["--search-root", str(search_root)]
    command += list(args)
    if inventory is not None and "--inventory" not in args:
        command += ["--inventory", str(inventory)]
    return command


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without an inventory picked up from it."""
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYTOOLS_INVENTORY"}
    env.update(extra)
    return env


@dataclass
class Cli:
    """Runs `inv` exactly as a user would, against one inventory file."""

    inventory: Path

    def __call__(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        command = inv_command(*args, inventory=self.inventory if args else None)
        done = subprocess.run(command, capture_output=True, text=True, env=clean_env(),
                              timeout=300)
        if check and done.returncode != 0:
            raise AssertionError(f"inv {' '.join(args)} exited {done.returncode}\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def report(self, *args: str, expect: int | None = 0) -> dict[str, Any]:
        """Run `inv ARGS --json -` and return the parsed report (asserting the exit code)."""
        done = self(*args, "--json", "-")
        if expect is not None:
            assert done.returncode == expect, (
                f"inv {' '.join(args)} exited {done.returncode}, not {expect}\n"
                f"{done.stdout}\n{done.stderr}")
        return json.loads(done.stdout)

    def with_settings(self, path: Path, **overrides: object) -> Cli:
        """A Cli on a copy of this inventory (written to `path`) with these defaults
        replaced whole, so a test's settings never leak into the next test."""
        data = yaml.safe_load(self.inventory.read_text())
        data["defaults"].update(overrides)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return Cli(path)


class Background:
    """An `inv` run in the background whose output can be waited on line by line.

    `new_session` puts it in a process group of its own, so a SIGINT can go to the
    whole group as a terminal's Ctrl-C does."""

    def __init__(self, cli: Cli, *args: str, new_session: bool = False,
                 **env: str) -> None:
        self.proc = subprocess.Popen(inv_command(*args, inventory=cli.inventory),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=clean_env(**env),
                                     start_new_session=new_session)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def saw(self, predicate: Callable[[str], bool], timeout: float = 60) -> bool:
        """True once a line satisfies predicate; False if the run ended or time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(line) for line in list(self.lines)):
                return True
            if self.proc.poll() is not None:
                self._reader.join(5)
                return any(predicate(line) for line in list(self.lines))
            time.sleep(0.02)
        return False

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 60) -> None:
        if not self.saw(predicate, timeout):
            raise AssertionError("never saw the expected line:\n" + "".join(self.lines))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        """The exit code and output; a run still going after `timeout` is killed (-9)."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            code = -9
        self._reader.join(5)
        return code, self.output

    def stop(self) -> None:
        """Kill the run by PID if it is still going, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)
