"""A simulated fleet of hosts on this one machine, for tests, demos and benchmarks.

Deploy tooling is only worth trusting if it is exercised against the same moving parts
as production: a real OpenSSH server with strict host keys and key-only auth, and a real
``supervisord`` that has to stop and start an app that serves HTTP. Mocks would hide
exactly the bugs this project exists to catch (restarts that keep the old cwd, host keys
that are never checked, stale bytecode), so every simulated host here is:

* its own ``sshd`` on its own loopback address ``127.x.y.z`` (all of 127.0.0.0/8 reaches
  ``lo`` on Linux without setup), on port 22 when we are root, with its own ed25519 host
  key; one client key is authorized on every host and one known_hosts file lists them all;
* its own ``supervisord`` (own config, unix socket and logs) with a program ``app`` that
  runs the sample app from ``<deploy_to>/current`` and an optional ``worker``.

All hosts share this filesystem, so each has its own ``deploy_to`` under its private dir.
Every daemon is a child process of the caller; the fleet records their PIDs and stops them
by PID (never by name, which could hit processes that are not ours), also at interpreter
exit via :mod:`atexit` so an aborted test run does not leak daemons.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import http.client
import importlib.util
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploytools.remote.supervisor import UnixTransport

__all__ = [
    "SAMPLE_APP_PORT",
    "Fleet",
    "FleetStartError",
    "SimHost",
    "sshd_path",
    "start_fleet",
    "write_sample_app",
]

SAMPLE_APP_PORT = 8000
KEEP_FLEET_ENV = "DEPLOYTOOLS_KEEP_FLEET"
MAX_HOSTS = 200

# What sshd gives a root session; daemons get it too, so a host never sees the
# controller's environment (PYTHONDONTWRITEBYTECODE, virtualenv, proxies, ...).
_HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Paths go unquoted into sshd_config and supervisord.conf ('%' is expanded by supervisor,
# whitespace splits sshd arguments), so only accept characters that need no quoting.
_SAFE_PATH_RE = re.compile(r"^[\w./@+=:,~-]+$")
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
_SSHD_READY_TIMEOUT = 10.0
_SUPERVISORD_READY_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0


class FleetStartError(RuntimeError):
    """The fleet (or one daemon of it) could not be started; the message has log tails."""


# --------------------------------------------------------------------------- helpers


def sshd_path() -> str | None:
    """The sshd binary, by absolute path: sshd refuses to run (re-exec) from a relative one."""
    if os.access("/usr/sbin/sshd", os.X_OK):
        return "/usr/sbin/sshd"
    found = shutil.which("sshd")
    return os.path.abspath(found) if found else None


def _host_python() -> str:
    """The interpreter hosts use: a login over SSH gets a clean PATH, so Debian's python3."""
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _is_root() -> bool:
    return os.geteuid() == 0


def _login_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _daemon_env(home: Path) -> dict[str, str]:
    """A minimal environment like init gives daemons, so hosts do not inherit ours."""
    entry = pwd.getpwuid(os.geteuid())
    return {
        "PATH": _HOST_PATH,
        "HOME": str(home),
        "USER": entry.pw_name,
        "LOGNAME": entry.pw_name,
        "LANG": "C.UTF-8",
    }


def _tail(path: Path, lines: int = 20) -> str:
    """Last lines of a log, for error messages that explain themselves."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no {path.name})"
    picked = text.strip().splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in picked) if picked else f"(empty {path.name})"


def _pid_alive(pid: int) -> bool:
    """True if pid names a live process; zombies count as gone (they hold no resources)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _pid_state(pid) not in (None, "Z", "X")


def _pid_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return None


def _port_free(address: str, port: int) -> bool:
    """Can a server bind address:port? Uses SO_REUSEADDR like sshd and the app do, so
    a port in TIME_WAIT counts as free and only a real listener counts as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def _ssh_banner(address: str, port: int, timeout: float) -> bool:
    """True once sshd accepts a connection and sends its banner (accepting alone is not
    enough: the kernel completes handshakes into the backlog of a frozen sshd too)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _check_path(path: Path, what: str) -> None:
    if not _SAFE_PATH_RE.match(str(path)):
        raise ValueError(
            f"{what} {str(path)!r} contains characters that sshd_config/supervisord.conf "
            "would misread (allowed: letters, digits and ./_@+=:,~-); use another root"
        )


def supervisor_proxy(socket_path: Path | str, timeout: float = 5.0) -> xmlrpc.client.ServerProxy:
    """An XML-RPC proxy to a supervisord unix socket (stdlib only; answers in ~1 ms,
    where one ``supervisorctl`` call costs ~100 ms of interpreter start-up)."""
    return xmlrpc.client.ServerProxy(
        "http://localhost/RPC2", transport=UnixTransport(str(socket_path), timeout)
    )


