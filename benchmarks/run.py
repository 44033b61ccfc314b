#!/usr/bin/env python3
"""Benchmark deploytools against a hand-written OpenSSH deploy, on a local simulated
fleet or on any fleet a deploytools inventory describes.

Usage (from anywhere; the repository is found from this file's location)::

    python benchmarks/run.py [--hosts 1,4,16] [--repeat 3] [--modules 2000]
                             [--out benchmarks/results] [--scale 16,200] [--quick] [--profile]
    python benchmarks/run.py --inventory FILE [--group prod] [--repo DIR] [--repeat 3]
                             [--modules 2000] [--out DIR] [--profile]

With ``--inventory`` the fleet is the group's hosts (no sandbox is started, ``--hosts``
and ``--scale`` do not apply) and every host interaction goes over the real ``ssh``
with the inventory's settings (fleet_hosts.SshHosts); the sample app is committed into
``--repo`` and deployed through a copy of the inventory whose source is that repo.
``--profile`` profiles the first fresh deploytools deploy per fleet (profiles.py); the
summary's per-step cost table comes from the ``--json`` report (cost_table.py).

``--quick`` is a smoke run (hosts 1,4; repeat 1; modules 200; scale 0); any option given
explicitly still wins over it. The default run takes about 13 minutes on a 2-core
machine. Progress goes to stderr; the Markdown summary goes to stdout and to
``OUT/results.md``; every raw measurement (including time-stamped deploy output, useful
to find slow phases) goes to ``OUT/results.json``. The exit status is 0 when every case
passed, 1 when any case failed (each failure is also printed loudly as it happens), 130
on Ctrl-C.

Why this exists: "is the tool's safety worth its cost?" can only be answered against the
thing people would write instead, so every deploytools number is measured side by side
with a plain ``git archive | ssh 'tar -x; compileall; ln; stop; start; curl'`` on the same
hosts, same app, same machine.

For each fleet size N (``--hosts``), on a fresh ``deploytools.sandbox`` fleet (real sshd
and supervisord per host on 127.x addresses; stopped by PID at the end, also on failure
or Ctrl-C), ``--repeat`` times:

* ``deploytools fresh``: hosts reset (app stopped, ``deploy_to`` emptied), a new commit,
  ``inv deploy --hosts prod``: the full artifact to hosts that have no release.
* ``deploytools one-change``: one module changed and committed, deployed on top.
* ``deploytools skip-unchanged``: the same revision again with ``--skip-unchanged``
  (recorded as "not available" while deploytools has no such flag).
* ``openssh fresh`` / ``openssh one-change``: the same two situations deployed by the
  baseline (one ``git archive HEAD | ssh`` per host, all hosts in parallel, with the
  real ``ssh`` binary, the fleet's key and strict known_hosts checking).

The deploytools and baseline blocks alternate which goes first, so neither always runs
on a warm page cache. A case only counts if afterwards every host's ``/health`` reports
the release just deployed; after each deploytools case ``inv verify`` runs and whether it
passed is recorded. ``--scale N,M`` (default 16,200; 0 skips) finally deploys a tiny app once
to N hosts to show the controller's per-host CPU cost and memory.

Metrics, per case and repetition (the table shows median and min-max):

* wall: seconds from spawning the command(s) to their exit.
* controller CPU: ``getrusage(RUSAGE_CHILDREN)`` delta around the run (the ``inv``
  process and everything it reaped; for the baseline every ``git``/``ssh``), plus this
  script's own (near zero: the baseline's byte counting uses ``splice``).
* host CPU: an approximation, since the "hosts" are this machine: whole-machine busy
  time from ``/proc/stat`` minus the controller CPU. Anything else running on the
  machine lands here too.
* sent/host: bytes the controller wrote into SSH sessions per host (deploytools: its
  ``--json`` report, ``hosts[i].transport.bytes_sent``; baseline: the ``git archive``
  stream counted while piping it, plus the remote command's length). Payload bytes,
  not wire bytes (no SSH framing, encryption or compression).
* sessions/commands/requests per host: SSH connections, remote commands, and requests
  (round trips) over those commands (deploytools: its report, where one agent session
  serves a whole run; the baseline: 1, 1 and 1). "n/a" when deploytools has no
  ``--json`` report yet.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _path in (REPO_ROOT, BENCH_DIR):  # run straight from a checkout, installed or not
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import cost_table  # noqa: E402
import profiles  # noqa: E402
from fleet_hosts import (  # noqa: E402
    Hosts,
    HostsError,
    SandboxHosts,
    SshHosts,
    write_inventory_copy,
)

from deploytools.errors import ConfigError  # noqa: E402
from deploytools.profiling import PROFILE_ENV  # noqa: E402
from deploytools.sandbox import start_fleet, write_sample_app  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
QUICK = {"hosts": "1,4", "repeat": 1, "modules": 200, "scale": "0"}
DEFAULTS = {"hosts": "1,4,16", "repeat": 3, "modules": 2000, "scale": "16,200"}
# The sample app's filler modules average ~5.4 KB, so 2,000 of them make ~10.7 MB; the
# benchmark's app is meant to weigh ~20 MB (transfer, extraction and compilation scale
# with bytes), so each module is padded to ~1.87x its size, deterministically and with
# real functions so that compileall has real work: 2,000 modules -> ~21.8 MB.
PAD_FACTOR = 1.87
CHANGED_MODULE_INDEX = 1
DEPLOY_TIMEOUT = 900.0
BASELINE_TIMEOUT = 900.0
LOG_LINES_KEPT = 3000

CASES = (
    ("dt_fresh", "deploytools fresh"),
    ("dt_one_change", "deploytools one-change"),
    ("dt_skip_unchanged", "deploytools skip-unchanged"),
    ("sh_fresh", "openssh fresh"),
    ("sh_one_change", "openssh one-change"),
)
CASE_LABELS = dict(CASES)


class CaseFailed(Exception):
    """A case did not end with every host serving the release it deployed."""


def log(message: str) -> None:
    """Progress on stderr, so stdout carries only the Markdown summary."""
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# =========================================================================== measuring


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_LIVE_PROCS: dict[int, subprocess.Popen[bytes]] = {}
_LIVE_LOCK = threading.Lock()


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all CPUs, /proc/stat).

    user+nice+system+irq+softirq+steal; idle and iowait are not work, and guest time
    is already inside user.
    """
    with open("/proc/stat", encoding="ascii") as fh:
        fields = fh.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


