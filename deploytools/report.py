"""The run model (one record per host) and how it is shown to people.

Each host moves through explicit states; the summary and the exit code are
derived from those states, never from log lines. Output is plain, prefixed,
timestamped lines, safe for pipelines and log files; secrets in URLs are masked.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from deploytools.inventory import Host
from deploytools.transport import HostConnection

# Host states, in the order a successful deploy passes through them.
PENDING = "pending"
CONNECTED = "connected"
LOCKED = "locked"
PREPARED = "prepared"
HEALTHY = "healthy"
# Terminal states other than healthy.
FAILED = "failed"  # failed before anything switched: the host serves what it served
ROLLED_BACK = "rolled_back"  # switched, failed, switched back and healthy again
ROLLBACK_FAILED = "rollback_failed"  # switched, failed, and could not be restored
UNREACHABLE = "unreachable"
LOCKED_OUT = "lock_held"
SKIPPED = "skipped"  # not attempted (an earlier failure stopped the run)
UNCHANGED = "unchanged"  # already on the requested revision and verified (--skip-unchanged)


STEP_GRACE = 5.0  # seconds the controller waits past ssh.command_timeout


@dataclass
class HostRun:
    """Everything one run learned about and did to one host."""

    host: Host
    state: str = PENDING
    previous: str | None = None  # the release `current` pointed to before the run
    release: str | None = None  # the release `current` points to at the end
    error: str | None = None
    lock_token: str | None = None
    programs: list[dict[str, Any]] = field(default_factory=list)
    health: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    conn: HostConnection | None = None
    started: float = field(default_factory=time.monotonic)
    busy: float = 0.0  # seconds spent in remote steps (what ssh.host_timeout bounds)
    in_flight: bool = False  # a remote step is running right now
    dry_run: bool = False  # describe changes instead of making them

    @property
    def failed(self) -> bool:
        return self.state in (FAILED, ROLLED_BACK, ROLLBACK_FAILED, UNREACHABLE, LOCKED_OUT)

    def remaining_time(self) -> float:
        """What is left of this host's deadline (ssh.host_timeout). It counts the time
        the host spends in remote steps, not the time it waits for other batches: a
        host in the last `--serial` batch is not out of time before its turn."""
        budget = float(self.host.settings["ssh"].get("host_timeout") or 3600)
        command = float(self.host.settings["ssh"].get("command_timeout") or 900)
        # the agent ends a step at `command` itself and says so; the grace lets that
        # report arrive before the controller gives the host up as hung
        return max(1.0, min(command + STEP_GRACE, budget - self.busy))

    @property
    def name(self) -> str:
        return self.host.name

    def fail(self, state: str, error: str) -> None:
        self.state = state
        self.error = error

    @property
    def active(self) -> bool:
        """Still taking part: connected and not failed."""
        return not self.failed and self.state not in (SKIPPED, UNCHANGED)


_SECRET_QUERY = re.compile(r"(?i)([?&][^=&#\s]*(?:token|key|secret|password|passwd|auth|"
                           r"signature)[^=&#\s]*=)[^&#\s]*")
_URL_USERINFO = re.compile(r"(?i)(\w+://[^/:@\s]*:)[^@/\s]+@")  # user:pw@, :pw@
_URL_TOKEN_USER = re.compile(r"(?i)(https?://)[^/:@\s]+@")  # https://TOKEN@host
_WEBHOOK_PATH = re.compile(  # services that put the secret in the path
    r"(?i)((?:hooks\.slack\.com/(?:services|workflows|triggers)/|"
    r"discord(?:app)?\.com/api/webhooks/\d+/|/webhooks?/)[^\s\"'?#]*)")
_WEBHOOK_KEEP = re.compile(
    r"(?i)^(hooks\.slack\.com/(?:services|workflows|triggers)/|"
    r"discord(?:app)?\.com/api/webhooks/\d+/|/webhooks?/)")


def _mask_webhook(match: re.Match[str]) -> str:
    found = match.group(1)
    prefix = _WEBHOOK_KEEP.match(found)
    assert prefix is not None
    rest = found[prefix.end():]
    return prefix.group(1) + ("***" if rest else "")


def mask_secrets(text: str) -> str:
    """Hide passwords and tokens in URLs (userinfo, token-like query values, webhook
    paths that are themselves the secret): what is printed or logged may be shared."""
    text = _URL_TOKEN_USER.sub(r"\1***@", _URL_USERINFO.sub(r"\1***@", text))
    text = _WEBHOOK_PATH.sub(_mask_webhook, text)
    return _SECRET_QUERY.sub(r"\1***", text)


def strip_credentials(url: str) -> str:
    """`url` without its userinfo password or token (`https://user:token@h/x` ->
    `https://h/x`), so that what is stored on hosts never carries a credential. A plain
    user name (`ssh://git@h/x`, `git@h:x`) has no secret and is kept."""
    match = re.match(r"(?i)^(\w[\w+.-]*://)([^/@\s]*)@", url)
    if not match:
        return url
    userinfo = match.group(2)
    if ":" not in userinfo and not match.group(1).lower().startswith("http"):
        return url
    return match.group(1) + url[match.end():]


class Console:
    """Thread-safe progress output: plain `HH:MM:SS [host] message` lines.

    This is what pipelines, log files and non-terminals get: no control codes, one
    event per line. `--log PATH` appends the same lines, with the date, to a file.
    """

    def __init__(self, stream: TextIO | None = None, quiet: bool = False,
                 log: str | None = None) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self._lock = threading.Lock()
        self._log = open(log, "a", encoding="utf-8") if log else None  # noqa: SIM115

    def _write(self, line: str) -> None:
        line = mask_secrets(line)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()
            if self._log is not None:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                self._log.write("".join(f"{stamp} {part}\n" for part in line.split("\n")))
                self._log.flush()

    def line(self, text: str) -> None:
        """A line of a report (tables, verify rows): shown even when progress is quiet."""
        self._write(text)

    def info(self, message: str) -> None:
        if not self.quiet:
            self._write(f"{time.strftime('%H:%M:%S')} {message}")

    def host(self, name: str, message: str) -> None:
        if not self.quiet:
            self._write(f"{time.strftime('%H:%M:%S')} [{name}] {message}")

    def error(self, message: str) -> None:
        self._write(f"error: {message}")

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                 for r in [headers, ["-" * w for w in widths], *rows]]
        self._write("\n".join(lines))

    def summary(self, runs: list[HostRun]) -> None:
        rows = [[r.name, r.release or "-", r.state, f"{r.timings.get('total', 0):.1f}s",
                 r.error or ""] for r in runs]
        self._write("")
        self.table(["host", "release", "outcome", "time", "detail"], rows)
        self.availability(runs)

    def availability(self, runs: list[HostRun]) -> None:
        """Per restarted host: time out of rotation, time unable to serve, balancer actions."""
        rows = []
        for run in runs:
            record = run.facts.get("availability")
            if record is None:
                continue
            data = record.as_dict()
            out, down = data["out_of_rotation_seconds"], data["unavailable_seconds"]
            actions = ", ".join(f"{a['action']} {a['server']} ({a['waited']:.2f}s)"
                                for a in data["balancer_actions"])
            rows.append([run.name, "-" if out is None else f"{out:.2f}s",
                         "-" if down is None else f"{down:.2f}s", actions or "-"])
        if rows:
            self._write("")
            self.table(["host", "out of rotation", "unavailable", "balancer"], rows)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class LiveConsole(Console):
    """A terminal gets a live per-host view (phase, elapsed, outcome), drawn by rich;
    run-level messages scroll above it, and the summary replaces it at the end."""

    def __init__(self, stream: TextIO | None = None, log: str | None = None) -> None:
        from rich.console import Console as RichConsole
        from rich.live import Live

        super().__init__(stream, log=log)
        self._rich = RichConsole(file=self.stream, highlight=False)
        self._hosts: dict[str, list[Any]] = {}  # name -> [first seen, last message]
        self._live = Live(console=self._rich, refresh_per_second=8, transient=True,
                          get_renderable=self._render)
        self._live.start()

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(box=None, show_edge=False, pad_edge=False)
        for column in ("host", "elapsed", "phase"):
            table.add_column(column)
        now = time.monotonic()
        with self._lock:
            for name, (since, message) in self._hosts.items():
                table.add_row(name, f"{now - since:5.1f}s", mask_secrets(message)[:100])
        return table

    def info(self, message: str) -> None:
        self._live.console.print(mask_secrets(f"{time.strftime('%H:%M:%S')} {message}"),
                                 markup=False)
        self._to_log(message)

    def host(self, name: str, message: str) -> None:
        with self._lock:
            since = self._hosts.get(name, [time.monotonic()])[0]
            self._hosts[name] = [since, message]
        self._to_log(f"[{name}] {message}")

    def error(self, message: str) -> None:
        self._live.console.print(mask_secrets(f"error: {message}"), markup=False)
        self._to_log(f"error: {message}")

    def _to_log(self, text: str) -> None:
        if self._log is not None:
            with self._lock:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                self._log.write(f"{stamp} {mask_secrets(text)}\n")
                self._log.flush()

    def _write(self, line: str) -> None:
        self._stop()
        super()._write(line)

    def _stop(self) -> None:
        if self._live.is_started:
            self._live.stop()

    def close(self) -> None:
        self._stop()
        super().close()


def make_console(stream: TextIO, log: str | None = None, live: bool | None = None) -> Console:
    """A live view for a person at a terminal; plain lines for pipelines, CI and files."""
    if live is None:
        live = (stream.isatty() and not os.environ.get("CI")
                and os.environ.get("TERM", "dumb") != "dumb")
    return LiveConsole(stream, log=log) if live else Console(stream, log=log)
