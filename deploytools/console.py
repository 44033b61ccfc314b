"""How a run is shown to people: plain, prefixed, timestamped lines, safe for
pipelines and log files, or a live view at a terminal; secrets in URLs are masked.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, TextIO

from deploytools.hoststate import HostRun
from deploytools.masking import mask_secrets


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