# --------------------------------------------------------------------------- hosts


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

    def freeze_sshd(self) -> None:
        """SIGSTOP the listener: connects still complete (kernel backlog) but no banner
        ever comes, which is what a hung or black-holed host looks like to a client."""
        pid = self._running_sshd_pid()
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 2.0
        while _pid_state(pid) not in ("T", "t") and time.monotonic() < deadline:
            time.sleep(0.005)  # SIGSTOP is asynchronous; make the freeze observable

    def thaw_sshd(self) -> None:
        """SIGCONT the listener; queued connections then get their banners."""
        os.kill(self._running_sshd_pid(), signal.SIGCONT)

    def _running_sshd_pid(self) -> int:
        if self._sshd_proc is None or self._sshd_proc.poll() is not None:
            raise RuntimeError(f"{self.name}: sshd is not running")
        return self._sshd_proc.pid

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


def _wait_or_kill(proc: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait for a child until deadline, then SIGKILL it; always reap (no zombies)."""
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def _kill_orphan(pid: int) -> None:
    """SIGKILL a program left behind by a killed supervisord, with its process group
    (supervisord makes every program a group leader; stopasgroup relies on that)."""
    if not _pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- fleet

_LIVE_FLEETS: dict[int, Fleet] = {}
_LIVE_LOCK = threading.Lock()


@dataclass
class Fleet:
    """Hosts started together, sharing one client key and one known_hosts file."""

    root: Path
    hosts: list[SimHost]
    client_key: Path
    known_hosts: Path
    python: str
    user: str = "root"
    owns_root: bool = field(default=False, repr=False)
    _stopped: bool = field(default=False, repr=False, compare=False)
    _owner_pid: int = field(default_factory=os.getpid, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def host(self, name: str) -> SimHost:
        for sim in self.hosts:
            if sim.name == name:
                return sim
        known = ", ".join(h.name for h in self.hosts)
        raise KeyError(f"no host {name!r} in this fleet (hosts: {known})")

    def inventory_dict(
        self, groups: dict[str, list[str]] | None = None, **defaults: object
    ) -> dict:
        """A deploytools inventory for this fleet (plain data, ready for yaml.safe_dump).

        ``defaults`` keywords replace whole keys of ``defaults`` (e.g. ``source={...}``,
        which every real inventory needs). Each host entry carries its own ``deploy_to``
        and supervisor ``conf`` because the hosts share one filesystem (maps merge key by
        key, so ``supervisor.programs`` from the defaults still applies). A host
        in several groups is defined in the first and listed as ``name: null`` after.
        """
        merged: dict[str, Any] = {
            "python": self.python,
            "keep_releases": 5,
            "supervisor": {"programs": ["app"]},
            "health": {
                "url": f"http://{{host}}:{self._app_port()}/health",
                "expect_json": {"release": "{release}"},
                "timeout": 5,
                "interval": 0.2,
            },
        }
        if self.hosts and all(h.variant is not None for h in self.hosts):
            # Variant hosts carry their own health expectation (maps merge key by key,
            # so a default expect_json would also apply to a plain-text host).
            merged["health"].pop("expect_json")
        merged.update(copy.deepcopy(defaults))
        if groups is None:
            groups = {"prod": [h.name for h in self.hosts]}
        out_groups: dict[str, Any] = {}
        defined: set[str] = set()
        for group, names in groups.items():
            members: dict[str, Any] = {}
            for name in names:
                # A host is defined once; later groups name it with an empty entry.
                members[name] = (
                    None if name in defined else self._host_entry(self.host(name))
                )
                defined.add(name)
            out_groups[group] = {"hosts": members}
        return {
            "defaults": merged,
            "ssh": {
                "user": self.user,
                "identity": str(self.client_key),
                "known_hosts": str(self.known_hosts),
                "connect_timeout": 5,
            },
            "groups": out_groups,
        }

    def write_inventory(
        self, path: Path, groups: dict[str, list[str]] | None = None, **defaults: object
    ) -> Path:
        """Write :meth:`inventory_dict` as YAML and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.inventory_dict(groups, **defaults)
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    def _app_port(self) -> int:
        return self.hosts[0].app_port if self.hosts else SAMPLE_APP_PORT

    @staticmethod
    def _host_entry(sim: SimHost) -> dict[str, Any]:
        entry = {
            "host": sim.address,
            "port": sim.port,
            "deploy_to": str(sim.deploy_to),
            "supervisor": {"conf": str(sim.supervisor_conf)},
        }
        if sim.variant is not None:
            entry = merge_variant_settings(entry, sim.variant.host_settings())
        return entry

    def stop(self) -> None:
        """Stop every daemon this fleet started, by PID; idempotent.

        All hosts are signalled first and waited for afterwards, so stopping N hosts
        costs about as much as stopping one. supervisord gets SIGTERM (it stops its
        programs, with their process groups); if it has to be SIGKILLed, the program
        PIDs read from it beforehand are killed too.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        orphans = [pid for sim in self.hosts for pid in sim._supervised_pids()]
        for sim in self.hosts:
            sim._signal_supervisord_stop()
            sim._signal_sshd_stop()
        deadline = time.monotonic() + _STOP_TIMEOUT
        for sim in self.hosts:
            sim._reap_supervisord(deadline)
        for sim in self.hosts:
            sim._reap_sshd(deadline)
        for pid in orphans:
            _kill_orphan(pid)
        for pid in self._leftover_pids():
            _kill_orphan(pid)
        with _LIVE_LOCK:
            _LIVE_FLEETS.pop(id(self), None)
        if self.owns_root and os.environ.get(KEEP_FLEET_ENV) != "1":
            shutil.rmtree(self.root, ignore_errors=True)

    def _leftover_pids(self) -> list[int]:
        """Processes still running with one of this fleet's $HOMEs once its daemons are
        gone: agent sessions and the housekeeping they detach on purpose (setsid), which
        no longer descend from sshd. Stopped by PID."""
        return [pid for sim in self.hosts for pid in sim.session_pids()]

    def detach(self) -> Path:
        """Leave the daemons running after this process exits (``inv demo --keep``).

        Writes their PIDs to ``<root>/pids`` so they can still be stopped by PID later.
        """
        pids = [pid for sim in self.hosts
                for pid in (sim.supervisord_pid, sim.sshd_pid) if pid]
        path = self.root / "pids"
        path.write_text(" ".join(str(p) for p in pids) + "\n", encoding="utf-8")
        with _LIVE_LOCK:
            _LIVE_FLEETS.pop(id(self), None)
        return path

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _stop_live_fleets() -> None:
    """Last line of defence for aborted runs; skipped in forked children, which share
    the records but do not own the daemons."""
    with _LIVE_LOCK:
        fleets = list(_LIVE_FLEETS.values())
    for fleet in fleets:
        if fleet._owner_pid == os.getpid():
            with contextlib.suppress(Exception):
                fleet.stop()


# --------------------------------------------------------------------------- start


def _sshd_version(binary: str) -> tuple[int, int]:
    """OpenSSH version, to add options only newer servers understand (unknown = fatal)."""
    try:
        out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return (0, 0)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stdout + out.stderr)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _pick_network(count: int) -> tuple[list[str], int, int]:
    """Random 127.A.B.11.. addresses and ports that nothing listens on yet.

    Random bases keep two fleets (a test run and a benchmark) apart. A private Random
    is used because tests often seed the global one, which would make two processes
    pick the same base. As root, ssh uses port 22 and the app 8000; if a wildcard
    listener blocks those on every address, fall back to random high ports (below the
    ephemeral range).
    """
    rng = random.Random()
    ssh_pref = 22 if _is_root() else None
    attempts = 40
    for attempt in range(attempts):
        preferred = attempt < attempts // 2
        base = f"127.{rng.randint(20, 250)}.{rng.randint(1, 250)}"
        addresses = [f"{base}.{11 + i}" for i in range(count)]
        ssh_port = ssh_pref if preferred and ssh_pref else rng.randint(20000, 32000)
        app_port = SAMPLE_APP_PORT if preferred else rng.randint(20000, 32000)
        if ssh_port == app_port:
            continue
        if all(_port_free(a, p) for a in addresses for p in (ssh_port, app_port)):
            return addresses, ssh_port, app_port
    raise FleetStartError(f"found no free loopback addresses/ports for {count} hosts")


def _run_keygens(jobs: list[tuple[Path, str]]) -> None:
    """Generate ed25519 keys concurrently (one ssh-keygen per key, all at once)."""
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise FleetStartError("ssh-keygen not found (install openssh-client)")
    procs = []
    for path, comment in jobs:
        for stale in (path, path.with_name(path.name + ".pub")):
            stale.unlink(missing_ok=True)  # ssh-keygen would ask before overwriting
        procs.append(
            (
                path,
                subprocess.Popen(
                    [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                ),
            )
        )
    failures = []
    for path, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"{path}: {out.decode(errors='replace').strip()}")
    if failures:
        raise FleetStartError("ssh-keygen failed:\n" + "\n".join(failures))


def _public_key(path: Path) -> str:
    """'ssh-ed25519 AAAA...' from a .pub file, without the comment."""
    keytype, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"{keytype} {blob}"


def _sshd_config_text(sim: SimHost, version: tuple[int, int]) -> str:
    lines = [
        f"ListenAddress {sim.address}",
        f"Port {sim.port}",
        f"HostKey {sim.host_key}",
        f"PidFile {sim.root / 'sshd.pid'}",
        f"AuthorizedKeysFile {sim.authorized_keys}",
        "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "UseDNS no",
        "MaxStartups 200",
        "MaxSessions 100",
        "PrintMotd no",
        "LogLevel ERROR",
        "Subsystem sftp internal-sftp",
    ]
    if version >= (7, 8):
        # A home of its own per host, as separate machines have. It also keeps the
        # controller's ~/.bashrc (which bash sources for every SSH command) out: here it
        # runs `pyenv init`, which put pyenv shims first on PATH and cost ~120 ms per
        # exec; with it, a warm exec takes ~4 ms. Sessions still start in the passwd
        # home directory (sshd chdirs there), only $HOME changes.
        lines.append(f"SetEnv HOME={sim.home}")
    if version >= (9, 8):
        # 9.8+ penalises sources with failed auths; every client here is 127.0.0.1, so
        # one test that expects a refusal could lock out the next one.
        lines.append("PerSourcePenalties no")
    return "\n".join(lines) + "\n"


def _supervisord_conf_text(sim: SimHost, python: str) -> str:
    root = sim.root
    program_common = [
        f"directory={sim.deploy_to / 'current'}",
        "autostart=false",
        "autorestart=true",
        "startsecs=1",
        "startretries=1",
        "stopwaitsecs=5",
        "stopasgroup=true",
        "killasgroup=true",
    ]
    lines = [
        "[unix_http_server]",
        f"file={sim.supervisor_socket}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"pidfile={root / 'supervisord.pid'}",
        f"logfile={sim.supervisord_log}",
        "logfile_maxbytes=10MB",
        "logfile_backups=0",
        f"childlogdir={root / 'childlogs'}",
        "nodaemon=true",
        f"identifier={sim.name}",
    ]
    if _is_root():
        lines.append("user=root")  # silences the "running as root" CRIT line; no-op
    lines += [
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{sim.supervisor_socket}",
        "",
        "[program:app]",
        f"command={python} app.py --bind {sim.address} --port {sim.app_port}",
        *program_common,
        f"stdout_logfile={root / 'app.out.log'}",
        f"stderr_logfile={root / 'app.err.log'}",
        "",
        "[program:worker]",
        f"command={python} worker.py",
        *program_common,
        f"stdout_logfile={root / 'worker.out.log'}",
        f"stderr_logfile={root / 'worker.err.log'}",
    ]
    return "\n".join(lines) + "\n"


def start_fleet(count: int, root: Path | None = None, prefix: str = "web") -> Fleet:
    """Start ``count`` simulated hosts named ``{prefix}1..{prefix}N``; see the module doc.

    All daemons are launched before any is waited for, so the fleet is ready in about
    the time one supervisord takes to boot. On any failure everything started so far is
    stopped and :class:`FleetStartError` says why, with the daemon's log tail.
    """
    if not 1 <= count <= MAX_HOSTS:
        raise ValueError(f"count must be 1..{MAX_HOSTS}, got {count}")
    if not re.match(r"^[A-Za-z][A-Za-z0-9_-]*$", prefix):
        raise ValueError(f"prefix must be letters, digits, '_' or '-', got {prefix!r}")
    sshd = sshd_path()
    if sshd is None:
        raise FleetStartError("sshd not found (install openssh-server)")
    if importlib.util.find_spec("supervisor") is None:
        raise FleetStartError(f"supervisor is not importable by {sys.executable}")

    owns_root = root is None
    base = Path(tempfile.mkdtemp(prefix="dt-fleet-")) if root is None else Path(root).resolve()
    base.mkdir(parents=True, exist_ok=True)
    names = [f"{prefix}{i}" for i in range(1, count + 1)]
    try:
        _check_path(base, "fleet root")
        for name in names:
            if (base / name).exists():
                raise FileExistsError(f"{base / name} already exists; use a fresh fleet root")
        sock = base / names[-1] / "supervisor.sock"
        if len(str(sock)) > _UNIX_PATH_MAX:
            raise ValueError(
                f"unix socket path too long ({len(str(sock))} > "
                f"{_UNIX_PATH_MAX}): {sock}; use a shorter fleet root"
            )
    except BaseException:
        if owns_root:
            shutil.rmtree(base, ignore_errors=True)
        raise

    fleet = Fleet(
        root=base,
        hosts=[],
        client_key=base / "client_key",
        known_hosts=base / "known_hosts",
        python=_host_python(),
        user=_login_user(),
        owns_root=owns_root,
    )
    with _LIVE_LOCK:
        _LIVE_FLEETS[id(fleet)] = fleet
    try:
        _start_hosts(fleet, names, sshd)
    except BaseException:
        fleet.stop()
        raise
    return fleet


def _start_hosts(fleet: Fleet, names: list[str], sshd: str) -> None:
    addresses, ssh_port, app_port = _pick_network(len(names))
    for name, address in zip(names, addresses, strict=True):
        hroot = fleet.root / name
        (hroot / "childlogs").mkdir(parents=True)
        (hroot / "home").mkdir(mode=0o700)
        deploy_to = hroot / "srv" / "app"
        deploy_to.mkdir(parents=True)
        fleet.hosts.append(
            SimHost(
                name=name,
                address=address,
                port=ssh_port,
                root=hroot,
                deploy_to=deploy_to,
                supervisor_conf=hroot / "supervisord.conf",
                supervisor_socket=hroot / "supervisor.sock",
                app_port=app_port,
                sshd_binary=sshd,
            )
        )

    _run_keygens(
        [(fleet.client_key, "deploytools-fleet-client")]
        + [(h.host_key, f"{h.name}-hostkey") for h in fleet.hosts]
    )
    fleet.client_key.chmod(0o600)
    client_pub = _public_key(fleet.client_key)
    version = _sshd_version(sshd)
    known = []
    for sim in fleet.hosts:
        sim.authorized_keys.write_text(f"{client_pub} deploytools-fleet-client\n")
        sim.sshd_config.write_text(_sshd_config_text(sim, version))
        sim.supervisor_conf.write_text(_supervisord_conf_text(sim, fleet.python))
        where = sim.address if sim.port == 22 else f"[{sim.address}]:{sim.port}"
        known.append(f"{where} {_public_key(sim.host_key)}\n")
    fleet.known_hosts.write_text("".join(known))

    if _is_root():
        # Privilege-separation dir; sshd refuses to start without it.
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)

    for sim in fleet.hosts:  # launch everything, then wait: boots overlap
        sim._launch_sshd()
        sim._launch_supervisord()
    sshd_deadline = time.monotonic() + _SSHD_READY_TIMEOUT
    for sim in fleet.hosts:
        sim._wait_sshd(sshd_deadline)
    supervisord_deadline = time.monotonic() + _SUPERVISORD_READY_TIMEOUT
    for sim in fleet.hosts:
        sim._wait_supervisord(supervisord_deadline)


# --------------------------------------------------------------------------- sample app

_APP_PY = '''\
"""Sample app for deploytools' simulated fleet: a stdlib HTTP server run by supervisord.

GET /health reports which release the process really runs from (its cwd), so a deploy
can prove that a restart picked up the new code.
"""

import argparse
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sampleapp import views


def read_setting(name):
    """Value of NAME from ./.env (KEY=VALUE lines), or None."""
    try:
        with open(".env", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):]
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#") and key.strip() == name:
            return value.strip().strip("\\"'")
    return None


def read_revision():
    try:
        with open("REVISION", encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def health_payload(mode):
    """(content type, body) of /health in the other modes real apps use: the git
    revision under "release" (REPORT_REVISION in ./.env stands in for a build that
    reports another one), or plain text naming the release."""
    release = os.path.basename(os.path.realpath(os.getcwd()))
    if mode == "text":
        return "text/plain; charset=utf-8", ("ok %s\\n" % release).encode()
    revision = read_setting("REPORT_REVISION") or read_revision()
    body = {"status": "ok", "release": revision, "version": views.VERSION, "pid": os.getpid()}
    return "application/json", json.dumps(body).encode("utf-8")


class Handler(BaseHTTPRequestHandler):
    server_version = "sampleapp/" + views.VERSION

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/health" and getattr(views, "HEALTH_MODE", "ok") != "ok":
            self.broken_health(views.HEALTH_MODE)
        if path == "/health" and self.server.health_mode != "release":
            self.reply(views.HEALTH_STATUS, *health_payload(self.server.health_mode))
        elif path == "/health":
            status = views.HEALTH_STATUS
            body = json.dumps({
                "status": "ok" if status == 200 else "error",
                "release": os.path.basename(os.path.realpath(os.getcwd())),
                "revision": read_revision(),
                "version": views.VERSION,
                "pid": os.getpid(),
                "env": read_setting("DEMO_SETTING"),
            }).encode("utf-8")
            self.reply(status, "application/json", body)
        elif path == "/":
            self.reply(200, "text/plain; charset=utf-8", (views.greeting() + "\\n").encode())
        else:
            self.reply(404, "text/plain; charset=utf-8", b"not found\\n")

    def broken_health(self, mode):
        """Answer /health the way broken proxies and apps do (see write_sample_app)."""
        if mode == "garbage":
            self.wfile.write(b"this is not HTTP\\r\\n\\r\\n")
        else:  # "truncated": the body ends before its Content-Length
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"status": "ok", "rel')
        self.close_connection = True

    def reply(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # no request log on stderr


class Server(ThreadingHTTPServer):
    allow_reuse_address = True  # a restart rebinds at once, even with TIME_WAIT sockets
    daemon_threads = True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--health-mode", choices=("release", "revision", "text"),
                        default="release")
    args = parser.parse_args(argv)
    server = Server((args.bind, args.port), Handler)
    server.health_mode = args.health_mode

    def on_signal(signum, frame):
        # shutdown() waits for serve_forever(), which runs in this very thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"sampleapp {views.VERSION} pid {os.getpid()} on {args.bind}:{args.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

_WORKER_PY = '''\
"""Sample background worker: sleeps until supervisord stops it."""

import signal
import sys
import time


def main():
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
'''

_VIEWS_PY = '''\
"""Views of the sample app; VERSION and HEALTH_STATUS are baked in when it is written."""

VERSION = {version!r}
HEALTH_STATUS = {health_status!r}


def greeting():
    return f"hello from {{VERSION}}"
'''


def _filler_module(index: int) -> str:
    """Deterministic ballast module of roughly 1-10 KB (size varies with index)."""
    parts = [f'"""Filler module {index:04d} of the sample app: benchmark ballast."""\n']
    table = ", ".join(str((index * 7919 + k * 104729) % 1000003) for k in range(12))
    parts.append(f"\nTABLE = ({table})\n")
    for j in range(5 + (index * 37) % 40):
        parts.append(
            f"\n\ndef f{index:04d}_{j:02d}(x, scale={j + 1}):\n"
            f'    """Mix x with the table (filler {index}.{j})."""\n'
            f"    total = x * scale\n"
            f"    for k, value in enumerate(TABLE):\n"
            f"        total = (total * 31 + value + k + {index + j}) % 1000003\n"
            f"    return total\n"
        )
    return "".join(parts)


def write_sample_app(
    dest: Path,
    version: str = "v1",
    *,
    health_status: int = 200,
    crash_on_import: bool = False,
    extra_modules: int = 0,
    health_mode: str = "ok",
    boot_delay: float = 0,
) -> None:
    """Write the stdlib-only sample app into ``dest`` (a source dir or a release dir).

    ``health_status`` makes /health fail (e.g. 500) and ``crash_on_import`` makes the app
    die at start, to exercise health-check and spawn-error rollbacks; ``extra_modules``
    adds that many never-imported modules under ``sampleapp/mods`` to make it bigger;
    ``health_mode`` "garbage" or "truncated" makes /health answer malformed HTTP;
    ``boot_delay`` makes the app take that many seconds to boot before it listens (as
    real apps do: what a balancer drain has to cover).
    Files are overwritten, nothing is deleted.
    """
    dest = Path(dest)
    pkg = dest / "sampleapp"
    pkg.mkdir(parents=True, exist_ok=True)
    (dest / "app.py").write_text(_APP_PY, encoding="utf-8")
    (dest / "worker.py").write_text(_WORKER_PY, encoding="utf-8")
    (pkg / "__init__.py").write_text('"""The sample app package."""\n', encoding="utf-8")
    views = _VIEWS_PY.format(version=version, health_status=int(health_status))
    if health_mode != "ok":  # "garbage" (not HTTP at all) or "truncated" (short body)
        views += f"\nHEALTH_MODE = {health_mode!r}\n"
    if crash_on_import:
        views += '\n\nraise RuntimeError("boom: crash on import")\n'
    if boot_delay > 0:
        views += f"\n\nimport time as _time\n\n_time.sleep({float(boot_delay)!r})  # boot delay\n"
    (pkg / "views.py").write_text(views, encoding="utf-8")
    if extra_modules > 0:
        mods = pkg / "mods"
        mods.mkdir(exist_ok=True)
        (mods / "__init__.py").write_text('"""Ballast modules (never imported)."""\n')
        for index in range(extra_modules):
            (mods / f"m{index:04d}.py").write_text(_filler_module(index), encoding="utf-8")


# --------------------------------------------------------------------------- variants
#
# Real fleets are not configured like the plain host above. Each Variant is one way a
# team really sets up supervisord, the app and the host (the ways that broke
# deploytools in issue 11), so the suite and benchmarks/proof.py run against them.

HEALTH_MODES = ("release", "revision", "text")
APP_KINDS = ("stdlib", "gunicorn")
GUNICORN_REQUIREMENTS = "gunicorn>=21\n"
PYPY = "/usr/bin/pypy3"


@dataclass(frozen=True)
class Variant:
    """How one simulated host differs from the plain one.

    * ``startsecs``: supervisord's RUNNING threshold (0 = RUNNING right after fork).
    * ``stopasgroup``: stopasgroup/killasgroup on every program (off leaves children).
    * ``worker_procs``: >1 makes ``worker`` a group of that many processes, deployed
      as ``worker:*`` beside ``app``.
    * ``health``: what /health reports: the release id (JSON), the git revision (JSON
      ``release`` field) or plain text ``ok <release>``; the inventory expects the same.
    * ``app``: ``stdlib`` (the sample app) or ``gunicorn`` (a master with
      ``gunicorn_workers`` workers, installed into the release's venv from PyPI).
    * ``stubborn_workers``: gunicorn workers that outlive their master (see
      ``_GUNICORN_STUBBORN_PY``), the case stopasgroup exists for.
    * ``symlinked_deploy_to``: deploy_to is ``.../srv/app -> data/app``.
    * ``python``: the host's app interpreter (e.g. PyPy), also the agent's.
    """

    name: str
    startsecs: int = 1
    stopasgroup: bool = True
    worker_procs: int = 0
    health: str = "release"
    app: str = "stdlib"
    gunicorn_workers: int = 2
    stubborn_workers: bool = False
    symlinked_deploy_to: bool = False
    python: str | None = None

    def __post_init__(self) -> None:
        if self.health not in HEALTH_MODES:
            raise ValueError(f"health must be one of {HEALTH_MODES}, got {self.health!r}")
        if self.app not in APP_KINDS:
            raise ValueError(f"app must be one of {APP_KINDS}, got {self.app!r}")
        if self.health == "revision" and self.app != "stdlib":
            raise ValueError("health 'revision' is only implemented by the stdlib app")

    def programs(self) -> list[str]:
        """What the inventory deploys: app, and the worker group when there is one."""
        return ["app", "worker:*"] if self.worker_procs > 1 else ["app"]

    def health_expectation(self) -> dict[str, Any]:
        """The inventory's health expectation matching what the app reports."""
        if self.health == "text":
            return {"expect_text": "ok {release}"}
        if self.health == "revision":
            return {"expect_json": {"release": "{revision}"}}
        return {"expect_json": {"release": "{release}"}}

    def host_settings(self) -> dict[str, Any]:
        """The per-host inventory settings this variant needs."""
        settings: dict[str, Any] = {
            "supervisor": {"programs": self.programs()},
            "health": self.health_expectation(),
        }
        if self.python:
            settings["python"] = self.python
        if self.app == "gunicorn":
            settings["venv"] = {"requirements": "requirements.txt"}
        return settings


def merge_variant_settings(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Maps merge key by key (as the inventory does), other values replace."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_variant_settings(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _variant_program_lines(sim: SimHost, variant: Variant) -> list[str]:
    """Settings every program of this variant shares."""
    group = "true" if variant.stopasgroup else "false"
    return [
        f"directory={sim.deploy_to / 'current'}",
        "autostart=false",
        "autorestart=true",
        f"startsecs={variant.startsecs}",
        "startretries=1",
        # Stubborn gunicorn workers ignore SIGTERM: do not wait long for them.
        f"stopwaitsecs={2 if variant.stubborn_workers else 5}",
        f"stopasgroup={group}",
        f"killasgroup={group}",
    ]


def _variant_app_command(sim: SimHost, variant: Variant, python: str) -> str:
    if variant.app == "gunicorn":
        parts = [
            str(sim.deploy_to / "current" / ".venv" / "bin" / "gunicorn"),
            f"--workers {variant.gunicorn_workers}",
            f"--bind {sim.address}:{sim.app_port}",
            # Old workers that survive a stop still hold the old listening socket; with
            # SO_REUSEPORT the new master binds anyway (else it would die on EADDRINUSE
            # and the survivors would be the only ones serving).
            "--reuse-port",
            "--graceful-timeout 30",
        ]
        if variant.stubborn_workers:
            parts.append("--config gunicorn_stubborn.py")
        return " ".join(parts + ["wsgiapp:app"])
    return (f"{python} app.py --bind {sim.address} --port {sim.app_port} "
            f"--health-mode {variant.health}")


def _variant_supervisord_conf_text(sim: SimHost, python: str, variant: Variant) -> str:
    """The plain host's supervisord.conf with its programs replaced by the variant's."""
    head = _supervisord_conf_text(sim, python).split("\n[program:app]", 1)[0]
    common = _variant_program_lines(sim, variant)
    root = sim.root
    lines = [
        head.rstrip("\n"),
        "",
        "[program:app]",
        f"command={_variant_app_command(sim, variant, python)}",
        *common,
        f"stdout_logfile={root / 'app.out.log'}",
        f"stderr_logfile={root / 'app.err.log'}",
        "",
        "[program:worker]",
        f"command={python} worker.py",
        *common,
        f"stdout_logfile={root / 'worker.out.log'}",
        f"stderr_logfile={root / 'worker.err.log'}",
    ]
    if variant.worker_procs > 1:
        lines[-2:] = [
            f"numprocs={variant.worker_procs}",
            "process_name=%(program_name)s_%(process_num)d",
            f"stdout_logfile={root / 'worker-%(process_num)d.out.log'}",
            f"stderr_logfile={root / 'worker-%(process_num)d.err.log'}",
        ]
    return "\n".join(lines) + "\n"


def _apply_variant(sim: SimHost, variant: Variant, fleet_python: str) -> None:
    """Reshape a started (still empty) host into the variant; supervisord is relaunched
    by the caller so it reads the new config."""
    if variant.python and not os.access(variant.python, os.X_OK):
        raise FleetStartError(f"{variant.name}: interpreter {variant.python} is not "
                              "installed (run .ci/install)")
    if variant.symlinked_deploy_to:
        real = sim.deploy_to.parent / "data" / sim.deploy_to.name
        real.parent.mkdir(parents=True, exist_ok=True)
        sim.deploy_to.rename(real)
        sim.deploy_to.symlink_to(os.path.join("data", sim.deploy_to.name))
    sim.variant = variant
    sim.name = variant.name
    sim.supervisor_conf.write_text(
        _variant_supervisord_conf_text(sim, variant.python or fleet_python, variant))


def start_variant_fleet(variants: list[Variant], root: Path | None = None) -> Fleet:
    """Start one simulated host per variant, named after it; see :class:`Variant`.

    The hosts start plain (start_fleet) and are then reshaped while they are still
    empty: deploy_to moved behind a symlink, supervisord.conf rewritten and supervisord
    relaunched, all hosts at once.
    """
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or not all(re.match(r"^[A-Za-z][\w-]*$", n)
                                                 for n in names):
        raise ValueError(f"variant names must be unique host names, got {names}")
    fleet = start_fleet(len(variants), root=root, prefix="var")
    try:
        for sim, variant in zip(fleet.hosts, variants, strict=True):
            _apply_variant(sim, variant, fleet.python)
        for sim in fleet.hosts:
            sim._signal_supervisord_stop()
        deadline = time.monotonic() + _STOP_TIMEOUT
        for sim in fleet.hosts:
            sim._reap_supervisord(deadline)
        for sim in fleet.hosts:
            sim._launch_supervisord()
        deadline = time.monotonic() + _SUPERVISORD_READY_TIMEOUT
        for sim in fleet.hosts:
            sim._wait_supervisord(deadline)
    except BaseException:
        fleet.stop()
        raise
    return fleet


_WSGI_APP_PY = '''\
"""Sample WSGI app for gunicorn: /health reports the release the worker runs from."""

import json
import os

from sampleapp import views


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        body = json.dumps({
            "status": "ok",
            "release": os.path.basename(os.path.realpath(os.getcwd())),
            "version": views.VERSION,
            "pid": os.getpid(),
            "ppid": os.getppid(),
        }).encode("utf-8")
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    body = (views.greeting() + "\\n").encode("utf-8")
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

_GUNICORN_STUBBORN_PY = '''\
"""gunicorn settings for workers that outlive their master.

Stands in, deterministically, for workers busy with long requests when supervisord
stops a master without stopasgroup: the workers ignore SIGTERM, so the master waits
its graceful timeout and supervisord SIGKILLs it alone after stopwaitsecs; gunicorn's
own parent check (which would end them at their next request, a race) is disabled.
"""

import signal


def post_worker_init(worker):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker.is_parent_alive = lambda: True
'''


def write_variant_app(dest: Path, version: str = "v1", **options: Any) -> None:
    """The sample app (see write_sample_app) plus what the gunicorn variants run: a WSGI
    app, its requirements.txt and the stubborn-worker settings."""
    write_sample_app(dest, version, **options)
    dest = Path(dest)
    (dest / "wsgiapp.py").write_text(_WSGI_APP_PY, encoding="utf-8")
    (dest / "gunicorn_stubborn.py").write_text(_GUNICORN_STUBBORN_PY, encoding="utf-8")
    (dest / "requirements.txt").write_text(GUNICORN_REQUIREMENTS, encoding="utf-8")
