"""Talk to supervisord over its XML-RPC interface, on the host (stdlib only).

Why not `supervisorctl`: its exit codes mislead (`start` exits 7 while supervisord
keeps retrying in BACKOFF, `status` exits 0 for BACKOFF, `stop` ending in SIGKILL
exits 0) and each call costs ~100 ms. XML-RPC over the unix socket answers in
under a millisecond and reports real states, pids and start times. The client is our
own (remote/xmlrpc_lite.py): xmlrpc.client's imports cost more than all its calls.

Restart is always stop -> wait stopped -> start -> wait running: supervisor's
`restart` keeps a process in the old directory when `current` has moved.
"""

from __future__ import annotations

import configparser
import os
import shlex
import time
from typing import Any, Dict, List, Optional, Tuple

from deploytools.remote.xmlrpc_lite import Fault, ResponseError, ServerProxy

RUNNING = "RUNNING"
STOPPED_STATES = ("STOPPED", "EXITED", "FATAL")
START_FAILED_STATES = ("BACKOFF", "STOPPED", "EXITED", "FATAL")  # left STARTING, not RUNNING
DEFAULT_CONFS = ("/etc/supervisor/supervisord.conf", "/etc/supervisord.conf",
                 "/etc/supervisor/supervisor.conf")


class SupervisorError(Exception):
    """supervisord could not be reached, or a program did not reach the wanted state."""


def resolve_server(settings: Dict[str, Any]) -> Tuple[str, Optional[str], Optional[str]]:
    """Find supervisord's server URL (and credentials) from the supervisor settings.

    Order: explicit `serverurl`; `-s`/`-c`/`-u`/`-p` in a `supervisorctl` command;
    the `[supervisorctl] serverurl` or `[unix_http_server] file` of `conf`; the
    distribution's default config files.
    """
    url = settings.get("serverurl")
    user = password = None
    conf = settings.get("conf")
    if settings.get("supervisorctl"):
        args = shlex.split(settings["supervisorctl"])
        for flag, value in zip(args, args[1:]):
            if flag in ("-c", "--configuration"):
                conf = value
            elif flag in ("-s", "--serverurl"):
                url = value
            elif flag in ("-u", "--username"):
                user = value
            elif flag in ("-p", "--password"):
                password = value
    if url:
        return url, user, password
    candidates = [conf] if conf else [c for c in DEFAULT_CONFS if os.path.exists(c)]
    for path in candidates:
        parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"))
        if not parser.read(path):
            raise SupervisorError("cannot read supervisor config %s" % path)
        here = os.path.dirname(os.path.abspath(path))
        if parser.has_option("supervisorctl", "serverurl"):
            url = parser.get("supervisorctl", "serverurl").replace("%(here)s", here)
        elif parser.has_option("unix_http_server", "file"):
            url = "unix://" + parser.get("unix_http_server", "file").replace("%(here)s", here)
        elif parser.has_option("inet_http_server", "port"):
            url = "http://" + parser.get("inet_http_server", "port")
        for section in ("supervisorctl", "unix_http_server", "inet_http_server"):
            if user is None and parser.has_option(section, "username"):
                user = parser.get(section, "username")
                password = parser.get(section, "password", fallback=None)
        if url:
            return url, user, password
    raise SupervisorError("no supervisord server found: set supervisor.conf or supervisor.serverurl"
                          " in the inventory")


def expand_names(infos: List[Dict[str, Any]], programs: List[str]) -> List[str]:
    """Configured names -> full process names (`group:name`), for either client.

    `web` matches a program or group named web; `web:*` a whole group; `web:web_0` one
    process. Unknown names are an error naming what exists."""
    full = ["%s:%s" % (i["group"], i["name"]) for i in infos]
    out: List[str] = []
    for entry in programs:
        group, _, name = entry.partition(":")
        matches = [f for f, i in zip(full, infos)
                   if i["group"] == group and (name in ("", "*") or i["name"] == name)]
        if not matches:
            known = ", ".join(sorted(set(i["group"] for i in infos))) or "none"
            raise SupervisorError("supervisor program %r is not defined (defined: %s)"
                                  % (entry, known))
        out.extend(m for m in matches if m not in out)
    return out


