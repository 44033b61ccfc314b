"""Self-test of the simulated fleet: every other integration test trusts these hosts.

The fleet must behave like real hosts where deploytools cares: sshd enforces host keys
and key auth, supervisord answers and runs the app from ``current``, and stopping the
fleet leaves no process behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploytools.inventory import load_inventory
from deploytools.remote import protocol
from deploytools.sandbox import Fleet, SimHost, start_fleet, write_sample_app
from deploytools.transport import HostConnection
from tests.support.faults import freeze_sshd, thaw_sshd, write_crashing_app
from tests.support.fleets import make_fleet, require_sshd


def ssh(
    fleet: Fleet,
    sim: SimHost,
    *command: str,
    known_hosts: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with the real OpenSSH client, strict host key checking, no agent."""
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(fleet.client_key),
            "-p",
            str(sim.port),
            "-o",
            f"UserKnownHostsFile={known_hosts or fleet.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=5",
            f"{fleet.user}@{sim.address}",
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def banner(sim: SimHost, timeout: float = 0.3) -> bytes:
    """The first bytes sshd sends, or b'' when none arrive in time."""
    try:
        with socket.create_connection((sim.address, sim.port), timeout=timeout) as sock:
            return sock.recv(64)
    except OSError:
        return b""


def supervisorctl(sim: SimHost, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(sim.supervisor_conf), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def start_app(sims: list[SimHost]) -> None:
    """Release r1 into every host and start `app` via supervisorctl (all hosts at once)."""
    for sim in sims:
        release = sim.deploy_to / "releases" / "r1"
        if not release.exists():
            write_sample_app(release, "v1")
            (release / "REVISION").write_text("abc123\n")
            (sim.deploy_to / "current").symlink_to("releases/r1")
    procs = [supervisorctl(sim, "start", "app") for sim in sims]
    for proc in procs:
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0 or "already started" in out, out


@pytest.fixture()
def fleet() -> Iterator[Fleet]:
    """A fresh fleet per test (0.2 s to start): some tests stop or freeze its daemons."""
    yield from make_fleet(2)


def test_fleet_layout(fleet: Fleet) -> None:
    assert [h.name for h in fleet.hosts] == ["web1", "web2"]
    assert len({h.address for h in fleet.hosts}) == 2
    for sim in fleet.hosts:
        assert sim.deploy_to == sim.root / "srv" / "app" and sim.deploy_to.is_dir()
        assert not any(sim.deploy_to.iterdir())
        if os.geteuid() == 0:
            assert sim.port == 22
        assert sim.health() is None  # nothing deployed yet
    lines = fleet.known_hosts.read_text().splitlines()
    assert len(lines) == 2 and all(" ssh-ed25519 " in line for line in lines)


def test_ssh_accepts_client_key_with_strict_host_keys(fleet: Fleet) -> None:
    for sim in fleet.hosts:
        # Each host has its own $HOME, so the controller's ~/.bashrc (pyenv shims on
        # PATH) stays out and `python3` over SSH is the system one the inventory names.
        result = ssh(fleet, sim, 'echo "$HOME"; command -v python3')
        assert result.returncode == 0, result.stderr
        home, python = result.stdout.split()
        assert home == str(sim.home)
        if fleet.python == "/usr/bin/python3":
            assert python == fleet.python


def test_wrong_known_hosts_entry_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    web1, web2 = fleet.hosts
    lines = fleet.known_hosts.read_text().splitlines()
    # web1's address with web2's key: a man in the middle, as far as ssh can tell.
    swapped = lines[0].split()[0] + " " + " ".join(lines[1].split()[1:])
    wrong = tmp_path / "known_hosts"
    wrong.write_text(swapped + "\n")
    result = ssh(fleet, web1, "true", known_hosts=wrong)
    assert result.returncode == 255
    assert "IDENTIFICATION HAS CHANGED" in result.stderr or "verification failed" in result.stderr


def test_supervisord_answers(fleet: Fleet) -> None:
    procs = [supervisorctl(sim, "status") for sim in fleet.hosts]
    for proc in procs:
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode <= 3, out  # 3 = some program stopped, which all are
        assert "app" in out and "worker" in out
    for sim in fleet.hosts:
        with sim.supervisor_rpc() as rpc:
            assert rpc.supervisor.getState()["statename"] == "RUNNING"


def test_app_runs_from_current(fleet: Fleet) -> None:
    start_app(fleet.hosts)
    for sim in fleet.hosts:
        deadline = time.monotonic() + 5
        health = sim.health()
        while (health or {}).get("release") != "r1" and time.monotonic() < deadline:
            time.sleep(0.05)
            health = sim.health()
        assert health is not None, (sim.root / "app.err.log").read_text()
        with sim.supervisor_rpc() as rpc:
            info = rpc.supervisor.getProcessInfo("app")
        assert health == {
            "status": "ok",
            "release": "r1",
            "revision": "abc123",
            "version": "v1",
            "pid": info["pid"],
            "env": None,
        }


def test_freeze_thaw_and_restart_sshd(fleet: Fleet) -> None:
    sim = fleet.hosts[1]
    freeze_sshd(sim)
    try:
        assert banner(sim) == b""  # connect completes, no banner: a hung host
    finally:
        thaw_sshd(sim)
    assert banner(sim, timeout=2).startswith(b"SSH-")
    old_pid = sim.sshd_pid
    sim.stop_sshd()
    assert sim.sshd_pid is None and banner(sim) == b""
    sim.start_sshd()
    assert sim.sshd_pid not in (None, old_pid)
    result = ssh(fleet, sim, "true")  # same host key: known_hosts still matches
    assert result.returncode == 0, result.stderr


def test_inventory_matches_deploytools_schema(fleet: Fleet, tmp_path: Path) -> None:
    path = fleet.write_inventory(
        tmp_path / "inventory.yaml",
        groups={"prod": ["web1", "web2"], "canary": ["web1"]},
        source={"path": str(tmp_path)},
        supervisor={"programs": ["app", "worker"]},
    )
    inventory = load_inventory(path)
    web1 = inventory.hosts["web1"]
    sim = fleet.host("web1")
    assert (web1.address, web1.port, web1.deploy_to) == (sim.address, sim.port, str(sim.deploy_to))
    assert web1.get("supervisor.programs") == ("app", "worker")
    assert web1.get("supervisor.conf") == str(sim.supervisor_conf)
    assert web1.get("ssh.known_hosts") == str(fleet.known_hosts)
    assert inventory.groups == {"prod": ("web1", "web2"), "canary": ("web1",)}


def test_stop_ends_every_recorded_pid(fleet: Fleet) -> None:
    start_app(fleet.hosts)  # no-op when the app test already ran
    pids = [pid for sim in fleet.hosts for pid in (sim.sshd_pid, sim.supervisord_pid)]
    for sim in fleet.hosts:
        with sim.supervisor_rpc() as rpc:
            pids.append(rpc.supervisor.getProcessInfo("app")["pid"])
    assert all(pids)
    root = fleet.root
    started = time.monotonic()
    fleet.stop()
    assert time.monotonic() - started < 5
    fleet.stop()  # idempotent
    alive = [pid for pid in pids if _alive(pid)]
    assert not alive, f"still running: {alive}"
    assert all(sim.sshd_pid is None and sim.supervisord_pid is None for sim in fleet.hosts)
    assert root.exists() == (os.environ.get("DEPLOYTOOLS_KEEP_FLEET") == "1")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"


# ---------------------------------------------------------------- the sample app itself


def test_sample_app_variants(tmp_path: Path) -> None:
    write_sample_app(tmp_path / "ok", "v7", health_status=503)
    views = (tmp_path / "ok" / "sampleapp" / "views.py").read_text()
    assert "VERSION = 'v7'" in views and "HEALTH_STATUS = 503" in views
    for name in ("app.py", "worker.py", "sampleapp/__init__.py"):
        path = tmp_path / "ok" / name
        compile(path.read_text(), str(path), "exec")

    write_crashing_app(tmp_path / "crash")
    result = subprocess.run(
        [sys.executable, "-c", "import sampleapp.views"],
        cwd=tmp_path / "crash",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0 and "boom: crash on import" in result.stderr


def test_sample_app_extra_modules_are_deterministic(tmp_path: Path) -> None:
    write_sample_app(tmp_path / "a", extra_modules=30)
    write_sample_app(tmp_path / "b", extra_modules=30)
    mods = sorted((tmp_path / "a" / "sampleapp" / "mods").glob("m*.py"))
    assert [m.name for m in mods][:2] == ["m0000.py", "m0001.py"] and len(mods) == 30
    for mod in mods:
        assert 1_000 <= mod.stat().st_size <= 10_000
        assert mod.read_bytes() == (tmp_path / "b" / "sampleapp" / "mods" / mod.name).read_bytes()
        compile(mod.read_text(), str(mod), "exec")


def test_stop_ends_agent_sessions_left_behind(tmp_path: Path) -> None:
    """An agent session (and anything it detached) does not descend from the listening
    sshd; stopping the fleet must still end it, by PID."""
    require_sshd()
    fleet = start_fleet(1)
    inventory = fleet.write_inventory(tmp_path / "inv.yaml", source={"path": str(tmp_path)})
    host = load_inventory(inventory).hosts["web1"]
    conn = HostConnection(host)
    try:
        conn.open()
        conn.call(protocol.Releases(deploy_to=host.deploy_to))
        sessions = fleet._leftover_pids()
        assert sessions, "the agent session runs with the host's $HOME"
        fleet.stop()
        deadline = time.monotonic() + 5
        while any(os.path.exists(f"/proc/{pid}") for pid in sessions) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in sessions if os.path.exists(f"/proc/{pid}")]
    finally:
        conn.close()
        fleet.stop()
