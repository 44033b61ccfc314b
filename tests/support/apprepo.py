"""A git repository holding the sample app: each commit is a deployable revision."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploytools.sandbox import write_sample_app


@dataclass
class AppRepo:
    """A git repository holding the sample app; each commit is a deployable revision."""

    path: Path

    @classmethod
    def create(cls, path: Path) -> AppRepo:
        repo = cls(path)
        repo.git("init", "-q", "-b", "main")
        return repo

    def git(self, *args: str) -> str:
        done = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True,
                              text=True, check=True)
        return done.stdout.strip()

    def commit(self, version: str, writer: Callable[..., None] = write_sample_app,
               **app_options: object) -> str:
        """Write the sample app at `version` with `writer` (write_sample_app, or one of
        tests.support.faults' broken apps) and commit it."""
        writer(self.path, version, **app_options)
        self.git("add", "-A")
        self.git("-c", "user.email=t@example.com", "-c", "user.name=tests", "commit", "-q",
                 "--allow-empty", "-m", version)
        return self.git("rev-parse", "HEAD")
