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

One module per job: ``env`` (paths, timeouts, identity), ``errors``, ``processes``,
``network``, ``sshd``, ``supervisord``, ``host`` (SimHost), ``fleet`` (Fleet,
start_fleet), ``app`` (+ ``sample_app/``), ``variants`` (+ ``variant_app/``), and for the
balancer tests ``balancer`` (HAProxy) and ``load`` (LoadGenerator). This package
re-exports what callers use.
"""

from deploytools.sandbox.app import write_sample_app
from deploytools.sandbox.env import SAMPLE_APP_PORT
from deploytools.sandbox.errors import FleetStartError
from deploytools.sandbox.fleet import Fleet, start_fleet
from deploytools.sandbox.host import SimHost
from deploytools.sandbox.sshd import sshd_path
from deploytools.sandbox.variants import PYPY, Variant, start_variant_fleet, write_variant_app

__all__ = [
    "PYPY",
    "SAMPLE_APP_PORT",
    "Fleet",
    "FleetStartError",
    "SimHost",
    "Variant",
    "sshd_path",
    "start_fleet",
    "start_variant_fleet",
    "write_sample_app",
    "write_variant_app",
]