@dataclass
class Usage:
    """Wall and CPU spent between entering and leaving a :func:`measure` block."""

    wall_s: float = 0.0
    controller_cpu_s: float = 0.0
    machine_cpu_s: float = 0.0

    @property
    def host_cpu_s(self) -> float:
        """Everything the machine did that the controller did not: sshd sessions, remote
        agents/tar/compileall, supervisord, the app (plus any unrelated noise)."""
        return max(0.0, self.machine_cpu_s - self.controller_cpu_s)


QUIET_BUSY = 0.10  # of all CPUs: the machine counts as quiet below this
QUIET_WINDOW_S = 0.5
SETTLE = {"limit_s": 20.0}  # --settle


def wait_until_quiet() -> None:
    """Wait (at most --settle seconds) until the machine is nearly idle, so that a case is
    not charged for the tail of the one before: after a deploy the hosts delete old
    releases and verify the new one in the background, at the lowest priority, but on
    this machine that is still CPU the next case would share."""
    cpus = os.cpu_count() or 1
    started = time.monotonic()
    while time.monotonic() - started < SETTLE["limit_s"]:
        busy = machine_busy_seconds()
        time.sleep(QUIET_WINDOW_S)
        if (machine_busy_seconds() - busy) / (QUIET_WINDOW_S * cpus) < QUIET_BUSY:
            return


@contextlib.contextmanager
def measure() -> Iterator[Usage]:
    """Measure the block (once the machine is quiet); children must be reaped inside it
    to be counted."""
    wait_until_quiet()
    usage = Usage()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    busy = machine_busy_seconds()
    started = time.monotonic()
    try:
        yield usage
    finally:
        usage.wall_s = time.monotonic() - started
        usage.machine_cpu_s = machine_busy_seconds() - busy
        usage.controller_cpu_s = (
            _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - _cpu(children)
            + _cpu(resource.getrusage(resource.RUSAGE_SELF)) - _cpu(own)
        )


def _track(proc: subprocess.Popen[bytes]) -> None:
    with _LIVE_LOCK:
        _LIVE_PROCS[proc.pid] = proc


def _untrack(proc: subprocess.Popen[bytes]) -> None:
    with _LIVE_LOCK:
        _LIVE_PROCS.pop(proc.pid, None)


def kill_live_processes() -> None:
    """Kill (by PID) every command this script started that is still running, so an
    interrupted benchmark leaves no deploy or ssh behind when the fleet goes away."""
    with _LIVE_LOCK:
        procs = list(_LIVE_PROCS.values())
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
        _untrack(proc)


@dataclass
class Finished:
    """A command's exit code, its output lines stamped with seconds since it started,
    and the peak RSS of its process tree (itself and every child it reaped)."""

    returncode: int
    lines: list[tuple[float, str]]
    maxrss_mb: float

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def tail(self, count: int = 15) -> str:
        return "\n".join(line for _, line in self.lines[-count:])


def run_command(command: Sequence[str], timeout: float, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> Finished:
    """Run a command, stamping each output line as it arrives (slow phases show up as
    gaps) and reaping it with wait4() for the rusage of exactly this process tree."""
    started = time.monotonic()
    proc = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, cwd=cwd)
    _track(proc)
    timer = threading.Timer(timeout, lambda: proc.poll() is None and proc.kill())
    timer.daemon = True
    timer.start()
    lines: list[tuple[float, str]] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            lines.append((round(time.monotonic() - started, 3), text))
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap it again
    finally:
        timer.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        _untrack(proc)
    return Finished(proc.returncode, lines, rusage.ru_maxrss / 1024)


# deploytools progress lines that mark the end of a phase on a host (best effort: the
# wording may change; a missing mark is simply absent from the results).
PHASE_MARKS = (
    ("planned", re.compile(r"\brelease \S+: \d+ files")),
    ("files", re.compile(r"\] (unpacked \d+ files|\d+ files: \d+ received)")),
    ("bytecode", re.compile(r"\] (compiled \d+ modules|bytecode: )")),
    ("switched", re.compile(r"\] switched current")),
    ("stopped", re.compile(r"\] stopped ")),
    ("started", re.compile(r"\] started ")),
    ("healthy", re.compile(r"\] healthy")),
)


def phase_marks(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds since start at which the last host passed each phase (from the stamped
    output), so a slow phase shows up as a big step between two marks."""
    marks: dict[str, float] = {}
    if lines:
        marks["first_output"] = lines[0][0]
    for stamp, text in lines:
        for name, pattern in PHASE_MARKS:
            if pattern.search(text):
                marks[name] = max(marks.get(name, 0.0), stamp)
    if lines:
        marks["last_output"] = lines[-1][0]
    return marks


def inv_command(*args: str) -> list[str]:
    """`inv ...` exactly as a user runs it, with this repository's tasks."""
    return [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), *args]


def clean_env() -> dict[str, str]:
    """Our environment minus settings that would redirect deploytools elsewhere."""
    return {k: v for k, v in os.environ.items() if k != "DEPLOYTOOLS_INVENTORY"}


@dataclass
class Features:
    """Which optional deploytools flags this checkout has (they are being added while
    the benchmark exists; a missing one turns its numbers into "n/a", not an error)."""

    json_report: bool
    skip_unchanged: bool

    @classmethod
    def detect(cls) -> Features:
        done = run_command(inv_command("deploy", "--help"), timeout=60, env=clean_env())
        text = done.text
        if done.returncode != 0:
            raise SystemExit(f"`inv deploy --help` failed ({done.returncode}):\n{text}")
        return cls(json_report="--json" in text, skip_unchanged="--skip-unchanged" in text)


# =========================================================================== sample app


def _padding(index: int, target: int, current: int) -> str:
    """Deterministic extra functions for module ``index`` until it reaches ``target``."""
    parts: list[str] = []
    j = 0
    while current < target:
        chunk = (
            f"\n\ndef pad{index:04d}_{j:03d}(values, seed={(index * 131 + j) % 9973}):\n"
            f'    """Fold values into a checksum (padding {index}.{j}, benchmark ballast)."""\n'
            f"    acc = seed\n"
            f"    for position, value in enumerate(values):\n"
            f"        acc = (acc * 33 + value * (position + {j + 1})) % 2147483647\n"
            f"    return acc ^ {(index * 7 + j * 13) % 65521}\n"
        )
        parts.append(chunk)
        current += len(chunk)
        j += 1
    return "".join(parts)


