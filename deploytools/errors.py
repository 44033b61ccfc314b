"""Exceptions and the exit codes they map to.

Pipelines branch on exit codes, so every task maps its outcome to one of these
numbers and nothing else. The table lives here, next to the exceptions that carry
them, so the README, the tasks and the tests all read one source.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Stable process exit codes, the same for every task."""

    OK = 0
    INTERNAL = 1  # a bug in deploytools: please report it
    CONFIG = 2  # the inventory or the command line is wrong; nothing was touched
    FAILED_ROLLED_BACK = 3  # the deploy failed; every host serves what it served before
    PARTIAL = 4  # hosts ended on different releases, or a host could not be restored
    LOCKED = 5  # another deploy holds the lock on at least one host
    UNREACHABLE = 6  # at least one host could not be reached; nothing switched there
    VERIFY_FAILED = 7  # verify/check found a problem
    INTERRUPTED = 130  # Ctrl-C / SIGTERM


class DeployToolsError(Exception):
    """Base class: a failure we can explain in one line to the user."""

    exit_code: ExitCode = ExitCode.INTERNAL


class ConfigError(DeployToolsError):
    """The inventory or the command line is wrong."""

    exit_code = ExitCode.CONFIG


class InventoryError(ConfigError):
    """A broken inventory: names the file, the key path and what was expected."""

    def __init__(self, file: str, key_path: str, expected: str) -> None:
        self.file = file
        self.key_path = key_path
        self.expected = expected
        where = f"{file}: {key_path}: " if key_path else f"{file}: "
        super().__init__(where + expected)


class RemoteError(DeployToolsError):
    """A remote step failed on one host; `host` names it."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(message)


class UnreachableError(RemoteError):
    """The host could not be connected to (DNS, refused, timeout, host key, auth)."""

    exit_code = ExitCode.UNREACHABLE


class LockHeldError(RemoteError):
    """Another run owns the deploy lock on this host."""

    exit_code = ExitCode.LOCKED
