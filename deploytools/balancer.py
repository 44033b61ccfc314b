"""Built-in HAProxy drain: each host leaves rotation before its restart and rejoins after.

Why here and not in a hook: a drain must be per host, inside its batch (a fleet-wide
`before_switch` hook drains everything before the first batch), must wait for the
balancer itself (sessions gone, server UP again), and must never leave a server
drained when the run ends badly. The order for one host of a batch:

    set server B/S state drain -> wait scur == 0 (drain_timeout)
    -> [one agent request: switch, stop -> start -> health; rollback on failure]
    -> set server B/S state ready -> wait until HAProxy reports it UP (ready_timeout)

The drain happens on the controller just before the activation request, i.e. just
before the symlink switch rather than just after it. That is equivalent (the switch
changes nothing a running process serves) and keeps the activation one round trip,
so a lost controller still cannot leave a host switched but unchecked.

Command builders and the `show stat` parser are pure functions (unit-tested); the
runtime API is reached directly (unix socket or host:port) or, with `via`, through an
inventory host's SSH connection, by a Python one-liner run there.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shlex
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import paramiko

from deploytools.console import Console
from deploytools.errors import ConfigError, DeployToolsError
from deploytools.hoststate import HostRun
from deploytools.inventory import Host

DEFAULT_DRAIN_TIMEOUT = 30.0
DEFAULT_READY_TIMEOUT = 30.0
POLL_INTERVAL = 0.1
SOCKET_TIMEOUT = 10.0
CHANNEL_OPEN_TIMEOUT = 5.0  # sshd answers a channel open in milliseconds
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")  # HAProxy proxy/server names; no spaces or ';'


class BalancerError(DeployToolsError):
    """The balancer could not be asked or told something (one clear line)."""


# --------------------------------------------------------------------------- pure commands


def checked_name(value: str, what: str) -> str:
    """A backend or server name fit for a runtime API line (no spaces, ';' or newlines)."""
    if not _NAME_RE.match(value or ""):
        raise ConfigError(f"balancer.haproxy.{what}: {value!r} is not a valid HAProxy name "
                          "(letters, digits, '_', '.', ':', '-')")
    return value


def set_state_command(backend: str, server: str, state: str) -> str:
    """`set server B/S state drain|ready|maint`."""
    if state not in ("drain", "ready", "maint"):
        raise ValueError(f"unknown server state {state!r}")
    return f"set server {checked_name(backend, 'backend')}/{checked_name(server, 'server')} " \
           f"state {state}"


def show_stat_command() -> str:
    """`show stat` (CSV, one row per frontend/backend/server)."""
    return "show stat"


@dataclass(frozen=True)
class ServerStat:
    """One server row of `show stat`: its current sessions and status."""

    backend: str
    server: str
    scur: int
    status: str  # UP, DOWN, DRAIN, MAINT, "no check", "UP 1/2", ...

    @property
    def in_rotation(self) -> bool:
        """Receives new traffic: UP (or no health check) and neither drained nor in maint."""
        return self.status.startswith("UP") or self.status == "no check"

    @property
    def up(self) -> bool:
        """Fully UP: not "UP 1/3" (a check failed during the restart, going down)."""
        return self.status in ("UP", "no check")


def parse_show_stat(text: str) -> dict[tuple[str, str], ServerStat]:
    """Server rows of `show stat` CSV by (backend, server); frontends/backends skipped."""
    text = text.lstrip()
    if not text.startswith("# "):
        raise BalancerError("haproxy", f"unexpected answer to 'show stat': {text[:80]!r}")
    rows = csv.DictReader(io.StringIO(text[2:]))
    out: dict[tuple[str, str], ServerStat] = {}
    for row in rows:
        name = row.get("svname") or ""
        if name in ("FRONTEND", "BACKEND", ""):
            continue
        out[(row["pxname"], name)] = ServerStat(row["pxname"], name, int(row.get("scur") or 0),
                                                row.get("status") or "")
    return out


def expand(template: str, values: dict[str, str]) -> str:
    """Fill {name}, {host}, ... in a server name template."""
    out = template
    for key, value in values.items():
        out = out.replace("{" + key + "}", value)
    return out


def refuse_full_drain(batches: Sequence[Sequence[tuple[str, str]]],
                      stats: dict[tuple[str, str], ServerStat]) -> str | None:
    """Why a batch would take every in-rotation server of a backend out at once, or None."""
    for number, batch in enumerate(batches, 1):
        for backend in sorted({b for b, _ in batch}):
            serving = {s for (b, s), st in stats.items() if b == backend and st.in_rotation}
            leaving = {s for b, s in batch if b == backend}
            if serving and serving <= leaving:
                return (f"batch {number} would take every UP server of backend {backend} "
                        f"out of rotation at once ({', '.join(sorted(leaving))}); nothing was "
                        "changed: deploy in smaller batches (e.g. --serial 1)")
    return None


# --------------------------------------------------------------------------- runtime API


class Runtime(Protocol):
    def send(self, command: str) -> str: ...


_REMOTE_CLIENT = (
    "import os,socket,sys\n"
    "a=os.path.expanduser(sys.argv[1])\n"
    "if a.startswith('/'):\n"
    " s=socket.socket(socket.AF_UNIX);s.settimeout(10);s.connect(a)\n"
    "else:\n"
    " h,p=a.rsplit(':',1);s=socket.create_connection((h.strip('[]'),int(p)),10)\n"
    "s.sendall(sys.argv[2].encode()+b'\\n');b=[]\n"
    "while 1:\n"
    " d=s.recv(65536)\n"
    " if not d:break\n"
    " b.append(d)\n"
    "sys.stdout.write(b''.join(b).decode('utf-8','replace'))\n"
)


def remote_client_command(python: str, address: str, command: str) -> str:
    """The shell command that asks the runtime API from another host (every part quoted)."""
    return " ".join(shlex.quote(p) for p in (python, "-S", "-c", _REMOTE_CLIENT, address,
                                             command))


def ask_socket(address: str, command: str, timeout: float = SOCKET_TIMEOUT) -> str:
    """One command on a fresh connection (HAProxy answers and closes: non-interactive)."""
    path = os.path.expanduser(address)
    if path.startswith("/"):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(timeout)
        target: Any = path
    else:
        host, _, port = address.rpartition(":")
        sock = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET)
        sock.settimeout(timeout)
        target = (host.strip("[]"), int(port))
    with sock:
        sock.connect(target)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


@dataclass
class LocalRuntime:
    """The runtime API reached from the controller."""

    address: str

    def send(self, command: str) -> str:
        try:
            return ask_socket(self.address, command)
        except (OSError, ValueError) as exc:
            raise BalancerError("haproxy", f"runtime API {self.address} does not answer: "
                                           f"{exc}") from None


@dataclass
class ViaRuntime:
    """The runtime API reached over an inventory host's (host-key verified) SSH connection.

    A channel that does not open (the connection went stale, or sshd did not answer in
    CHANNEL_OPEN_TIMEOUT) is retried once on a fresh connection: the command has not run
    then, and every command sent is idempotent (a state, or `show stat`)."""

    address: str
    host: Host
    connection: Callable[[bool], Any]  # (fresh) -> fabric.Connection
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, command: str) -> str:
        line = remote_client_command(self.host.python, self.address, command)
        where = f"runtime API {self.address} via {self.host.name}"
        with self._lock:
            try:
                with self._open_channel() as channel:  # closed however the command ends
                    channel.settimeout(SOCKET_TIMEOUT + 5)
                    channel.exec_command(line)
                    out = channel.makefile("rb").read().decode("utf-8", "replace")
                    status = channel.recv_exit_status()
                    err = channel.makefile_stderr("rb").read().decode("utf-8", "replace")
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise BalancerError(self.host.name, f"{where}: {exc}") from None
        if status != 0:
            lines = err.strip().splitlines()
            raise BalancerError(self.host.name, f"{where} does not answer: "
                                                f"{lines[-1] if lines else f'exit {status}'}")
        return out

    def _open_channel(self) -> paramiko.Channel:
        try:
            return _session_on(self.connection(False))
        except (OSError, EOFError, paramiko.SSHException):
            return _session_on(self.connection(True))


def _session_on(conn: Any) -> paramiko.Channel:
    transport = conn.client.get_transport()
    if transport is None or not transport.is_active():
        raise paramiko.SSHException("SSH connection lost")
    return transport.open_session(timeout=CHANNEL_OPEN_TIMEOUT)


# --------------------------------------------------------------------------- the drain


@dataclass
class Target:
    """Where one host sits in the balancer."""

    runtime_key: tuple[str, str | None]
    backend: str
    server: str
    drain_timeout: float
    ready_timeout: float


@dataclass
class Availability:
    """What the report says about one host's time out of service."""

    left_at: float | None = None  # monotonic: drain requested
    rejoined_at: float | None = None  # monotonic: HAProxy reported it UP again
    unavailable: float | None = None  # stop requested -> healthy (host's clock)
    actions: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = None
        if self.left_at is not None:
            out = round((self.rejoined_at or time.monotonic()) - self.left_at, 3)
        return {"out_of_rotation_seconds": out,
                "unavailable_seconds": None if self.unavailable is None
                else round(self.unavailable, 3),
                "balancer_actions": self.actions}


