"""One SSH connection per host, and the agent call over it.

The connection is opened by deploytools/ssh.py (host keys verified, jump hosts
shared, failures explained). Remote work goes through the agent (`deploytools/remote`),
run by the host's own interpreter and cached there by digest. One agent process per
host serves every request of a run over one channel (a session): a phase is one round
trip on a warm process, not an `exec` and a Python start, and uploads stream over the
same channel.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shlex
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import paramiko
from fabric import Connection

from deploytools import access, profiling
from deploytools.costs import CostBook
from deploytools.errors import ConfigError, RemoteError, UnreachableError
from deploytools.inventory import Host
from deploytools.remote.protocol import Request
from deploytools.ssh import Held, connect, release_jumps

REMOTE_MODULES = (  # in load order: a module's imports come before it
    "protocol", "bytecode", "http_lite", "health", "releases", "intact", "processes",
    "locking", "xmlrpc_lite", "supervisor", "supervisorctl", "hooks", "build", "verify",
    "unpack", "cost", "agent",
)

AGENT_CACHE_MISS = 75  # the bootstrap's exit status when the host lacks this agent
# Runs the agent (remote/bootstrap.py, sent as the `-c` program): loads the agent's code
# from the SSH user's private cache (owner, mode 0700 and no symlink checked first), or
# compiles it from stdin and caches it; with no private cache it runs inline, uncached.
BOOTSTRAP = (Path(__file__).parent / "remote" / "bootstrap.py").read_text(encoding="utf-8")
Upload = Callable[[], Iterable[bytes]]  # called once per attempt: a fresh stream each time
Answer = Callable[[dict[str, Any]], "tuple[dict[str, Any], Upload | None]"]


def frame(message: dict[str, Any]) -> bytes:
    """A compressed JSON frame: `<length>\\n<zlib(json)>` (read by agent.read_frame)."""
    packed = zlib.compress(json.dumps(message).encode(), 6)
    return str(len(packed)).encode() + b"\n" + packed


_PACKING = threading.Lock()


def _packed_agent() -> bytes:
    """The agent's modules, packed once per process: every host thread asks for them at
    the start of a run, and without the lock each would compress them itself."""
    with _PACKING:
        return _pack_agent()


@cache
def _pack_agent() -> bytes:
    here = Path(__file__).parent / "remote"
    modules: list[tuple[str, str | None]] = [("deploytools", None), ("deploytools.remote", None)]
    for name in REMOTE_MODULES:
        modules.append((f"deploytools.remote.{name}",
                        (here / f"{name}.py").read_text(encoding="utf-8")))
    return zlib.compress(json.dumps(modules).encode(), 9)


def become_prefix(settings: Mapping[str, Any]) -> str:
    """`sudo -n [-u USER] ` when the inventory says `become: true` (or the deprecated
    `supervisor.sudo: true`, which always meant this: the whole agent runs as root)."""
    if not (settings.get("become") or settings["supervisor"].get("sudo")):
        return ""
    user = settings.get("become_user") or "root"
    return "sudo -n " if user == "root" else f"sudo -n -u {shlex.quote(user)} "


def agent_bundle() -> bytes:
    """The remote modules, compressed once per process, framed for the bootstrap."""
    packed = _packed_agent()
    return str(len(packed)).encode() + b"\n" + packed


@cache
def agent_digest() -> str:
    """Names this exact agent in the host's cache (a changed agent is a new entry)."""
    return hashlib.sha256(_packed_agent()).hexdigest()[:32]


@dataclass
class AgentCall:
    """What an agent call returned: its result or error (and the agent's stderr)."""

    result: dict[str, Any] | None
    error: dict[str, Any] | None
    stderr: str = ""