class StateWaits:
    """Waiting for states and explaining failures, the same for both clients (XML-RPC
    here, supervisorctl in remote/supervisorctl.py): they differ only in how they read
    process infos and the stderr tail."""

    poll = 0.05
    longest_pause = 0.25  # how late a process that dies while STARTING may be seen
    errors: Tuple[type, ...] = (SupervisorError,)  # what a failed lookup raises

    def startsecs(self, names: List[str]) -> float:
        """The shortest startsecs among `names`, when the client can tell (else 0)."""
        return 0.0

    def by_name(self) -> Dict[str, Dict[str, Any]]:
        return {"%s:%s" % (i["group"], i["name"]): i for i in self.all_info()}

    def all_info(self) -> List[Dict[str, Any]]:
        raise NotImplementedError

    def info(self, name: str) -> Dict[str, Any]:
        raise NotImplementedError

    def stderr_tail(self, name: str) -> str:
        raise NotImplementedError

    def wait_states(self, names: List[str], states: Tuple[str, ...], timeout: float,
                    failed: Tuple[str, ...] = (), quiet_until: float = 0.0
                    ) -> Dict[str, Dict[str, Any]]:
        """Poll (one call for all) until every process is in one of `states`; one in a
        `failed` state is an error. We poll rather than use supervisord's `wait=True`:
        supervisord notices that startsecs have passed only when its main loop wakes, up
        to a second late, and each poll wakes it. Before `quiet_until` (when the first
        process can be RUNNING at the earliest) and while all are STARTING, polls are
        `longest_pause` apart: each poll costs CPU on the host, ours and supervisord's."""
        deadline = time.time() + timeout
        while True:
            infos = self.by_name()
            missing = [n for n in names if n not in infos]
            if missing:
                raise SupervisorError("supervisor program %r is not defined" % missing[0])
            pending = [n for n in names if infos[n]["statename"] not in states]
            if not pending:
                return {n: infos[n] for n in names}
            for name in pending:
                if infos[name]["statename"] in failed:
                    raise SupervisorError(self.failure_reason(name))
            if time.time() >= deadline:
                info = infos[pending[0]]
                raise SupervisorError("%s is %s after %.0fs (wanted %s)%s" % (
                    pending[0], info["statename"], timeout, "/".join(states), self._why(info)))
            pause = self.poll
            if all(infos[n]["statename"] == "STARTING" for n in pending):
                pause = max(pause, min(quiet_until - self.poll - time.time(),
                                       self.longest_pause))
            time.sleep(pause)

    def failure_reason(self, name: str, fault: str = "") -> str:
        """supervisor's own words on why a program is not running, plus its last stderr line."""
        try:
            info = self.info(name)
            deadline = time.time() + 3
            while info["statename"] == "STARTING" and time.time() < deadline:
                time.sleep(self.poll)  # let supervisord settle on BACKOFF/FATAL/EXITED
                info = self.info(name)
        except self.errors:
            return "%s failed to start: %s" % (name, fault)
        return "%s failed to start (%s%s)%s" % (
            name, info["statename"], ", " + fault if fault else "", self._why(info))

    def _why(self, info: Dict[str, Any]) -> str:
        parts = []
        if info.get("spawnerr"):
            parts.append(info["spawnerr"])
        elif info.get("description") and info["statename"] != RUNNING:
            parts.append(info["description"])
        tail = self.stderr_tail("%s:%s" % (info["group"], info["name"]))
        if tail:
            parts.append("last stderr line: " + tail)
        return (": " + "; ".join(parts)) if parts else ""