def unavailable_seconds(result: dict[str, Any]) -> float | None:
    """Stop requested -> healthy, from the agent's activation result (rollback included)."""
    attempt = result.get("attempt") or {}
    start = attempt.get("restart_started")
    end = attempt.get("healthy_at") or (result.get("rollback") or {}).get("healthy_at")
    if start is None:
        return None
    return max(0.0, (end or time.time()) - start)


class Balancer:
    """The HAProxy drain for one run: preflight, drain/ready per host, and restore."""

    def __init__(self, runs: Sequence[HostRun], console: Console,
                 inventory_hosts: dict[str, Host] | None = None) -> None:
        self.console = console
        self.targets: dict[str, Target] = {}
        self.runtimes: dict[tuple[str, str | None], Runtime] = {}
        self._own: list[Any] = []  # HostConnections opened for `via` hosts not in the run
        self._drained: set[str] = set()  # host names we took out and have not put back
        self._by_name = {r.name: r for r in runs}
        self._inventory = inventory_hosts or {}
        for run in runs:
            target = self._target(run)
            if target is not None:
                self.targets[run.name] = target

    @staticmethod
    def configured(runs: Sequence[HostRun]) -> bool:
        return any(r.host.get("balancer.haproxy") for r in runs)

    def _target(self, run: HostRun) -> Target | None:
        spec = run.host.get("balancer.haproxy")
        if not spec:
            return None
        where = f"{run.name}: balancer.haproxy"
        for key in ("socket", "backend", "server"):
            if not spec.get(key):
                raise ConfigError(f"{where}.{key} is required")
        via = spec.get("via")
        if via and via not in self._inventory and via not in self._by_name:
            raise ConfigError(f"{where}.via: {via!r} is not a host of the inventory")
        values = {"name": run.name, "host": run.host.address}
        settings = run.host.settings["balancer"]
        return Target((spec["socket"], via), checked_name(spec["backend"], "backend"),
                      checked_name(expand(spec["server"], values), "server"),
                      float(settings.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT)),
                      float(settings.get("ready_timeout", DEFAULT_READY_TIMEOUT)))

    # ---------------------------------------------------------------- connections

    def runtime(self, key: tuple[str, str | None]) -> Runtime:
        if key not in self.runtimes:
            address, via = key
            self.runtimes[key] = LocalRuntime(address) if not via else \
                ViaRuntime(address, self._via_host(via),
                           lambda fresh: self._via_connection(via, fresh))
        return self.runtimes[key]

    def _via_host(self, name: str) -> Host:
        run = self._by_name.get(name)
        return run.host if run is not None else self._inventory[name]

    def _via_connection(self, name: str, fresh: bool = False) -> Any:
        """The via host's connection: its run connection when it is deployed too, else
        one of our own; `fresh` replaces our own with a new one (never the run's: its
        agent session lives on it)."""
        from deploytools.transport import HostConnection

        run = self._by_name.get(name)
        if not fresh and run is not None and run.conn is not None and \
                run.conn.fabric is not None:
            return run.conn.fabric
        for conn in list(self._own):
            if conn.host.name == name:
                if not fresh:
                    return conn.fabric
                self._own.remove(conn)
                conn.close()
        conn = HostConnection(self._via_host(name))
        conn.open()
        self._own.append(conn)
        return conn.fabric

    def close(self) -> None:
        for conn in self._own:
            conn.close()
        self._own.clear()

    def stats(self, key: tuple[str, str | None]) -> dict[tuple[str, str], ServerStat]:
        return parse_show_stat(self.runtime(key).send(show_stat_command()))

    def stat(self, target: Target) -> ServerStat | None:
        return self.stats(target.runtime_key).get((target.backend, target.server))

    # ---------------------------------------------------------------- preflight

    def preflight(self, runs: Sequence[HostRun], plan: Sequence[Sequence[HostRun]]) -> None:
        """Every runtime answers, every host's server exists, no batch empties a backend.
        Raises ConfigError (nothing has changed yet)."""
        by_key: dict[tuple[str, str | None], dict[tuple[str, str], ServerStat]] = {}
        for run in runs:
            target = self.targets.get(run.name)
            if target is None:
                continue
            key = target.runtime_key
            if key not in by_key:
                try:
                    by_key[key] = self.stats(key)
                except BalancerError as exc:
                    raise ConfigError(f"balancer preflight: {exc}") from None
            if (target.backend, target.server) not in by_key[key]:
                known = sorted(s for b, s in by_key[key] if b == target.backend)
                raise ConfigError(f"balancer preflight: {run.name}: no server "
                                  f"{target.backend}/{target.server} in HAProxy at {key[0]} "
                                  f"(servers there: {', '.join(known) or 'none'})")
        for key, stats in by_key.items():
            grouped = [[(self.targets[r.name].backend, self.targets[r.name].server)
                        for r in batch if r.name in self.targets
                        and self.targets[r.name].runtime_key == key] for batch in plan]
            why = refuse_full_drain(grouped, stats)
            if why:
                raise ConfigError(f"balancer: {why}")

    # ---------------------------------------------------------------- drain and ready

    def _record(self, run: HostRun, action: str, **extra: Any) -> None:
        availability(run).actions.append({"action": action, "at": round(time.time(), 3),
                                          **extra})

    def drain(self, run: HostRun) -> None:
        """Take the host out of rotation and wait for its sessions to end."""
        target = self.targets[run.name]
        runtime = self.runtime(target.runtime_key)
        self._drained.add(run.name)
        availability(run).left_at = time.monotonic()
        self._expect_empty(runtime.send(set_state_command(target.backend, target.server,
                                                          "drain")), run)
        started = time.monotonic()
        stat = self.stat(target)
        while stat is not None and stat.scur > 0 and \
                time.monotonic() - started < target.drain_timeout:
            time.sleep(POLL_INTERVAL)
            stat = self.stat(target)
        waited = round(time.monotonic() - started, 3)
        left = stat.scur if stat else 0
        self._record(run, "drain", server=f"{target.backend}/{target.server}",
                     waited=waited, sessions_left=left)
        if left:
            self.console.host(run.name, f"drain_timeout {target.drain_timeout:g}s passed with "
                                        f"{left} session(s) still open; restarting anyway")
        else:
            self.console.host(run.name, f"drained {target.backend}/{target.server} "
                                        f"in {waited:.2f}s")

    def ready(self, run: HostRun) -> None:
        """Put the host back in rotation and wait until HAProxy reports it UP."""
        target = self.targets[run.name]
        runtime = self.runtime(target.runtime_key)
        self._expect_empty(runtime.send(set_state_command(target.backend, target.server,
                                                          "ready")), run)
        self._drained.discard(run.name)
        started = time.monotonic()
        stat = self.stat(target)
        while (stat is None or not stat.up) and \
                time.monotonic() - started < target.ready_timeout:
            time.sleep(POLL_INTERVAL)
            stat = self.stat(target)
        waited = round(time.monotonic() - started, 3)
        status = stat.status if stat else "missing"
        self._record(run, "ready", server=f"{target.backend}/{target.server}", waited=waited,
                     status=status)
        if stat is not None and stat.up:
            availability(run).rejoined_at = time.monotonic()
            self.console.host(run.name, f"back in rotation: HAProxy reports {status} "
                                        f"after {waited:.2f}s")
        else:
            self.console.host(run.name, f"set ready, but HAProxy reports {status} after "
                                        f"ready_timeout {target.ready_timeout:g}s")

    def _expect_empty(self, answer: str, run: HostRun) -> None:
        """`set server` answers nothing on success, an explanation otherwise."""
        if answer.strip():
            raise BalancerError(run.name, f"HAProxy refused: {answer.strip()}")

    def restore(self) -> None:
        """Put back every server this run drained and did not return (errors, Ctrl-C)."""
        for name in sorted(self._drained):
            run = self._by_name[name]
            try:
                self.ready(run)
                self.console.host(name, "put back in rotation at the end of the run")
            except (DeployToolsError, OSError) as exc:
                self.console.error(f"{name}: could not put it back in rotation: {exc}; "
                                   f"run `set server {self.targets[name].backend}/"
                                   f"{self.targets[name].server} state ready` by hand")


def availability(run: HostRun) -> Availability:
    """The host's availability record (created on first use; the JSON report reads it)."""
    record = run.facts.get("availability")
    if not isinstance(record, Availability):
        record = run.facts["availability"] = Availability()
    return record


def activate_in_rotation(balancer: Balancer | None, run: HostRun,
                         activate: Callable[[], None], interrupted: Callable[[], bool]) -> None:
    """One host of a batch: drain, activate (switch, stop -> start -> health, rollback
    on failure, all on the host), then back in rotation once healthy on some release.

    Interrupted while draining: the host is put back without a restart. If it could not
    be made healthy on any release, it is put back all the same (a server must never be
    left drained); HAProxy's own checks then keep it out, and the error says so.
    """
    if balancer is None or run.name not in balancer.targets or run.dry_run:
        activate()
        return
    balancer.drain(run)
    if interrupted():
        balancer.ready(run)
        from deploytools.hoststate import SKIPPED

        run.fail(SKIPPED, "not switched: interrupted")
        return
    try:
        activate()
    except BaseException:
        with contextlib.suppress(DeployToolsError, OSError):  # else restore() retries
            balancer.ready(run)
        raise
    balancer.ready(run)
