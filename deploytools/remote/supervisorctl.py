"""Drive supervisord through the `supervisorctl` command, usually via `sudo` (stdlib only).

Why: on Debian the supervisord socket is root-only (`chmod=0700`) and a least-privilege
deploy user may run only `sudo supervisorctl`. XML-RPC (remote/supervisor.py) is still
preferred wherever the socket is reachable; this client has the same interface, so the
agent and verify do not care which one :func:`supervisor.connect` gave them.

States are never taken from supervisorctl's exit codes, which mislead (`start` exits 7
while supervisord keeps retrying, `status` exits 3 when any program is stopped): every
wait parses `status` output, and stopped/started processes are confirmed in /proc.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from typing import Any, Dict, List, Optional, Tuple

from deploytools.remote.supervisor import (
    RUNNING,
    START_FAILED_STATES,
    STOPPED_STATES,
    StateWaits,
    SupervisorError,
    expand_names,
)

KNOWN_STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL",
                "UNKNOWN")
POLL = 0.1  # each supervisorctl call costs ~100 ms already


def parse_status(text: str) -> Tuple[List[Dict[str, Any]], List[str]]:
    """`supervisorctl status` lines -> process infos shaped like XML-RPC's
    getProcessInfo (group, name, statename, pid, description), plus unparsed lines."""
    infos: List[Dict[str, Any]] = []
    noise: List[str] = []
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 2 or parts[1] not in KNOWN_STATES:
            if line.strip():
                noise.append(line.strip())
            continue
        full, state = parts[0], parts[1]
        description = parts[2].strip() if len(parts) > 2 else ""
        group, _, name = full.partition(":")
        pid = 0
        if state == RUNNING and description.startswith("pid "):
            try:
                pid = int(description[4:].split(",", 1)[0])
            except ValueError:
                pid = 0
        infos.append({"group": group, "name": name or group, "statename": state, "pid": pid,
                      "description": description, "spawnerr": ""})
    return infos, noise


def pid_alive(pid: int) -> bool:
    """Whether /proc shows `pid` as a live process (a zombie counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


class SupervisorCtl(StateWaits):
    """supervisord through a `supervisorctl` command line (e.g. `sudo -n supervisorctl
    -c /etc/supervisor/supervisord.conf`)."""

    poll = POLL

    def __init__(self, argv: List[str], timeout: float = 30.0) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        self.url = " ".join(shlex.quote(a) for a in self.argv)

    def run(self, *args: str, timeout: Optional[float] = None) -> str:
        """Run one supervisorctl action; its output, whatever the exit code (which
        misleads): callers judge by parsing the text."""
        command = self.argv + list(args)
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            raise SupervisorError("%s %s took more than %.0fs"
                                  % (self.url, " ".join(args), timeout or self.timeout)) from None
        except OSError as exc:
            raise SupervisorError("cannot run %s: %s" % (self.url, exc)) from exc
        text = done.stdout.decode("utf-8", "replace")
        if self.argv[0].endswith("sudo") and done.returncode == 1 and text.startswith("sudo:"):
            raise SupervisorError("sudo refused %s: %s" % (self.url, text.strip()[:300]))
        return text

    def all_info(self) -> List[Dict[str, Any]]:
        infos, noise = parse_status(self.run("status"))
        if not infos and noise:
            raise SupervisorError("supervisord via %s is not reachable: %s"
                                  % (self.url, noise[0][:300]))
        return infos

    def ping(self) -> str:
        self.all_info()
        return RUNNING

    def pid(self) -> int:
        """supervisord's own pid (a child that has only forked still looks like it)."""
        text = self.run("pid").strip()
        if not text.isdigit():
            raise SupervisorError("supervisord via %s gave no pid: %s" % (self.url, text[:300]))
        return int(text)

    def expand(self, programs: List[str]) -> List[str]:
        """The same matching as Supervisor.expand (`web`, `web:*`, `web:web_0`)."""
        return expand_names(self.all_info(), programs)

    def info(self, name: str) -> Dict[str, Any]:
        infos = self.by_name()
        if name not in infos:
            raise SupervisorError("supervisor program %r is not defined" % name)
        return infos[name]

    def stop_all(self, names: List[str], timeout: float) -> None:
        """Stop all at once, then confirm from `status` and from /proc that the old
        pids are gone (`stop` ending in SIGKILL exits 0, so its code proves nothing)."""
        before = self.by_name()
        old = [before[n]["pid"] for n in names if n in before and before[n]["pid"]]
        self.run("stop", *names, timeout=timeout + 15)
        self.wait_states(names, STOPPED_STATES, timeout)
        deadline = time.time() + timeout
        while any(pid_alive(p) for p in old):
            if time.time() >= deadline:
                raise SupervisorError("pids %s still alive after stop"
                                      % [p for p in old if pid_alive(p)])
            time.sleep(0.02)

    def start_all(self, names: List[str], timeout: float) -> Dict[str, Dict[str, Any]]:
        """Start all, then wait for RUNNING in `status` and a live pid in /proc."""
        self.run("start", *names, timeout=timeout + 15)
        infos = self.wait_states(names, (RUNNING,), timeout, failed=START_FAILED_STATES)
        for name, info in infos.items():
            if not info["pid"] or not pid_alive(info["pid"]):
                raise SupervisorError("%s is RUNNING for supervisord but pid %s is not alive"
                                      % (name, info["pid"]))
        return infos

    def stderr_tail(self, name: str) -> str:
        try:
            text = self.run("tail", "-4000", name, "stderr", timeout=10)
        except SupervisorError:
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""


def command_argv(settings: Dict[str, Any]) -> List[str]:
    """The configured supervisorctl command (default: `supervisorctl` on PATH), with
    `-c conf` added when the inventory names a config and the command does not."""
    argv = shlex.split(settings.get("supervisorctl") or "supervisorctl")
    has_target = any(a in ("-c", "--configuration", "-s", "--serverurl") for a in argv)
    if settings.get("conf") and not has_target:
        argv += ["-c", settings["conf"]]
    return argv


def uses_sudo(settings: Dict[str, Any]) -> bool:
    """Whether the inventory's supervisorctl command is itself run through sudo."""
    command = settings.get("supervisorctl") or ""
    return bool(command) and os.path.basename(shlex.split(command)[0]) == "sudo"


def sudo_allowed(argv: List[str]) -> bool:
    """Whether `sudo -n -l` lists a rule for exactly this supervisorctl command (asked
    without running it, and never prompting)."""
    try:
        done = subprocess.run(["sudo", "-n", "-l"] + argv + ["status"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0