@dataclass
class SampleRepo:
    """A git repository holding the (padded) sample app; each commit is a revision."""

    path: Path
    modules: int
    commits: int = 0

    def git(self, *args: str, stdout: Any = subprocess.PIPE) -> str:
        done = subprocess.run(["git", "-C", str(self.path), *args], stdout=stdout,
                              stderr=subprocess.PIPE, check=False)
        if done.returncode:
            raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.decode().strip()}")
        return done.stdout.decode().strip() if done.stdout is not None else ""

    @classmethod
    def create(cls, path: Path, modules: int) -> SampleRepo:
        """A new repository at ``path``, which must not exist or be an empty directory
        (the benchmark owns it: it rewrites the whole tree on every commit)."""
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise SystemExit(f"{path}: the sample app's repository must be new or empty")
        repo = cls(path, modules)
        repo.git("init", "-q")
        return repo

    def _commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("-c", "user.email=bench@example.com", "-c", "user.name=benchmark",
                 "-c", "commit.gpgsign=false", "commit", "-q", "--allow-empty", "-m", message)
        self.commits += 1
        return self.git("rev-parse", "HEAD")

    def commit_version(self, version: str) -> str:
        """Write the whole app at ``version`` (every module rewritten, same bytes) and commit."""
        write_sample_app(self.path, version, extra_modules=self.modules)
        mods = self.path / "sampleapp" / "mods"
        for index in range(self.modules):
            module = mods / f"m{index:04d}.py"
            text = module.read_text(encoding="utf-8")
            module.write_text(text + _padding(index, int(len(text) * PAD_FACTOR), len(text)),
                              encoding="utf-8")
        return self._commit(version)

    def changed_module(self) -> Path:
        if self.modules > CHANGED_MODULE_INDEX:
            return self.path / "sampleapp" / "mods" / f"m{CHANGED_MODULE_INDEX:04d}.py"
        return self.path / "sampleapp" / "__init__.py"

    def commit_one_change(self, tag: str) -> str:
        """Change exactly one module (one line appended) and commit it."""
        module = self.changed_module()
        with module.open("a", encoding="utf-8") as fh:
            fh.write(f"\nCHANGE = {tag!r}\n")
        return self._commit(f"one change: {tag}")

    def archive_size(self, rev: str = "HEAD") -> tuple[int, int]:
        """(bytes of `git archive`, number of files) for the app at ``rev``."""
        done = subprocess.run(["git", "-C", str(self.path), "archive", "--format=tar", rev],
                              capture_output=True, check=True)
        files = len(self.git("ls-tree", "-r", "--name-only", rev).splitlines())
        return len(done.stdout), files


# =========================================================================== the fleet