class Supervisor(StateWaits):
    """A thin client for the calls a deploy needs."""

    errors = (Fault, SupervisorError)

    def __init__(self, settings: Dict[str, Any], timeout: float = 30.0) -> None:
        url, user, password = resolve_server(settings)
        self.url = url
        self.proxy = ServerProxy(url, user, password, timeout)

    def call(self, method: str, *args: Any) -> Any:
        """`supervisor.<method>(*args)`; a Fault passes through, anything else that goes
        wrong is a SupervisorError whose __cause__ is the OSError (connect() looks for a
        PermissionError there). The message never carries the password."""
        try:
            return self.proxy.call("supervisor." + method, *args)
        except (OSError, ResponseError) as exc:
            raise SupervisorError(
                "supervisord at %s is not reachable: %s" % (self.url, exc)) from exc

    def ping(self) -> str:
        return self.call("getState")["statename"]

    def pid(self) -> int:
        """supervisord's own pid: a child that has only forked still looks like it."""
        return int(self.call("getPID"))

    def all_info(self) -> List[Dict[str, Any]]:
        return self.call("getAllProcessInfo")

    def expand(self, programs: List[str]) -> List[str]:
        """Turn configured names into full process names (`group:name`).

        `web` matches a program or group named web; `web:*` a whole group;
        `web:web_0` one process. Unknown names are an error naming what exists.
        """
        return expand_names(self.all_info(), programs)

    def info(self, name: str) -> Dict[str, Any]:
        return self.call("getProcessInfo", name)

    def stop_all(self, names: List[str], timeout: float) -> None:
        """Ask every process to stop, then wait for all of them at once (programs with
        long stopwaitsecs stop side by side, not one after the other)."""
        for name in names:
            try:
                self.call("stopProcess", name, False)
            except Fault as fault:
                if "NOT_RUNNING" not in fault.faultString:
                    raise SupervisorError("stop %s failed: %s"
                                          % (name, fault.faultString)) from None
        self.wait_states(names, STOPPED_STATES, timeout)

    def startsecs(self, names: List[str]) -> float:
        try:
            configs = self.call("getAllConfigInfo")  # supervisor >= 3.1
        except (Fault, SupervisorError):
            return 0.0
        secs = [float(c.get("startsecs") or 0) for c in configs
                if "%s:%s" % (c.get("group"), c.get("name")) in names]
        return min(secs) if len(secs) == len(names) else 0.0

    def start_all(self, names: List[str], timeout: float) -> Dict[str, Dict[str, Any]]:
        """Start every process, then wait until supervisord calls each RUNNING (after its
        startsecs); a process that dies while starting is seen within longest_pause."""
        began = time.time()  # no process can be RUNNING before began + its startsecs
        for name in names:
            try:
                self.call("startProcess", name, False)
            except Fault as fault:
                if "ALREADY_STARTED" not in fault.faultString:
                    raise SupervisorError(self.failure_reason(name, fault.faultString)) from None
        return self.wait_states(names, (RUNNING,), timeout, failed=START_FAILED_STATES,
                                quiet_until=began + self.startsecs(names))

    def stderr_tail(self, name: str) -> str:
        try:
            text = self.call("tailProcessStderrLog", name, 0, 4000)[0]
        except (Fault, SupervisorError):
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""


def connect(settings: Dict[str, Any], timeout: float = 30.0) -> Any:
    """The supervisord client every caller uses: XML-RPC over the socket where the deploy
    user may use it; `supervisorctl` (remote/supervisorctl.py) when the inventory's
    `supervisor.supervisorctl` starts with sudo, or when the socket refuses us
    (PermissionError: root-only, as on Debian) and a sudo rule allows supervisorctl."""
    from deploytools.remote import supervisorctl  # here: it imports this module

    if supervisorctl.uses_sudo(settings):
        return supervisorctl.SupervisorCtl(supervisorctl.command_argv(settings), timeout)
    client = Supervisor(settings, timeout)
    try:
        client.ping()
    except SupervisorError as exc:
        if not isinstance(exc.__cause__, PermissionError):
            return client  # not reachable at all: the callers report that as before
        argv = ["sudo", "-n"] + supervisorctl.command_argv(settings)
        if not supervisorctl.sudo_allowed(argv[2:]):
            raise SupervisorError(
                "%s; no sudo rule lets this user run %s either (allow it in sudoers, set "
                "supervisor.supervisorctl: \"sudo -n supervisorctl -c CONF\", or become: true)"
                % (exc, " ".join(shlex.quote(a) for a in argv[2:]))) from None
        return supervisorctl.SupervisorCtl(argv, timeout)
    return client
