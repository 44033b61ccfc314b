"""Test helpers for real access paths: an ssh-agent and a jump host, both real OpenSSH
processes started as children and stopped by PID (additive to deploytools.sandbox)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from deploytools.sandbox import Fleet, SimHost, sshd_path
from deploytools.sandbox.network import _port_free
from deploytools.sandbox.sshd import _public_key, _run_keygens, _sshd_config_text, _sshd_version


@dataclass
class Agent:
    """A real ssh-agent in the foreground (-D), so its PID is ours to stop."""

    socket: Path
    proc: subprocess.Popen[bytes]

    def add(self, key: Path) -> None:
        subprocess.run(["ssh-add", "-q", str(key)], env=self.env(), check=True,
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=10)

    def env(self) -> dict[str, str]:
        return {**os.environ, "SSH_AUTH_SOCK": str(self.socket)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_agent(directory: Path) -> Agent:
    agent_bin = shutil.which("ssh-agent")
    assert agent_bin, "ssh-agent not installed (openssh-client)"
    sock = directory / "agent.sock"
    proc = subprocess.Popen([agent_bin, "-D", "-a", str(sock)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("ssh-agent did not start")
        time.sleep(0.01)
    return Agent(sock, proc)


def start_jump_host(fleet: Fleet, root: Path) -> SimHost:
    """An sshd-only host in front of the fleet: same client key, its host key added to
    the fleet's known_hosts, LogLevel DEBUG so its log shows every direct-tcpip
    forward (the proof that targets were reached through it)."""
    sshd = sshd_path()
    assert sshd is not None
    base = fleet.hosts[0].address.rsplit(".", 1)[0]
    port = fleet.hosts[0].port
    address = next(f"{base}.{n}" for n in range(240, 255) if _port_free(f"{base}.{n}", port))
    root.mkdir(parents=True, exist_ok=True)
    (root / "home").mkdir(mode=0o700, exist_ok=True)
    jump = SimHost(name="jump", address=address, port=port, root=root,
                   deploy_to=root / "unused", supervisor_conf=root / "unused.conf",
                   supervisor_socket=root / "unused.sock", sshd_binary=sshd)
    _run_keygens([(jump.host_key, "jump-hostkey")])
    jump.authorized_keys.write_text(f"{_public_key(fleet.client_key)} deploytools-fleet-client\n")
    text = _sshd_config_text(jump, _sshd_version(sshd)).replace("LogLevel ERROR", "LogLevel DEBUG")
    jump.sshd_config.write_text(text)
    jump.start_sshd()
    where = address if port == 22 else f"[{address}]:{port}"
    with open(fleet.known_hosts, "a", encoding="utf-8") as fh:
        fh.write(f"{where} {_public_key(jump.host_key)}\n")
    return jump


def forwards(jump: SimHost) -> list[str]:
    """Target addresses the jump host forwarded connections to, in order."""
    out = []
    for line in jump.sshd_log.read_text(errors="replace").splitlines():
        if "server_request_direct_tcpip" in line and "target" in line:
            out.append(line.split("target ", 1)[1].split()[0])
    return out


def logins(jump: SimHost) -> int:
    """SSH logins the jump host accepted (one per shared connection)."""
    return jump.sshd_log.read_text(errors="replace").count("Accepted publickey")


# ----------------------------------------------------------------------------- isolation
# A controller that can reach the jump host and nothing else: it runs in a network
# namespace of its own (only `lo`, nothing listening), where 127.0.0.1:PORT is relayed to
# the jump host's sshd. A direct connection to any target is then impossible, so a
# deploy that passes went through the jump host.

CLONE_NEWNET = 0x40000000


@dataclass
class Isolated:
    """The namespace (held by a sleeping process) and the relay into the jump host."""

    holder: subprocess.Popen[bytes]
    listener: socket.socket
    port: int
    target: tuple[str, int]
    _threads: list[threading.Thread]
    _stopping: threading.Event

    @property
    def netns(self) -> str:
        return f"/proc/{self.holder.pid}/ns/net"

    def command(self, argv: list[str]) -> list[str]:
        """argv run inside the namespace."""
        return ["nsenter", f"--net={self.netns}", *argv]

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=_pipe, args=(a, b), daemon=True)
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        if self.holder.poll() is None:
            self.holder.terminate()
            self.holder.wait(5)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _listen_in(netns: str, port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:port inside `netns`: setns(2) in a thread of its
    own (network namespaces are per thread), which then ends; the socket stays there."""
    libc = ctypes.CDLL(None, use_errno=True)
    made: dict[str, object] = {}

    def work() -> None:
        fd = os.open(netns, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                made["error"] = OSError(ctypes.get_errno(), "setns failed")
                return
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(64)
            made["sock"] = sock
        finally:
            os.close(fd)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]  # type: ignore[misc]
    return made["sock"]  # type: ignore[return-value]


def isolate_behind(jump: SimHost, port: int = 2222) -> Isolated:
    """A network namespace whose only way out is 127.0.0.1:port -> the jump host."""
    holder = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", "ip link set lo up && echo ready && exec sleep 3600"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert holder.stdout is not None
    if holder.stdout.readline().strip() != b"ready":
        holder.kill()
        holder.wait(5)
        raise RuntimeError("could not create a network namespace (unshare --net needs root)")
    try:
        listener = _listen_in(f"/proc/{holder.pid}/ns/net", port)
    except BaseException:
        holder.kill()
        holder.wait(5)
        raise
    isolated = Isolated(holder, listener, port, (jump.address, jump.port), [],
                        threading.Event())
    server = threading.Thread(target=isolated._serve, daemon=True)
    server.start()
    isolated._threads.append(server)
    return isolated