class HostConnection:
    """The single SSH connection to one host for a whole run."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.commands = 0  # remote commands run (the JSON report and benchmarks read it)
        self.requests = 0  # agent requests (round trips) over those commands
        self.bytes_sent = 0
        self.connections = 0
        self.costs = CostBook()  # per operation, both ends (the JSON report's `cost`)
        self.profile = profiling.claim_agent(host.name)  # DEPLOYTOOLS_PROFILE: one host
        self._send_agent = False  # True once the host's cache proved to lack this agent
        self._conn: Connection | None = None
        self._channel: paramiko.Channel | None = None  # the agent session, once started
        self._buffer = b""  # its output read past the last complete line
        self.endpoint: access.Endpoint | None = None  # where it connected, once resolved
        self._jumps: Held = ()  # shared jump hosts it holds

    # ------------------------------------------------------------------ connect

    def open(self, attempts: int = 3) -> None:
        """Connect with verified host keys; retry refusals with jitter (sshd MaxStartups)."""
        ssh = self.host.settings["ssh"]
        for attempt in range(1, attempts + 1):
            try:
                self._conn = self._connect(ssh)
                self.connections += 1
                return
            except UnreachableError as exc:
                if not getattr(exc, "retryable", False) or attempt == attempts:
                    raise
                time.sleep(random.uniform(0.1, 0.4) * attempt)

    def _connect(self, ssh: dict[str, Any]) -> Connection:
        """Resolve the host (inventory > ssh_config > OpenSSH defaults) and open it
        (deploytools/ssh.py), holding its jump hosts until close."""
        host = self.host
        release_jumps(self._jumps)  # a reconnect takes its hops afresh
        self._jumps = ()
        try:
            endpoint = access.resolve(host.address, host.port, host.user, ssh)
        except ConfigError as exc:
            raise UnreachableError(host.name, str(exc)) from None
        self.endpoint = endpoint
        conn, self._jumps = connect(host.name, endpoint, ssh)
        return conn

    def io_thread_id(self) -> int | None:
        """The OS id of the paramiko thread that reads (and decrypts) this connection."""
        transport = self._conn.transport if self._conn is not None else None
        return getattr(transport, "native_id", None)

    @property
    def fabric(self) -> Connection | None:
        """The open Fabric connection (host key verified), for local Python hooks."""
        return self._conn

    def close(self) -> None:
        self._end_session()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        release_jumps(self._jumps)
        self._jumps = ()

    # ------------------------------------------------------------------ agent

    def agent_command(self, cached: bool = True) -> str:
        """The remote command line: the host's Python (`-S`: the agent is stdlib-only, and
        site-packages' .pth files cost more than the agent itself) running the bootstrap,
        which loads the agent from its cache or from stdin. `timeout` bounds the whole
        session by the host's run deadline, so a lost controller never leaves it running;
        each request carries its own limit (ssh.command_timeout), enforced by the agent."""
        settings = self.host.settings
        limit = int(settings["ssh"]["host_timeout"]) + int(settings["ssh"]["command_timeout"])
        parts = ["timeout", "-k", "10", str(limit), settings["python"], "-S", "-c", BOOTSTRAP,
                 agent_digest(), "cached" if cached else "inline"]
        command = " ".join(shlex.quote(p) for p in parts)
        return become_prefix(settings) + command

    def call(
        self,
        request: Request,
        on_event: Callable[[str], None] | None = None,
        timeout: float | None = None,
        answer: Answer | None = None,
    ) -> AgentCall:
        """Run one agent operation: one request to the host's agent session.

        The first call starts the session (one remote command); later calls reuse its
        process, so a run pays for one Python start per host. With `answer`, the agent
        may ask one question mid-call (prepare asks what to send given the base release
        it has); the answer's frame and its upload follow on the same channel.
        """
        ssh = self.host.settings["ssh"]
        wire = dict(request.to_wire(), time_limit=float(ssh["command_timeout"]),
                    streams=answer is not None)
        if self.profile:
            wire["profile"] = True
        deadline = timeout or float(ssh["command_timeout"]) + 15
        with self.costs.measure(request.op, self) as host_cost:
            call, status = self._exchange(request.op, wire, on_event, answer, deadline)
            if status == AGENT_CACHE_MISS and call.result is None and call.error is None:
                # The host lacks this agent: send it inline (it caches it for next time).
                self._send_agent = True
                call, status = self._exchange(request.op, wire, on_event, answer, deadline)
            if call.result is not None and isinstance(call.result.get("cost"), dict):
                host_cost.update(call.result.pop("cost"))
        if call.result is not None and "profile" in call.result:
            profiling.write_agent(self.host.name, call.result.pop("profile"))
        if call.result is None and call.error is None:
            raise RemoteError(self.host.name, self._no_result(status, call.stderr))
        return call

    def _exchange(self, op: str, wire: dict[str, Any], on_event: Callable[[str], None] | None,
                  answer: Answer | None, deadline: float) -> tuple[AgentCall, int | None]:
        """One request and its reply on the session; the exit status if the agent ended."""
        channel = self._session(deadline)
        self.requests += 1
        try:
            channel.settimeout(deadline)
            self._send(channel, [frame(wire)], None)

            def reply(question: dict[str, Any]) -> None:
                assert answer is not None
                response, response_upload = answer(question)
                self._send(channel, [frame(response)], response_upload)

            call, ended = self._read(channel, on_event, reply if answer else None)
        except TimeoutError:
            self._end_session()
            raise UnreachableError(
                self.host.name, f"timed out: no answer for {deadline:.0f}s during "
                f"{op} (host hung or overloaded; its state may be mid-step)") from None
        except BaseException:
            self._end_session()  # a half-read reply would desynchronise the next request
            raise
        status = None
        if ended:
            channel.status_event.wait(5)
            status = channel.exit_status if channel.exit_status_ready() else None
            self._end_session()
        elif call.error and call.error.get("ends_session"):
            self._end_session()  # the agent said it stops serving (time limit, broken stream)
        return call, status

    def start_agent(self) -> None:
        """Start the agent session now, so that the host loads it while the controller
        is busy elsewhere (planning, other hosts); the first request then finds it warm."""
        self._session(float(self.host.settings["ssh"]["connect_timeout"]))

    def _session(self, deadline: float) -> paramiko.Channel:
        """The open agent session, or a new one (sent the agent itself first when the
        host's cache is known to lack it)."""
        if self._channel is not None and not (self._channel.closed or
                                              self._channel.exit_status_ready()):
            return self._channel
        if self._channel is not None and self._channel.exit_status_ready() and \
                self._channel.exit_status == AGENT_CACHE_MISS:
            self._send_agent = True  # the session started at connect found no cached agent
        self._end_session()  # none yet, or it ended while idle (killed on the host)
        if self._conn is None:
            self.open()
        assert self._conn is not None
        transport = self._conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise UnreachableError(self.host.name, "SSH connection lost")
        cached = not self._send_agent
        try:
            channel = transport.open_session(timeout=deadline)
            channel.exec_command(self.agent_command(cached))
        except (paramiko.SSHException, OSError) as exc:
            raise UnreachableError(self.host.name, f"cannot start the agent: {exc}") from None
        self.commands += 1
        self._channel, self._buffer = channel, b""
        if not cached:
            self._send(channel, [agent_bundle()], None)
        return channel

    def _end_session(self) -> None:
        """Close the agent's stdin (it exits when idle) and forget the session."""
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.shutdown_write()
                channel.close()

    def _send(self, channel: paramiko.Channel, head: list[bytes],
              upload: Upload | None) -> None:
        try:
            for chunk in head:
                channel.sendall(chunk)
                self.bytes_sent += len(chunk)
            if upload is not None:
                for block in upload():
                    channel.sendall(block)
                    self.bytes_sent += len(block)
        except OSError:
            pass  # the agent stopped reading (it failed early): its error says why

    def _read(self, channel: paramiko.Channel, on_event: Callable[[str], None] | None,
              reply: Callable[[dict[str, Any]], None] | None) -> tuple[AgentCall, bool]:
        """Protocol lines up to this request's result or error; True if the agent ended."""
        call = AgentCall(result=None, error=None)
        ended = False
        while call.result is None and call.error is None:
            if b"\n" not in self._buffer:
                data = channel.recv(65536)
                if not data:
                    ended = True
                    break
                self._buffer += data
                continue
            line, self._buffer = self._buffer.split(b"\n", 1)
            question = self._handle_line(line, call, on_event)
            if question is not None and reply is not None:
                reply(question)
        if ended and self._buffer.strip():
            self._handle_line(self._buffer, call, on_event)
        stderr = b""
        while channel.recv_stderr_ready():
            stderr += channel.recv_stderr(65536)
        call.stderr = stderr.decode("utf-8", "replace")
        return call, ended

    @staticmethod
    def _handle_line(line: bytes, call: AgentCall,
                     on_event: Callable[[str], None] | None) -> dict[str, Any] | None:
        try:
            message = json.loads(line)
        except ValueError:
            call.stderr += line.decode("utf-8", "replace") + "\n"
            return None
        if "event" in message:
            if on_event:
                on_event(message["event"])
        elif "result" in message:
            call.result = message["result"]
        elif "error" in message:
            call.error = message["error"]
        elif "ask" in message:
            return message["ask"]
        return None

    def _no_result(self, status: int | None, stderr: str) -> str:
        python = self.host.settings["python"]
        tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        if status == 127:
            return f"interpreter {python!r} not found on the host (set 'python' in the inventory)"
        if status == 124:
            return "the agent session hit its time limit (ssh.host_timeout)"
        if status == 1 and "sudo" in stderr:
            return f"sudo refused: {' '.join(tail)}"
        detail = f": {tail[0]}" if tail else ""
        return f"agent ended without a result (exit status {status}){detail}"
