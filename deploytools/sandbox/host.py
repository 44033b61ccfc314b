"""One simulated host (SimHost): its sshd and supervisord lifecycle and private dir."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from deploytools.sandbox.env import _SSHD_READY_TIMEOUT, _STOP_TIMEOUT, SAMPLE_APP_PORT, _daemon_env
from deploytools.sandbox.errors import FleetStartError
from deploytools.sandbox.network import _ssh_banner
from deploytools.sandbox.processes import _tail, _wait_or_kill
from deploytools.sandbox.supervisord import supervisor_proxy

if TYPE_CHECKING:
    from deploytools.sandbox.variants import Variant


@dataclass
class SimHost:
    """One simulated host: an sshd and a supervisord of our own, and a private directory."""

    name: str
    address: str
    port: int
    root: Path
    deploy_to: Path
    supervisor_conf: Path
    supervisor_socket: Path
    app_port: int = SAMPLE_APP_PORT
    sshd_pid: int | None = None
    supervisord_pid: int | None = None
    sshd_binary: str = field(default="/usr/sbin/sshd", repr=False)
    # How this host differs from the plain one (see Variant); None for a plain host.
    variant: Variant | None = field(default=None, repr=False, compare=False)
    _sshd_proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _supervisord_proc: subprocess.Popen[bytes] | None = field(
        default=None, repr=False, compare=False
    )

    # ---- paths, all inside root so hosts never share state
    @property
    def sshd_config(self) -> Path:
        return self.root / "sshd_config"

    @property
    def home(self) -> Path:
        """This host's $HOME for SSH sessions and daemons (see _sshd_config_text)."""
        return self.root / "home"

    @property
    def sshd_log(self) -> Path:
        return self.root / "sshd.log"

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    @property
    def supervisord_log(self) -> Path:
        return self.root / "supervisord.log"

    @property
    def supervisord_output(self) -> Path:
        """supervisord's own stdout/stderr (tracebacks before its log file is open)."""
        return self.root / "supervisord.out"

    def session_pids(self) -> list[int]:
        """PIDs of processes running with this host's $HOME (its daemons, their programs,
        SSH sessions and whatever those started), found through /proc."""
        marker = b"HOME=" + bytes(self.home)
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ:
                found.append(int(entry))
        return found

    # ---- app
    def health_url(self) -> str:
        return f"http://{self.address}:{self.app_port}/health"

    def health(self, timeout: float = 2.0) -> dict | None:
        """GET /health as JSON; None when unreachable, non-200 or not a JSON object.

        Proxies are bypassed on purpose: a proxy from the environment would not exempt
        127.x.y.z addresses other than 127.0.0.1 and would answer for the app.
        """
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.health_url(), timeout=timeout) as resp:
                if resp.status != 200:
                    return None
                data = json.loads(resp.read().decode("utf-8"))
        except (OSError, ValueError, http.client.HTTPException):
            return None  # URLError/HTTPError are OSErrors; bad JSON is a ValueError
        return data if isinstance(data, dict) else None

    def supervisor_rpc(self, timeout: float = 5.0) -> xmlrpc.client.ServerProxy:
        """XML-RPC proxy to this host's supervisord (``.supervisor.getProcessInfo('app')``)."""
        return supervisor_proxy(self.supervisor_socket, timeout)

    # ---- sshd
    def _launch_sshd(self) -> None:
        self.sshd_log.unlink(missing_ok=True)
        self._sshd_proc = subprocess.Popen(
            # -D: stay in the foreground as our child, so the pid is known without racing
            # a daemonizing fork; -E: errors to a per-host log instead of syslog.
            [self.sshd_binary, "-D", "-f", str(self.sshd_config), "-E", str(self.sshd_log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_daemon_env(self.home),
            # Own session: a Ctrl-C in the test terminal must not kill the fleet behind
            # the cleanup code's back.
            start_new_session=True,
        )
        self.sshd_pid = self._sshd_proc.pid

    def _wait_sshd(self, deadline: float) -> None:
        proc = self._sshd_proc
        assert proc is not None
        while True:
            if proc.poll() is not None:
                raise FleetStartError(
                    f"{self.name}: sshd exited with status {proc.returncode} on "
                    f"{self.address}:{self.port}; {self.sshd_log} says:\n{_tail(self.sshd_log)}"
                )
            if _ssh_banner(self.address, self.port, timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise FleetStartError(
                    f"{self.name}: sshd did not answer on {self.address}:{self.port}; "
                    f"{self.sshd_log} says:\n{_tail(self.sshd_log)}"
                )
            time.sleep(0.01)

    def start_sshd(self) -> None:
        """(Re)start sshd with the same config and host key: stops a running one first."""
        if self._sshd_proc is not None and self._sshd_proc.poll() is None:
            self.stop_sshd()
        self._launch_sshd()
        try:
            self._wait_sshd(time.monotonic() + _SSHD_READY_TIMEOUT)
        except BaseException:
            self.stop_sshd()
            raise

    def _signal_sshd_stop(self) -> None:
        proc = self._sshd_proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
            # A frozen sshd only acts on the pending SIGTERM once continued.
            proc.send_signal(signal.SIGCONT)

    def _reap_sshd(self, deadline: float) -> None:
        proc = self._sshd_proc
        if proc is not None:
            _wait_or_kill(proc, deadline)
        self._sshd_proc = None
        self.sshd_pid = None

    def stop_sshd(self) -> None:
        """SIGTERM the listening sshd and wait. Open sessions are separate processes and
        live on until their connections close, as on a real host."""
        self._signal_sshd_stop()
        self._reap_sshd(time.monotonic() + _STOP_TIMEOUT)

    # ---- supervisord
    def _launch_supervisord(self) -> None:
        self.supervisor_socket.unlink(missing_ok=True)
        with open(self.supervisord_output, "ab") as out:
            self._supervisord_proc = subprocess.Popen(
                # -n: nodaemon, so the pid is ours and it dies with a plain SIGTERM.
                [
                    sys.executable,
                    "-m",
                    "supervisor.supervisord",
                    "-n",
                    "-c",
                    str(self.supervisor_conf),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_daemon_env(self.home),
                cwd=str(self.root),
                start_new_session=True,
            )
        self.supervisord_pid = self._supervisord_proc.pid

    def _wait_supervisord(self, deadline: float) -> None:
        proc = self._supervisord_proc
        assert proc is not None
        while True:
            if proc.poll() is not None:
                raise FleetStartError(
                    f"{self.name}: supervisord exited with status {proc.returncode}; "
                    f"output:\n{_tail(self.supervisord_output)}\n"
                    f"{self.supervisord_log}:\n{_tail(self.supervisord_log)}"
                )
            if self.supervisor_socket.exists():
                try:
                    with self.supervisor_rpc(timeout=1.0) as rpc:
                        state = rpc.supervisor.getState()
                    if state.get("statename") == "RUNNING":
                        return
                except (OSError, xmlrpc.client.Error, http.client.HTTPException):
                    pass
            if time.monotonic() > deadline:
                raise FleetStartError(
                    f"{self.name}: supervisord did not answer on {self.supervisor_socket}; "
                    f"{self.supervisord_log}:\n{_tail(self.supervisord_log)}"
                )
            time.sleep(0.02)

    def _supervised_pids(self) -> list[int]:
        """PIDs of the programs supervisord runs now, so they can be killed by PID if
        supervisord itself has to be SIGKILLed and leaves them orphaned."""
        proc = self._supervisord_proc
        if proc is None or proc.poll() is not None or not self.supervisor_socket.exists():
            return []
        try:
            with self.supervisor_rpc(timeout=1.0) as rpc:
                infos = rpc.supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            return []
        return [int(info["pid"]) for info in infos if info.get("pid")]

    def _signal_supervisord_stop(self) -> None:
        """Ask supervisord to shut down (it stops its programs first).

        The XML-RPC ``shutdown`` is preferred: supervisord's main loop sleeps in a 1 s
        poll() that signals do not interrupt, so a SIGTERM costs 1-2 s per shutdown,
        while an RPC wakes the loop at once. SIGTERM is the fallback.
        """
        proc = self._supervisord_proc
        if proc is None or proc.poll() is not None:
            return
        try:
            with self.supervisor_rpc(timeout=1.0) as rpc:
                rpc.supervisor.shutdown()
            return
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            pass
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)

    def _reap_supervisord(self, deadline: float) -> None:
        proc = self._supervisord_proc
        if proc is not None:
            _wait_or_kill(proc, deadline)
        self._supervisord_proc = None
        self.supervisord_pid = None
