"""Test helpers for real access paths: an ssh-agent and a jump host, both real OpenSSH
processes started as children and stopped by PID (additive to deploytools.sandbox)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from deploytools.sandbox import (
    Fleet,
    SimHost,
    _port_free,
    _public_key,
    _run_keygens,
    _sshd_config_text,
    _sshd_version,
    sshd_path,
)


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
