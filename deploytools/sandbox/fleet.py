"""A fleet of simulated hosts: start, stop, and the at-exit cleanup of live fleets."""

from __future__ import annotations

import atexit
import contextlib
import copy
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploytools.inventory import merge_settings
from deploytools.sandbox.env import (
    _SSHD_READY_TIMEOUT,
    _STOP_TIMEOUT,
    _SUPERVISORD_READY_TIMEOUT,
    _UNIX_PATH_MAX,
    KEEP_FLEET_ENV,
    MAX_HOSTS,
    SAMPLE_APP_PORT,
    _check_path,
    _host_python,
    _is_root,
    _login_user,
)
from deploytools.sandbox.errors import FleetStartError
from deploytools.sandbox.host import SimHost
from deploytools.sandbox.network import _pick_network
from deploytools.sandbox.processes import _kill_orphan
from deploytools.sandbox.sshd import (
    _public_key,
    _run_keygens,
    _sshd_config_text,
    _sshd_version,
    sshd_path,
)
from deploytools.sandbox.supervisord import _supervisord_conf_text

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
    app_server: bool = True  # False: `app` is an idle process and there is no /health
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
        if not self.app_server:
            merged.pop("health")
        elif self.hosts and all(h.variant is not None for h in self.hosts):
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
            # merged as the inventory merges them; copied so hosts never share a map
            entry = merge_settings(entry, copy.deepcopy(sim.variant.host_settings()))
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


def start_fleet(count: int, root: Path | None = None, prefix: str = "web",
                app_server: bool = True) -> Fleet:
    """Start ``count`` simulated hosts named ``{prefix}1..{prefix}N``; see the module doc.

    ``app_server=False`` runs an idle process as ``app`` and writes inventories without
    a health check: hundreds of hosts then cost an sshd and a supervisord each.

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
        app_server=app_server,
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
        sim.supervisor_conf.write_text(_supervisord_conf_text(sim, fleet.python,
                                                              fleet.app_server))
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
