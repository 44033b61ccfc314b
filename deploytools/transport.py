"""One SSH connection per host, with verified host keys, and the agent call over it.

Fabric's `Connection` always installs paramiko's AutoAddPolicy and never loads
known_hosts, so a wrong key still connects. Every connection is made here: the
known_hosts file is loaded and unknown keys are rejected before `open()`
(`ssh.accept_new_host_keys: true` is an explicit opt-in for first contact only;
a *changed* key is always refused). Connect, banner and auth have deadlines, and
TCP_NODELAY is set (paramiko does not; it cuts a round trip from ~44 to ~2 ms).
Where and as whom to connect (ssh_config, keys, jump hosts) is resolved by
deploytools/access.py; jump hosts are opened by the same factory as targets
(`verified_connection`), so their keys are checked too, and shared by every target
behind them.

Remote work goes through the agent (`deploytools/remote`), run by the host's own
interpreter and cached there by digest. One agent process per host serves every
request of a run over one channel (a session): a phase is one round trip on a warm
process, not an `exec` and a Python start, and uploads stream over the same channel.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shlex
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import paramiko
from fabric import Config, Connection

from deploytools import access, dryrun
from deploytools.errors import ConfigError, RemoteError, UnreachableError
from deploytools.inventory import Host

REMOTE_MODULES = (
    "bytecode", "health", "releases", "intact", "processes", "locking", "supervisor",
    "supervisorctl", "hooks", "build", "verify", "agent",
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


@cache
def _packed_agent() -> bytes:
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


class _AcceptNewHostKey(paramiko.MissingHostKeyPolicy):
    """Trust on first use: record an unknown key in known_hosts. Changed keys still fail."""

    def __init__(self, known_hosts: str) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: Any) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        with open(self.known_hosts, "a", encoding="utf-8") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def load_known_hosts(keys: paramiko.HostKeys, path: str) -> set[tuple[str, str]]:
    """Load `path` into `keys` as OpenSSH reads it, and return its @revoked keys.

    paramiko's own loader does not know markers: a `@revoked` or `@cert-authority` line
    makes it raise, which failed every host. Here `@revoked` keys are returned (and
    never trusted, even if listed again), `@cert-authority` lines are skipped (paramiko
    cannot check host certificates: such hosts need their plain key listed), and a line
    that cannot be parsed is ignored, as ssh does."""
    with open(path, encoding="utf-8") as fh:
        lines = [line.strip() for line in fh.read().splitlines()]
    revoked: set[tuple[str, str]] = set()
    for line in lines:
        marker, _, rest = line.partition(" ")
        fields = rest.split()
        if marker == "@revoked" and len(fields) >= 3:
            revoked.add((fields[1], fields[2]))
    for number, line in enumerate(lines, 1):
        if not line or line.startswith(("#", "@")):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
        except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, ValueError,
                TypeError):
            continue
        if entry is None or entry.key is None:
            continue
        if (entry.key.get_name(), entry.key.get_base64()) in revoked:
            continue  # a revoked key is never trusted, even if listed again
        for name in entry.hostnames:
            keys.add(name, entry.key.get_name(), entry.key)
    return revoked


class _RefuseRevoked(paramiko.MissingHostKeyPolicy):
    """Refuses a host that presents a @revoked key (before authentication), with a clear
    reason; any other key not in known_hosts goes to the configured policy."""

    def __init__(self, inner: paramiko.MissingHostKeyPolicy,
                 revoked: set[tuple[str, str]]) -> None:
        self.inner = inner
        self.revoked = revoked

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: Any) -> None:
        if (key.get_name(), key.get_base64()) in self.revoked:
            raise paramiko.SSHException(
                f"host key REVOKED: {hostname} presented {key.get_name()} "
                f"{key.get_fingerprint().hex()}, marked @revoked in known_hosts")
        self.inner.missing_host_key(client, hostname, key)


def _host_key_policy(client: paramiko.SSHClient, ssh: dict[str, Any]) -> None:
    """Load known_hosts (markers understood) and refuse unknown keys (or record them on
    first contact, when ssh.accept_new_host_keys says so); a changed or @revoked key is
    always refused."""
    target = ssh.get("known_hosts") or os.path.expanduser("~/.ssh/known_hosts")
    try:
        revoked = load_known_hosts(client.get_host_keys(), target) \
            if os.path.exists(target) else set()
    except UnicodeDecodeError as exc:
        raise OSError(f"{target}: {exc}") from None
    if ssh.get("accept_new_host_keys"):
        policy: paramiko.MissingHostKeyPolicy = _AcceptNewHostKey(target)
    else:
        policy = paramiko.RejectPolicy()
    client.set_missing_host_key_policy(_RefuseRevoked(policy, revoked))


def verified_connection(endpoint: access.Endpoint, ssh: dict[str, Any],
                        sock: Any = None) -> Connection:
    """The one factory for every SSH connection, target or jump host: host key verified
    against ssh.known_hosts with the same policy, deadlines on connect, banner and auth,
    OpenSSH-like key auth that never prompts, TCP_NODELAY. `sock` is the channel (jump
    host) or ProxyCommand to speak SSH over. Fabric's own ssh_config reading is off: the
    endpoint is already resolved (access.resolve)."""
    timeout = float(ssh["connect_timeout"])
    kwargs: dict[str, Any] = {"timeout": timeout, "banner_timeout": timeout,
                              "auth_timeout": timeout, "auth_strategy": access.KeyAuth(endpoint)}
    if sock is not None:
        kwargs["sock"] = sock
    conn = Connection(host=endpoint.hostname, user=endpoint.user, port=endpoint.port,
                      config=Config(ssh_config=paramiko.SSHConfig()), connect_kwargs=kwargs)
    try:
        _host_key_policy(conn.client, ssh)
    except (OSError, paramiko.SSHException) as exc:
        raise _KnownHostsError(f"cannot read known_hosts: {exc}") from None
    try:
        conn.open()
    except BaseException:
        with contextlib.suppress(Exception):
            conn.close()
            if sock is not None:
                sock.close()
        raise
    transport = conn.client.get_transport()
    if transport is not None:
        if isinstance(transport.sock, socket.socket):
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_keepalive(15)
    return conn


class _KnownHostsError(Exception):
    """known_hosts could not be read (reported as is)."""


def describe_connect_error(exc: Exception, endpoint: access.Endpoint,
                           known_hosts: str | None) -> tuple[str, bool]:
    """One line saying why a connection failed, and whether retrying may help."""
    where = f"{endpoint.hostname}:{endpoint.port}"
    retryable = False
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) and exc.errors:
        exc = next(iter(exc.errors.values()))  # the OS error behind paramiko's wrapper
    if isinstance(exc, _KnownHostsError):
        text = str(exc)
    elif isinstance(exc, paramiko.BadHostKeyException):
        text = (f"host key for {where} CHANGED (expected {exc.expected_key.get_name()} "
                f"{exc.expected_key.get_fingerprint().hex()}, got "
                f"{exc.key.get_fingerprint().hex()}); refusing to connect")
    elif isinstance(exc, access.AccessDenied):
        text = exc.text
    elif isinstance(exc, paramiko.AuthenticationException):
        text = f"authentication failed for user {endpoint.user} at {where}"
    elif isinstance(exc, paramiko.SSHException) and "host key REVOKED" in str(exc):
        text = f"{exc}; refusing to connect"
    elif isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        text = (f"unknown host key for {where}: not in {known_hosts or '~/.ssh/known_hosts'} "
                "(add it with ssh-keyscan after checking it, or set "
                "ssh.accept_new_host_keys: true for first contact)")
    elif isinstance(exc, socket.timeout | TimeoutError):
        text = f"connection to {where} timed out"
    elif isinstance(exc, ConnectionRefusedError):
        text, retryable = f"connection to {where} refused", True
    elif isinstance(exc, socket.gaierror):
        text = f"cannot resolve {endpoint.hostname}: {exc.strerror}"
    elif isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower():
        text, retryable = f"no SSH banner from {where} (overloaded or not sshd)", True
    elif isinstance(exc, OSError):
        text = f"cannot connect to {where}: {exc.strerror or exc}"
    else:
        text = f"cannot connect to {where}: {exc}"
    return text, retryable


# ---------------------------------------------------------------------------- jump hosts
# One connection per jump host (per chain of hops leading to it), shared by every target
# behind it and closed when the last of them closes.


@dataclass
class _Jump:
    lock: threading.Lock
    conn: Connection | None = None
    users: int = 0
    failure: str | None = None  # why it could not be opened, for the targets waiting on it


_JUMPS: dict[tuple[Any, ...], _Jump] = {}
_JUMPS_LOCK = threading.Lock()


def _alive(conn: Connection | None) -> bool:
    transport = conn.client.get_transport() if conn is not None else None
    return transport is not None and transport.is_active()


def _forward(conn: Connection, endpoint: access.Endpoint, timeout: float) -> paramiko.Channel:
    """A direct-tcpip channel from a jump host to the next hop or the target."""
    transport = conn.client.get_transport()
    assert transport is not None
    return transport.open_channel("direct-tcpip", (endpoint.hostname, endpoint.port),
                                  ("", 0), timeout=timeout)


def open_through_jumps(name: str, endpoint: access.Endpoint, ssh: dict[str, Any]
                       ) -> tuple[paramiko.Channel, tuple[tuple[Any, ...], ...]]:
    """Open (or share) every hop in order, each verified like a target, and return a
    channel to `endpoint` through the last one, with the hops held (release_jumps)."""
    timeout = float(ssh["connect_timeout"])
    held: list[tuple[Any, ...]] = []
    previous: Connection | None = None
    try:
        for index, hop in enumerate(endpoint.jumps):
            key = tuple(h.key for h in endpoint.jumps[: index + 1])
            with _JUMPS_LOCK:
                jump = _JUMPS.setdefault(key, _Jump(threading.Lock()))
                jump.users += 1
            held.append(key)
            with jump.lock:
                if jump.failure is not None:  # failed for a target waiting with us: no retry
                    raise UnreachableError(name, jump.failure)
                if not _alive(jump.conn):
                    try:
                        jump.conn = _open_hop(name, hop, ssh, previous, timeout)
                    except UnreachableError as exc:
                        jump.failure = str(exc)
                        raise
                previous = jump.conn
        assert previous is not None
        try:
            channel = _forward(previous, endpoint, timeout)
        except (paramiko.SSHException, OSError) as exc:
            last = endpoint.jumps[-1]
            raise UnreachableError(name, f"jump host {last.where} cannot reach "
                                   f"{endpoint.hostname}:{endpoint.port}: {exc}") from None
    except BaseException:
        release_jumps(tuple(held))
        raise
    return channel, tuple(held)


def _open_hop(name: str, hop: access.Endpoint, ssh: dict[str, Any],
              previous: Connection | None, timeout: float) -> Connection:
    try:
        sock = _forward(previous, hop, timeout) if previous is not None else None
        return verified_connection(hop, ssh, sock)
    except Exception as exc:  # paramiko raises many unrelated types here
        text, _ = describe_connect_error(exc, hop, ssh.get("known_hosts"))
        raise UnreachableError(name, f"jump host {hop.where}: {text}") from None


def release_jumps(keys: tuple[tuple[Any, ...], ...]) -> None:
    """Let go of held hops, last first; a hop nobody holds any more is closed."""
    for key in reversed(keys):
        with _JUMPS_LOCK:
            jump = _JUMPS.get(key)
            if jump is None:
                continue
            jump.users -= 1
            if jump.users > 0:
                continue
            del _JUMPS[key]
        if jump.conn is not None:
            with contextlib.suppress(Exception):
                jump.conn.close()


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
        self._send_agent = False  # True once the host's cache proved to lack this agent
        self._conn: Connection | None = None
        self._channel: paramiko.Channel | None = None  # the agent session, once started
        self._buffer = b""  # its output read past the last complete line
        self.endpoint: access.Endpoint | None = None  # where it connected, once resolved
        self._jumps: tuple[tuple[Any, ...], ...] = ()  # shared jump hosts it holds

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
        """Resolve the host (inventory > ssh_config > OpenSSH defaults), reach it through
        its jump hosts or ProxyCommand if any, and open it through the verifying factory."""
        host = self.host
        release_jumps(self._jumps)  # a reconnect takes its hops afresh
        self._jumps = ()
        try:
            endpoint = access.resolve(host.address, host.port, host.user, ssh)
        except ConfigError as exc:
            raise UnreachableError(host.name, str(exc)) from None
        self.endpoint = endpoint
        sock: Any = None
        if endpoint.jumps:
            sock, self._jumps = open_through_jumps(host.name, endpoint, ssh)
        elif endpoint.proxy_command:
            try:
                sock = paramiko.ProxyCommand(endpoint.proxy_command)
            except (OSError, paramiko.SSHException) as exc:
                raise UnreachableError(host.name, f"ProxyCommand failed: {exc}") from None
        try:
            return verified_connection(endpoint, ssh, sock)
        except Exception as exc:  # paramiko raises many unrelated types here
            release_jumps(self._jumps)
            self._jumps = ()
            raise self._explain(exc, ssh.get("known_hosts"), endpoint) from None

    def _explain(self, exc: Exception, known_hosts: str | None,
                 endpoint: access.Endpoint) -> UnreachableError:
        text, retryable = describe_connect_error(exc, endpoint, known_hosts)
        error = UnreachableError(self.host.name, text)
        error.retryable = retryable  # type: ignore[attr-defined]
        return error

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
        request: dict[str, Any],
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
        request = dict(request, time_limit=float(ssh["command_timeout"]),
                       streams=answer is not None)
        deadline = timeout or float(ssh["command_timeout"]) + 15
        call, status = self._exchange(request, on_event, answer, deadline)
        if status == AGENT_CACHE_MISS and call.result is None and call.error is None:
            # The host lacks this agent version: send it inline (it caches it for next time).
            self._send_agent = True
            call, status = self._exchange(request, on_event, answer, deadline)
        if call.result is None and call.error is None:
            raise RemoteError(self.host.name, self._no_result(status, call.stderr))
        return call

    def _exchange(self, request: dict[str, Any], on_event: Callable[[str], None] | None,
                  answer: Answer | None, deadline: float) -> tuple[AgentCall, int | None]:
        """One request and its reply on the session; the exit status if the agent ended."""
        channel = self._session(deadline)
        self.requests += 1
        try:
            channel.settimeout(deadline)
            self._send(channel, [frame(request)], None)

            def reply(question: dict[str, Any]) -> None:
                assert answer is not None
                response, response_upload = answer(question)
                self._send(channel, [frame(response)], response_upload)

            call, ended = self._read(channel, on_event, reply if answer else None)
        except TimeoutError:
            self._end_session()
            raise UnreachableError(
                self.host.name, f"timed out: no answer for {deadline:.0f}s during "
                f"{request['op']} (host hung or overloaded; its state may be mid-step)") from None
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
