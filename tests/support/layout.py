"""What a simulated host holds and serves, read straight from its files and its app."""

from __future__ import annotations

import os
from pathlib import Path

from deploytools.sandbox import Fleet


def health_releases(fleet: Fleet) -> dict[str, str | None]:
    """What each host's app says it runs, straight from its /health endpoint."""
    out = {}
    for host in fleet.hosts:
        answer = host.health()
        out[host.name] = answer["release"] if answer else None
    return out


def release_dirs(deploy_to: Path) -> list[Path]:
    """The host's releases (hidden entries are partial builds or trash being deleted)."""
    return sorted(p for p in (deploy_to / "releases").iterdir() if not p.name.startswith("."))


def current_release(host_deploy_to: Path) -> str | None:
    link = host_deploy_to / "current"
    return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None
