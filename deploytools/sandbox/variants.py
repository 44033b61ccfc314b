"""Variants: the ways real teams set up supervisord, the app and the host."""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploytools.sandbox.app import write_sample_app
from deploytools.sandbox.env import _STOP_TIMEOUT, _SUPERVISORD_READY_TIMEOUT
from deploytools.sandbox.errors import FleetStartError
from deploytools.sandbox.fleet import Fleet, start_fleet
from deploytools.sandbox.host import SimHost
from deploytools.sandbox.supervisord import supervisord_conf_text

# --------------------------------------------------------------------------- variants
#
# Real fleets are not configured like the plain host above. Each Variant is one way a
# team really sets up supervisord, the app and the host (the ways that broke
# deploytools in issue 11), so the suite and benchmarks/proof.py run against them.

HEALTH_MODES = ("release", "revision", "text")
APP_KINDS = ("stdlib", "gunicorn")
PYPY = "/usr/bin/pypy3"
VARIANT_APP_DIR = Path(__file__).resolve().parent / "variant_app"


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
    """The plain host's supervisord.conf with its programs shaped by the variant."""
    return supervisord_conf_text(
        sim, _variant_app_command(sim, variant, python), f"{python} worker.py",
        _variant_program_lines(sim, variant), worker_procs=variant.worker_procs)


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




def write_variant_app(dest: Path, version: str = "v1", **options: Any) -> None:
    """The sample app (see write_sample_app) plus what the gunicorn variants run: a WSGI
    app, its requirements.txt and the stubborn-worker settings."""
    write_sample_app(dest, version, **options)
    dest = Path(dest)
    for name in ("wsgiapp.py", "gunicorn_stubborn.py", "requirements.txt"):
        shutil.copyfile(VARIANT_APP_DIR / name, dest / name)