def release_stamp(revision: str) -> str:
    """A Capistrano-style release id for the baseline (same shape as deploytools')."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{revision[:7]}"


def _median_host_value(values: list[Any] | None) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return float(statistics.median(values))


@dataclass
class Bench:
    """One fleet (any :class:`Hosts`) and the repo it deploys from."""

    hosts: Hosts
    repo: SampleRepo
    workdir: Path
    features: Features
    records: list[dict[str, Any]] = field(default_factory=list)
    # --profile: where the next fresh deploytools case writes its profile (then None)
    profile_dir: Path | None = None

    @property
    def n(self) -> int:
        return len(self.hosts.names)

    # ------------------------------------------------------------------ host state

    def check_health(self, expected: str) -> None:
        """Every host's app must answer /health from release ``expected``, right now."""
        try:
            answers = self.hosts.health_releases()
        except HostsError as exc:
            raise CaseFailed(f"could not read /health: {exc}") from None
        wrong = [f"{name}: {got or 'no answer'}" for name, got in answers.items()
                 if got != expected]
        if wrong:
            raise CaseFailed(f"/health does not report {expected} on {len(wrong)} of "
                             f"{self.n} hosts: {'; '.join(wrong[:5])}")

    def verify(self) -> dict[str, Any]:
        """`inv verify`, recorded (not timed as part of the deploy)."""
        started = time.monotonic()
        done = run_command(inv_command("verify", "--hosts", self.hosts.group, "--inventory",
                                       str(self.hosts.inventory)), DEPLOY_TIMEOUT,
                           env=clean_env())
        result = {"passed": done.returncode == 0, "exit_code": done.returncode,
                  "wall_s": round(time.monotonic() - started, 3)}
        if done.returncode != 0:
            result["output_tail"] = done.tail()
            log(f"  verify FAILED (exit {done.returncode}): {done.tail(3)}")
        return result

    # ------------------------------------------------------------------ cases

    def _record(self, case: str, rep: int, **values: Any) -> dict[str, Any]:
        record = {"n": self.n, "case": case, "label": CASE_LABELS[case], "rep": rep,
                  "ok": False, "available": True, "error": None, **values}
        self.records.append(record)
        return record

    def deploytools(self, case: str, rep: int, revision: str,
                    extra: Sequence[str] = ()) -> dict[str, Any]:
        """Run one `inv deploy`, check every host serves its release, then `inv verify`."""
        report_path = self.workdir / f"report-{self.n}-{case}-{rep}.json"
        args = ["deploy", "--hosts", self.hosts.group, "--inventory", str(self.hosts.inventory),
                *extra]
        if self.features.json_report:
            args += ["--json", str(report_path)]
        if case == "dt_skip_unchanged" and not self.features.skip_unchanged:
            log(f"  {CASE_LABELS[case]}: not available (deploy has no --skip-unchanged)")
            return self._record(case, rep, available=False, ok=True,
                                error="not available: deploy has no --skip-unchanged")
        before = self.hosts.release_dirs()
        previous = self.hosts.current_release()
        env = clean_env()
        profile_dir = self.profile_dir if case == "dt_fresh" else None
        if profile_dir is not None:
            self.profile_dir = None  # the first fresh deploy of this fleet only
            shutil.rmtree(profile_dir, ignore_errors=True)  # a previous run's dumps
            profile_dir.mkdir(parents=True)
            env[PROFILE_ENV] = str(profile_dir)
        with measure() as usage:
            done = run_command(inv_command(*args), DEPLOY_TIMEOUT, env=env)
        record = self._record(case, rep, revision=revision, exit_code=done.returncode,
                              **self._usage_fields(usage), peak_rss_mb=round(done.maxrss_mb, 1),
                              phases=phase_marks(done.lines),
                              log=done.lines[-LOG_LINES_KEPT:])
        if profile_dir is not None:
            record["profile"] = {"dir": str(profile_dir),
                                 "written": profiles.summarise(profile_dir)}
        if done.returncode == 2 and "No idea what '--skip-unchanged' is" in done.text:
            record.update(available=False, ok=True,
                          error="not available: deploy has no --skip-unchanged")
            log(f"  {CASE_LABELS[case]}: not available")
            return record
        self._read_report(record, report_path)
        with self._failing_into(record):
            if done.returncode != 0:
                raise CaseFailed(f"inv deploy exited {done.returncode}:\n{done.tail()}")
            new = [after - old for after, old in zip(self.hosts.release_dirs(), before)]
            if all(len(names) == 1 for names in new) and len({*map(frozenset, new)}) == 1:
                release = next(iter(new[0]))
            elif not any(new) and previous:
                release = previous  # nothing new anywhere: a skipped (no-op) deploy
            else:
                raise CaseFailed(f"expected one new release per host, found {new}")
            record["release"] = release
            record["new_release"] = bool(new[0])
            self.check_health(release)
        record["verify"] = self.verify()
        record["ok"] = True
        return record

    @staticmethod
    @contextlib.contextmanager
    def _failing_into(record: dict[str, Any]) -> Iterator[None]:
        """Write a CaseFailed's message into the case's record before it propagates."""
        try:
            yield
        except CaseFailed as exc:
            record["error"] = str(exc)
            raise

    @staticmethod
    def _usage_fields(usage: Usage) -> dict[str, float]:
        return {"wall_s": round(usage.wall_s, 3),
                "controller_cpu_s": round(usage.controller_cpu_s, 3),
                "host_cpu_s": round(usage.host_cpu_s, 3),
                "machine_cpu_s": round(usage.machine_cpu_s, 3)}

    def _read_report(self, record: dict[str, Any], path: Path) -> None:
        """Per-host transport counters from deploytools' --json report; None if absent."""
        record["bytes_sent_per_host"] = None
        record["sessions_per_host"] = None
        record["commands_per_host"] = None
        record["requests_per_host"] = None
        if not path.exists():
            return
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            record["report_error"] = f"unreadable --json report: {exc}"
            return
        hosts = report.get("hosts") if isinstance(report, dict) else None
        if not isinstance(hosts, list):
            record["report_error"] = "--json report has no 'hosts' list"
            return

        def per_host(key: str) -> list[Any] | None:
            values = [(h.get("transport") or {}).get(key) if isinstance(h, dict) else None
                      for h in hosts]
            return None if all(v is None for v in values) else values

        record["bytes_sent_per_host"] = per_host("bytes_sent")
        record["sessions_per_host"] = per_host("connections")
        record["commands_per_host"] = per_host("commands")
        record["requests_per_host"] = per_host("requests")  # round trips over those commands
        kept = ("name", "outcome", "release", "previous", "error", "phases", "health",
                "transport", "cost")
        record["report_hosts"] = [{k: h[k] for k in kept if k in h}
                                  for h in hosts if isinstance(h, dict)]
        # The slowest host's duration of each phase deploytools reports (check, prepare,
        # activate, ...): the run waits for it.
        slowest: dict[str, float] = {}
        for host in hosts:
            phases = host.get("phases") if isinstance(host, dict) else None
            for name, seconds in (phases or {}).items():
                if isinstance(seconds, (int, float)):
                    slowest[name] = max(slowest.get(name, 0.0), float(seconds))
        if slowest:
            record["report_phases_max"] = slowest
        run = report.get("run")
        record["run_cost"] = run.get("cost") if isinstance(run, dict) else None

    def baseline(self, case: str, rep: int, revision: str) -> dict[str, Any]:
        """The hand-written deploy: `git archive | ssh '...'` per host, all in parallel."""
        release = release_stamp(revision)
        commands = {name: self.hosts.baseline_script(name, release) for name in self.hosts.names}
        with measure() as usage:
            outcomes = run_baseline(self.hosts, self.repo.path, revision, commands)
        failed = {name: o for name, o in outcomes.items() if o["exit_code"] != 0}
        record = self._record(
            case, rep, revision=revision, release=release, **self._usage_fields(usage),
            bytes_sent_per_host=[o["bytes"] + len(commands[n].encode())
                                 for n, o in outcomes.items()],
            archive_bytes=next(iter(outcomes.values()))["bytes"],
            sessions_per_host=[1] * self.n, commands_per_host=[1] * self.n,
            requests_per_host=[1] * self.n,
            exit_codes={n: o["exit_code"] for n, o in outcomes.items()},
        )
        with self._failing_into(record):
            if failed:
                name, outcome = next(iter(failed.items()))
                raise CaseFailed(f"baseline failed on {len(failed)} host(s); {name} exited "
                                 f"{outcome['exit_code']}: {outcome['output'][-800:]}")
            self.check_health(release)
        record["ok"] = True
        return record


# =========================================================================== the baseline


def _pump(src: int, dst: int) -> int:
    """Move bytes between two pipes and count them; splice() keeps the copy in the
    kernel so the counting adds no controller CPU a shell pipe would not have."""
    total = 0
    try:
        while True:
            try:
                moved = os.splice(src, dst, 1 << 20)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: no splice for these fds: copy
                    raise
                block = os.read(src, 1 << 20)
                moved = len(block)
                if moved:
                    os.write(dst, block)
            if moved == 0:
                return total
            total += moved
    except BrokenPipeError:
        return total  # ssh went away early; its exit status says why


