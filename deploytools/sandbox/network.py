"""Loopback addresses and ports for a fleet, and the checks that a daemon is listening."""

from __future__ import annotations

import random
import socket

from deploytools.sandbox.env import SAMPLE_APP_PORT, _is_root
from deploytools.sandbox.errors import FleetStartError


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
