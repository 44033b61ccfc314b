"""Opening a verified SSH connection, directly or through jump hosts, and saying why
it failed.

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
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

import paramiko
from fabric import Config, Connection

from deploytools import access
from deploytools.errors import UnreachableError

Held = tuple[tuple[Any, ...], ...]  # the jump hosts a connection holds (release_jumps)


def connect(name: str, endpoint: access.Endpoint, ssh: dict[str, Any]
            ) -> tuple[Connection, Held]:
    """Reach `endpoint` through its jump hosts or ProxyCommand if any, and open it
    through the verifying factory; with the jump hosts it holds. A failure is an
    UnreachableError saying why, and whether retrying may help (`retryable`)."""
    held: Held = ()
    sock: Any = None
    if endpoint.jumps:
        sock, held = open_through_jumps(name, endpoint, ssh)
    elif endpoint.proxy_command:
        try:
            sock = paramiko.ProxyCommand(endpoint.proxy_command)
        except (OSError, paramiko.SSHException) as exc:
            raise UnreachableError(name, f"ProxyCommand failed: {exc}") from None
    try:
        return verified_connection(endpoint, ssh, sock), held
    except Exception as exc:  # paramiko raises many unrelated types here
        release_jumps(held)
        text, retryable = describe_connect_error(exc, endpoint, ssh.get("known_hosts"))
        error = UnreachableError(name, text)
        error.retryable = retryable  # type: ignore[attr-defined]
        raise error from None
    except BaseException:
        release_jumps(held)  # interrupted: nothing else holds them to let go of
        raise


class _AcceptNewHostKey(paramiko.MissingHostKeyPolicy):
    """Trust on first use: record an unknown key in known_hosts. Changed keys still fail."""

    def __init__(self, known_hosts: str) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: Any) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        with open(self.known_hosts, "a", encoding="utf-8") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


KnownHosts = tuple[list[tuple[list[str], Any]], set[tuple[str, str]]]
_parsed_known_hosts: dict[tuple[Any, ...], KnownHosts] = {}
_parsed_lock = threading.Lock()


def load_known_hosts(keys: paramiko.HostKeys, path: str,
                     names: set[str] | None = None) -> set[tuple[str, str]]:
    """Load `path` into `keys` as OpenSSH reads it, and return its @revoked keys.

    Only entries for `names` (the host as paramiko looks it up) and hashed entries are
    added: paramiko matches nothing else, and loading a whole 200-line file into each of
    200 connections cost 15 CPU-s. The file is parsed once per version (path, inode,
    size, mtime) for every connection of the run."""
    entries, revoked = _parse_known_hosts(path)
    for hostnames, key in entries:
        for name in hostnames:
            if names is None or name in names or name.startswith("|"):
                keys.add(name, key.get_name(), key)
    return revoked


def _parse_known_hosts(path: str) -> KnownHosts:
    """paramiko's own loader does not know markers: a `@revoked` or `@cert-authority` line
    makes it raise, which failed every host. Here `@revoked` keys are returned (and
    never trusted, even if listed again), `@cert-authority` lines are skipped (paramiko
    cannot check host certificates: such hosts need their plain key listed), and a line
    that cannot be parsed is ignored, as ssh does."""
    info = os.stat(path)
    version = (path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    with _parsed_lock:
        if version in _parsed_known_hosts:
            return _parsed_known_hosts[version]
        with open(path, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh.read().splitlines()]
        revoked: set[tuple[str, str]] = set()
        for line in lines:
            marker, _, rest = line.partition(" ")
            fields = rest.split()
            if marker == "@revoked" and len(fields) >= 3:
                revoked.add((fields[1], fields[2]))
        entries: list[tuple[list[str], Any]] = []
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
            entries.append((entry.hostnames, entry.key))
        _parsed_known_hosts[version] = (entries, revoked)
        return entries, revoked


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


def _host_key_policy(client: paramiko.SSHClient, ssh: dict[str, Any],
                     endpoint: access.Endpoint | None = None) -> None:
    """Load known_hosts (markers understood) and refuse unknown keys (or record them on
    first contact, when ssh.accept_new_host_keys says so); a changed or @revoked key is
    always refused."""
    target = ssh.get("known_hosts") or os.path.expanduser("~/.ssh/known_hosts")
    try:
        names = None if endpoint is None else \
            {endpoint.hostname, f"[{endpoint.hostname}]:{endpoint.port}"}
        revoked = load_known_hosts(client.get_host_keys(), target, names) \
            if os.path.exists(target) else set()
    except UnicodeDecodeError as exc:
        raise OSError(f"{target}: {exc}") from None
    if ssh.get("accept_new_host_keys"):
        policy: paramiko.MissingHostKeyPolicy = _AcceptNewHostKey(target)
    else:
        policy = paramiko.RejectPolicy()
    client.set_missing_host_key_policy(_RefuseRevoked(policy, revoked))


# paramiko's transport thread wakes from its socket every 0.1 s (to notice a close and
# keepalives). A host waits most of a large run for its turn: measured, each connection
# then costs 0.65 ms of controller CPU per second, most of the controller's work at 200
# hosts. Once connected it wakes once a second (0.09 ms per second); closing stays
# immediate (paramiko does not wait for the thread) and keepalives are checked to within
# that second. The handshake keeps paramiko's own value: with a slower wake, 200
# simultaneous handshakes on a loaded controller missed their deadline.
IDLE_WAKE_S = 1.0


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
        _host_key_policy(conn.client, ssh, endpoint)
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
        transport.sock.settimeout(IDLE_WAKE_S)  # a socket, a jump host's channel or a proxy
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
    elif isinstance(exc, paramiko.SSHException) and "No existing session" in str(exc):
        # paramiko gives up waiting for the key exchange silently at the connect
        # timeout; authentication then finds no session
        text, retryable = (f"SSH handshake with {where} did not finish within "
                           "ssh.connect_timeout (host or controller overloaded?)"), True
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
                       ) -> tuple[paramiko.Channel, Held]:
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


def release_jumps(keys: Held) -> None:
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