def run_baseline(hosts: Hosts, repo: Path, revision: str,
                 commands: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Start `git archive REV | ssh HOST CMD` for every host at once and wait for all."""
    jobs: list[tuple[str, subprocess.Popen[bytes], subprocess.Popen[bytes], Any]] = []
    counts: dict[str, int] = {}
    threads = []
    try:
        for name, command in commands.items():
            out = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
            git = subprocess.Popen(["git", "-C", str(repo), "archive", "--format=tar", revision],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            _track(git)
            ssh = subprocess.Popen(hosts.ssh_command(name, command),
                                   stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
            _track(ssh)
            jobs.append((name, git, ssh, out))

            def pump(name: str = name, git: Any = git, ssh: Any = ssh) -> None:
                try:
                    counts[name] = _pump(git.stdout.fileno(), ssh.stdin.fileno())
                finally:
                    git.stdout.close()
                    with contextlib.suppress(BrokenPipeError):
                        ssh.stdin.close()

            thread = threading.Thread(target=pump, daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(BASELINE_TIMEOUT)
        outcomes = {}
        for name, git, ssh, out in jobs:
            for proc in (git, ssh):
                try:
                    proc.wait(timeout=BASELINE_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            out.seek(0)
            text = out.read().decode("utf-8", "replace")
            code = ssh.returncode if git.returncode == 0 else f"git archive {git.returncode}"
            outcomes[name] = {"exit_code": code, "bytes": counts.get(name, 0), "output": text}
        return outcomes
    finally:
        for _, git, ssh, out in jobs:
            for proc in (git, ssh):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                _untrack(proc)
            out.close()


# =========================================================================== one fleet size


def run_fleet_size(n: int, args: argparse.Namespace, features: Features, workdir: Path,
                   records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Every case, ``args.repeat`` times, on one sandbox fleet of n hosts (stopped in
    any case)."""
    log(f"== {n} host(s): starting fleet")
    started = time.monotonic()
    fleet = start_fleet(n)
    try:
        meta.setdefault("fleet_start_s", {})[str(n)] = round(time.monotonic() - started, 2)
        repo = SampleRepo.create(workdir / f"app-{n}", args.modules)
        inventory = fleet.write_inventory(workdir / f"inventory-{n}.yaml",
                                          source={"repo": str(repo.path)})
        run_cases(Bench(SandboxHosts(fleet, inventory), repo, workdir, features, records),
                  args, meta)
    finally:
        log(f"== {n} host(s): stopping fleet")
        fleet.stop()


def run_inventory(hosts: SshHosts, repo: SampleRepo, args: argparse.Namespace,
                  features: Features, workdir: Path, records: list[dict[str, Any]],
                  meta: dict[str, Any]) -> None:
    """Every case, ``args.repeat`` times, on the existing fleet of an inventory."""
    log(f"== {len(hosts.names)} host(s) of {args.inventory} (group {hosts.group})")
    run_cases(Bench(hosts, repo, workdir, features, records), args, meta)


def run_cases(bench: Bench, args: argparse.Namespace, meta: dict[str, Any]) -> None:
    """The fleet's settings into ``meta``, then both blocks ``args.repeat`` times."""
    settings = bench.hosts.describe()
    meta.setdefault("fleets", {})[str(bench.n)] = settings
    log(f"  fleet: {fleet_line(settings)}")
    if args.profile:
        bench.profile_dir = args.out.resolve() / "profile" / f"n{bench.n}"
    for rep in range(1, args.repeat + 1):
        blocks: list[Callable[[], None]] = [
            lambda rep=rep: deploytools_block(bench, rep),
            lambda rep=rep: baseline_block(bench, rep),
        ]
        if rep % 2 == 0:
            blocks.reverse()  # alternate who gets the warmer caches
        for block in blocks:
            block()


def _guarded(bench: Bench, steps: list[tuple[str, Callable[[], dict[str, Any]]]]) -> None:
    """Run dependent cases in order; the first failure is reported loudly and skips the
    rest of the block (they would build on a broken state). The failing case's record
    already carries the error (see :meth:`Bench.fail`)."""
    for case, step in steps:
        try:
            record = step()
        except CaseFailed as exc:
            print(f"\n!!! CASE FAILED: {bench.n} hosts, {CASE_LABELS[case]}: {exc}\n",
                  file=sys.stderr, flush=True)
            return
        if record.get("available", True):
            log(f"  {record['label']:<27} wall {record['wall_s']:7.2f}s  controller "
                f"{record['controller_cpu_s']:6.2f}s  host {record['host_cpu_s']:6.2f}s"
                + (f"  verify {'ok' if record['verify']['passed'] else 'FAILED'}"
                   if "verify" in record else ""))


def deploytools_block(bench: Bench, rep: int) -> None:
    bench.hosts.reset()
    fresh = bench.repo.commit_version(f"dt-n{bench.n}-r{rep}")
    state: dict[str, str] = {}

    def one_change() -> dict[str, Any]:
        state["rev"] = bench.repo.commit_one_change(f"dt-n{bench.n}-r{rep}")
        return bench.deploytools("dt_one_change", rep, state["rev"])

    _guarded(bench, [
        ("dt_fresh", lambda: bench.deploytools("dt_fresh", rep, fresh)),
        ("dt_one_change", one_change),
        ("dt_skip_unchanged", lambda: bench.deploytools(
            "dt_skip_unchanged", rep, state["rev"], extra=["--skip-unchanged"])),
    ])


def baseline_block(bench: Bench, rep: int) -> None:
    bench.hosts.reset()
    fresh = bench.repo.commit_version(f"sh-n{bench.n}-r{rep}")

    def one_change() -> dict[str, Any]:
        return bench.baseline("sh_one_change", rep,
                              bench.repo.commit_one_change(f"sh-n{bench.n}-r{rep}"))

    _guarded(bench, [
        ("sh_fresh", lambda: bench.baseline("sh_fresh", rep, fresh)),
        ("sh_one_change", one_change),
    ])


def run_scale(count: int, features: Features, workdir: Path) -> dict[str, Any]:
    """One fresh deploy of the tiny app to ``count`` hosts: the controller's per-host cost.

    The hosts run an idle program instead of the app server and have no health check
    (a sandbox fleet with ``app_server=False``): what is measured is deploying."""
    log(f"== scale: {count} hosts, tiny app: starting fleet")
    started = time.monotonic()
    fleet = start_fleet(count, app_server=False)  # an sshd and a supervisord per host
    result: dict[str, Any] = {"hosts": count, "ok": False,
                              "fleet_start_s": round(time.monotonic() - started, 2)}
    try:
        repo = SampleRepo.create(workdir / f"app-scale-{count}", 0)
        revision = repo.commit_version("scale-v1")
        inventory = fleet.write_inventory(workdir / f"inventory-scale-{count}.yaml",
                                          source={"repo": str(repo.path)})
        bench = Bench(SandboxHosts(fleet, inventory), repo, workdir, features, [])
        try:
            record = bench.deploytools("dt_fresh", 1, revision)
        except CaseFailed as exc:
            result["error"] = str(exc)
            print(f"\n!!! CASE FAILED: scale {count} hosts: {exc}\n", file=sys.stderr, flush=True)
            if bench.records:
                result["record"] = bench.records[-1]
            return result
        result.update(
            ok=True, record=record, wall_s=record["wall_s"],
            controller_cpu_s=record["controller_cpu_s"], host_cpu_s=record["host_cpu_s"],
            controller_cpu_ms_per_host=round(1000 * record["controller_cpu_s"] / count, 1),
            peak_rss_mb=record["peak_rss_mb"], verify_passed=record["verify"]["passed"],
        )
        log(f"  scale: wall {record['wall_s']:.2f}s, controller "
            f"{result['controller_cpu_ms_per_host']} ms/host, peak RSS {record['peak_rss_mb']} MB")
        return result
    finally:
        log("== scale: stopping fleet")
        fleet.stop()


# =========================================================================== summary


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "count": len(values)}


def _metric_values(records: list[dict[str, Any]], key: str) -> list[float]:
    values = []
    for record in records:
        value = record.get(key)
        if isinstance(value, list):
            value = _median_host_value(value)
        if value is not None:
            values.append(float(value))
    return values


METRICS = (
    ("wall_s", "wall s", 1.0, "{:.2f}"),
    ("controller_cpu_s", "controller CPU s", 1.0, "{:.2f}"),
    ("host_cpu_s", "host CPU s (approx.)", 1.0, "{:.2f}"),
    ("bytes_sent_per_host", "MB sent/host", 1e-6, "{:.2f}"),
    ("sessions_per_host", "SSH sessions/host", 1.0, "{:g}"),
    ("commands_per_host", "remote cmds/host", 1.0, "{:g}"),
    ("requests_per_host", "requests/host", 1.0, "{:g}"),
)


PHASE_COLUMNS = ("first_output", "planned", "files", "bytecode", "switched", "stopped",
                 "started", "healthy", "last_output")


def summarize(records: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """Medians and ranges per (N, case), plus the wall-time ratios that matter."""
    summary: dict[str, Any] = {}
    for n in sizes:
        per_case: dict[str, Any] = {}
        for case, _label in CASES:
            rows = [r for r in records if r["n"] == n and r["case"] == case]
            good = [r for r in rows if r["ok"] and r.get("available", True)]
            entry: dict[str, Any] = {
                "runs": len(good), "failed": sum(1 for r in rows if not r["ok"]),
                "available": not rows or any(r.get("available", True) for r in rows),
                "verify_passed": sum(1 for r in good if r.get("verify", {}).get("passed")),
                "verified": sum(1 for r in good if "verify" in r),
                "new_release": [r.get("new_release") for r in good if "new_release" in r],
            }
            for key, _title, _scale, _fmt in METRICS:
                entry[key] = _stats(_metric_values(good, key))
            # A mark missing from some runs (the wording changed, or the phase was
            # skipped) is left out: a median over a subset would not line up in time.
            marks = [r.get("phases") or {} for r in good]
            names = [name for name in PHASE_COLUMNS if marks and all(name in m for m in marks)]
            entry["phases"] = {name: round(statistics.median(m[name] for m in marks
                                                             if name in m), 3)
                               for name in names}
            if case.startswith("dt_"):
                reports = [{"hosts": r.get("report_hosts") or [],
                            "run": {"cost": r.get("run_cost")}} for r in good]
                entry["cost_rows"] = cost_table.cost_rows(reports)
                entry["run_cost"] = cost_table.run_cost(reports)
                entry["profiles"] = [r["profile"] for r in rows if r.get("profile")]
            reported = [r.get("report_phases_max") or {} for r in good]
            entry["report_phases"] = {
                name: round(statistics.median(m[name] for m in reported), 3)
                for name in sorted({k for m in reported for k in m})
                if all(name in m for m in reported)
            }
            per_case[case] = entry
        summary[str(n)] = {"cases": per_case, "ratios": _ratios(per_case)}
    return summary


def _ratios(cases: dict[str, Any]) -> dict[str, float | None]:
    def wall(case: str) -> float | None:
        stats = cases[case]["wall_s"]
        return stats["median"] if stats else None

    def ratio(a: str, b: str) -> float | None:
        x, y = wall(a), wall(b)
        return round(x / y, 2) if x is not None and y else None

    return {
        "fresh_dt_over_baseline": ratio("dt_fresh", "sh_fresh"),
        "one_change_dt_over_baseline": ratio("dt_one_change", "sh_one_change"),
        "dt_one_change_over_fresh": ratio("dt_one_change", "dt_fresh"),
        "dt_skip_unchanged_over_fresh": ratio("dt_skip_unchanged", "dt_fresh"),
    }


def _cell(stats: dict[str, float] | None, scale: float, fmt: str) -> str:
    if stats is None:
        return "n/a"
    median = fmt.format(stats["median"] * scale)
    if stats["count"] == 1 or stats["min"] == stats["max"]:
        return median
    return f"{median} ({fmt.format(stats['min'] * scale)}–{fmt.format(stats['max'] * scale)})"


def _ratio_cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def fleet_line(settings: dict[str, Any]) -> str:
    """A fleet's settings (Hosts.describe) in one line; several values: the hosts differ."""
    def values(key: str, show: Callable[[Any], str]) -> str:
        return " / ".join(show(v) for v in settings.get(key) or []) or "n/a"

    def secs(per_program: dict[str, int | None] | None) -> str:
        if not per_program:
            return "n/a"
        return ", ".join(f"{name}={'n/a' if v is None else v}" for name, v in per_program.items())

    return (f"{settings['hosts']} host(s) · supervisor startsecs {values('startsecs', secs)} · "
            f"python `{values('python', str)}` ({values('python_version', str)})")


def _cost_sections(summary: dict[str, Any]) -> list[str]:
    """Per fleet size and deploytools case: what each step cost, from the --json report."""
    out: list[str] = []
    for n, data in summary.items():
        for case, label in CASES:
            entry = data["cases"][case]
            table = cost_table.markdown_table(entry.get("cost_rows") or [])
            if not table:
                continue
            out += ["", f"Cost per step, {n} host(s), {label} (folded over hosts as the "
                        f"column says, median over {entry['runs']} run(s)); "
                        f"{cost_table.run_cost_line(entry.get('run_cost') or {})}:", "", *table]
    if out:
        out[:0] = ["", "Where the cost goes, per step (deploytools' `--json` report, "
                       "`hosts[i].cost`; n/a: not reported):"]
    return out


def _profile_lines(summary: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for n, data in summary.items():
        for case, label in CASES:
            for found in data["cases"][case].get("profiles") or []:
                lines += profiles.markdown_lines(f"{n} host(s), {label}", Path(found["dir"]),
                                                 found["written"])
    return ["", "Profiles (`--profile`: the first fresh deploy per fleet ran under cProfile, "
                "so its numbers in the tables above include the profiler's overhead; top "
                f"{profiles.TOP_FUNCTIONS} functions by cumulative time in each .txt):", "",
            *lines] if lines else []


def markdown(summary: dict[str, Any], meta: dict[str, Any],
             scale: list[dict[str, Any]] | None) -> str:
    """The human summary: one table of medians (min–max), one of ratios, the cost per
    step, the scale run."""
    fleets = meta.get("fleets") or {}
    out = [
        "# deploytools benchmark",
        "",
        f"{meta['started_at']} · {meta['machine']} · {meta['cpus']} CPUs · "
        f"Python {meta['python']} · {meta['ssh']}",
        f"App: {meta['app_files']} files, {meta['app_bytes'] / 1e6:.1f} MB "
        f"(`--modules {meta['modules']}`), {meta['repeat']} repetition(s) · "
        f"deploytools `--json`: {'yes' if meta['features']['json_report'] else 'no'}, "
        f"`--skip-unchanged`: {'yes' if meta['features']['skip_unchanged'] else 'no'}",
        *([f"Inventory: `{meta['inventory']}` (group `{meta['group']}`)"]
          if meta.get("inventory") else []),
        *[f"Fleet: {fleet_line(settings)}" for settings in fleets.values()],
        "",
        "Median (min–max) over repetitions. Host CPU is approximate: whole-machine busy "
        "time (/proc/stat) minus controller CPU, so it includes any other load on the "
        "machine. Bytes are SSH payload bytes, not wire bytes.",
        "",
        "| hosts | case | runs | " + " | ".join(m[1] for m in METRICS) + " | verify |",
        "| ---: | --- | ---: | " + " | ".join("---:" for _ in METRICS) + " | --- |",
    ]
    for n, data in summary.items():
        for case, label in CASES:
            entry = data["cases"][case]
            if not entry["available"]:
                cells = ["not available"] + [""] * len(METRICS)
            else:
                cells = [str(entry["runs"]) + (f" ({entry['failed']} FAILED)"
                                               if entry["failed"] else "")]
                cells += [_cell(entry[key], scale_, fmt) for key, _t, scale_, fmt in METRICS]
            verify = (f"{entry['verify_passed']}/{entry['verified']} passed"
                      if entry["verified"] else "—")
            out.append(f"| {n} | {label} | " + " | ".join(cells) + f" | {verify} |")
    out += [
        "",
        "Wall-time ratios (medians):",
        "",
        "| hosts | fresh: deploytools / openssh | one-change: deploytools / openssh "
        "| deploytools one-change / fresh | deploytools skip-unchanged / fresh |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, data in summary.items():
        r = data["ratios"]
        out.append(f"| {n} | {_ratio_cell(r['fresh_dt_over_baseline'])} | "
                   f"{_ratio_cell(r['one_change_dt_over_baseline'])} | "
                   f"{_ratio_cell(r['dt_one_change_over_fresh'])} | "
                   f"{_ratio_cell(r['dt_skip_unchanged_over_fresh'])} |")
    phase_rows = [(n, label, data["cases"][case]["phases"], data["cases"][case]["wall_s"])
                  for n, data in summary.items()
                  for case, label in CASES if case in ("dt_fresh", "dt_one_change")
                  if data["cases"][case].get("phases")]
    if phase_rows:
        out += [
            "",
            "Where deploytools spends its time: seconds since start (median) at which the "
            "last host printed each phase's progress line; `exit` is the wall time.",
            "",
            "| hosts | case | " + " | ".join(c.replace("_", " ") for c in PHASE_COLUMNS)
            + " | exit |",
            "| ---: | --- | " + " | ".join("---:" for _ in PHASE_COLUMNS) + " | ---: |",
        ]
        for n, label, phases, wall in phase_rows:
            cells = [f"{phases[c]:.2f}" if c in phases else "—" for c in PHASE_COLUMNS]
            end = f"{wall['median']:.2f}" if wall else "—"
            out.append(f"| {n} | {label} | " + " | ".join(cells) + f" | {end} |")
        reported = [(n, label, data["cases"][case]["report_phases"])
                    for n, data in summary.items()
                    for case, label in CASES if case.startswith("dt_")
                    if data["cases"][case].get("report_phases")]
        names = sorted({k for _, _, phases in reported for k in phases})
        if reported:
            out += [
                "",
                "Phase durations from deploytools' own `--json` report (seconds, slowest "
                "host, median over repetitions):",
                "",
                "| hosts | case | " + " | ".join(names) + " |",
                "| ---: | --- | " + " | ".join("---:" for _ in names) + " |",
            ]
            for n, label, phases in reported:
                cells = [f"{phases[k]:.2f}" if k in phases else "—" for k in names]
                out.append(f"| {n} | {label} | " + " | ".join(cells) + " |")
    out += _cost_sections(summary)
    out += _profile_lines(summary)
    if scale:
        out += ["", "Scale: one fresh deploy of the tiny app (`extra_modules=0`) to N idle "
                    "hosts (an sshd and a supervisord each, no app server, no health check):",
                "", "| hosts | wall s | controller CPU ms/host | controller peak RSS MB "
                "| host CPU s (approx.) | verify |", "| ---: | ---: | ---: | ---: | ---: | --- |"]
        for run in scale:
            if run.get("ok"):
                out.append(f"| {run['hosts']} | {run['wall_s']:.2f} | "
                           f"{run['controller_cpu_ms_per_host']:.1f} | "
                           f"{run['peak_rss_mb']:.1f} | {run['host_cpu_s']:.2f} | "
                           f"{'passed' if run['verify_passed'] else 'FAILED'} |")
            else:
                out.append(f"| {run['hosts']} | FAILED: {one_line(run.get('error'))} | | | | |")
    failures = meta.get("failures") or []
    if failures:
        out += ["", f"**{len(failures)} case(s) FAILED** (details in results.json):", ""]
        out += [f"* {f}" for f in failures]
    if not meta.get("complete", True):
        out += ["", "**Incomplete run** (interrupted or aborted): partial results."]
    return "\n".join(out) + "\n"


# =========================================================================== main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark deploytools against a hand-written OpenSSH deploy on a local "
                    "simulated fleet (see the module docstring).")
    parser.add_argument("--hosts", help="comma-separated fleet sizes (default 1,4,16)")
    parser.add_argument("--repeat", type=int, help="repetitions per case (default 3)")
    parser.add_argument("--modules", type=int,
                        help="sample app filler modules, padded to ~10 KB each (default 2000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="directory for results.md and results.json")
    parser.add_argument("--scale",
                        help="comma-separated host counts for the tiny-app scale runs "
                             "(default 16,200; 0 skips)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: hosts 1,4; repeat 1; modules 200; scale 0")
    parser.add_argument("--inventory", type=Path,
                        help="benchmark this existing fleet (a deploytools inventory) over "
                             "SSH instead of starting sandbox fleets")
    parser.add_argument("--group", default="prod",
                        help="with --inventory: the group to deploy to (default prod)")
    parser.add_argument("--repo", type=Path,
                        help="with --inventory: a new or empty directory for the sample app's "
                             "repository (default: a temporary one)")
    parser.add_argument("--settle", type=float, default=SETTLE["limit_s"],
                        help="before each case, wait up to this many seconds for the machine "
                             "to be quiet (below 10%% busy), so that no case pays for the tail "
                             "of the one before (default 20; 0 does not wait)")
    parser.add_argument("--profile", action="store_true",
                        help=f"set {PROFILE_ENV}=OUT/profile/nN for the first fresh deploy per "
                             "fleet and summarise the profiles it writes")
    args = parser.parse_args(argv)
    try:
        args.scale_sizes = [int(x) for x in str(args.scale or "0").split(",") if x.strip()]
    except ValueError:
        parser.error(f"--scale must be comma-separated integers, got {args.scale!r}")
    if args.repeat is not None and args.repeat < 1 or \
            (args.modules is not None and args.modules < 0) or \
            any(v < 0 for v in args.scale_sizes):
        parser.error("--repeat must be >= 1, --modules and --scale >= 0")
    if args.inventory is not None:
        if args.hosts is not None:
            parser.error("--hosts is meaningless with --inventory (the group is the fleet)")
        if any(args.scale_sizes):
            parser.error("--scale starts a sandbox fleet: not with --inventory")
        args.inventory = args.inventory.resolve()
    elif args.repo is not None or args.group != "prod":
        parser.error("--repo and --group need --inventory")
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK[key] if args.quick else default)
    args.scale_sizes = [int(x) for x in str(args.scale).split(",") if x.strip() and int(x)]
    if args.inventory is not None:
        args.sizes, args.scale_sizes = [], []  # the size is the group's, known once read
        return args
    try:
        args.sizes = [int(x) for x in str(args.hosts).split(",") if x.strip()]
    except ValueError:
        parser.error(f"--hosts must be comma-separated integers, got {args.hosts!r}")
    if not args.sizes or any(n < 1 for n in args.sizes):
        parser.error("--hosts needs at least one size >= 1")
    return args


def _tool_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return (done.stdout + done.stderr).strip().splitlines()[0] if done.stdout + done.stderr \
        else "?"


def one_line(text: str | None, limit: int = 300) -> str:
    """An error as one Markdown-safe line: its first and last lines, shortened."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return "?"
    joined = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
    return (joined[: limit - 1] + "…" if len(joined) > limit else joined).replace("|", "\\|")


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # same clean-up path as Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    SETTLE["limit_s"] = args.settle
    signal.signal(signal.SIGTERM, _on_sigterm)
    features = Features.detect()
    meta: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": platform.platform(terse=True),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "ssh": _tool_version(["ssh", "-V"]),
        "command": [sys.executable, *sys.argv],
        "sizes": args.sizes, "repeat": args.repeat, "modules": args.modules,
        "scale_hosts": args.scale_sizes, "pad_factor": PAD_FACTOR,
        "inventory": str(args.inventory) if args.inventory else None, "group": args.group,
        "features": {"json_report": features.json_report,
                     "skip_unchanged": features.skip_unchanged},
        "host_cpu_note": "approximation: whole-machine busy CPU from /proc/stat minus "
                         "controller CPU; includes any unrelated load on the machine",
        "complete": False,
    }
    log(f"deploytools --json: {features.json_report}, --skip-unchanged: "
        f"{features.skip_unchanged}")
    records: list[dict[str, Any]] = []
    scale: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="dt-bench-"))
    repo_path = (args.repo or workdir / "app").resolve()
    began = time.monotonic()
    code = 0
    try:
        probe = SampleRepo.create(workdir / "app-size", args.modules)
        probe.commit_version("size-probe")
        meta["app_bytes"], meta["app_files"] = probe.archive_size()
        shutil.rmtree(probe.path)
        log(f"sample app: {meta['app_files']} files, {meta['app_bytes'] / 1e6:.1f} MB "
            f"(git archive)")
        if args.inventory:
            hosts = SshHosts.load(write_inventory_copy(
                args.inventory, args.group, repo_path, workdir / "inventory.yaml"), args.group)
            args.sizes = meta["sizes"] = [len(hosts.names)]
            repo = SampleRepo.create(repo_path, args.modules)
            run_inventory(hosts, repo, args, features, workdir, records, meta)
        else:
            for n in args.sizes:
                run_fleet_size(n, args, features, workdir, records, meta)
        for count in args.scale_sizes:
            scale.append(run_scale(count, features, workdir))
        meta["complete"] = True
    except KeyboardInterrupt:
        log("interrupted: stopping everything we started")
        code = 130
    except (HostsError, ConfigError) as exc:
        print(f"\n!!! FLEET FAILED: {exc}\n", file=sys.stderr, flush=True)
        meta["fleet_error"] = str(exc)
        code = 1
    finally:
        kill_live_processes()
        meta["duration_s"] = round(time.monotonic() - began, 1)
        failures = [f"{r['n']} hosts, {r['label']}, rep {r['rep']}: {one_line(r['error'])}"
                    for r in records if not r["ok"]]
        if meta.get("fleet_error"):
            failures.append(f"fleet: {one_line(meta['fleet_error'])}")
        failures += [f"scale {run['hosts']} hosts: {run.get('error')}"
                     for run in scale if not run.get("ok")]
        meta["failures"] = failures
        meta.setdefault("app_bytes", 0)
        meta.setdefault("app_files", 0)
        summary = summarize(records, args.sizes)
        text = markdown(summary, meta, scale)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(text, encoding="utf-8")
        (args.out / "results.json").write_text(json.dumps(
            {"meta": meta, "summary": summary, "scale": scale, "records": records},
            indent=1, default=str), encoding="utf-8")
        shutil.rmtree(workdir, ignore_errors=True)
        print(text)
        log(f"done in {meta['duration_s']:.0f}s; wrote {args.out / 'results.md'} and "
            f"{args.out / 'results.json'}")
        if failures and code == 0:
            code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
