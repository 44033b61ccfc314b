"""Inventory documents for tests that need no fleet."""

from __future__ import annotations

from typing import Any


def one_host_inventory(**defaults: object) -> dict[str, Any]:
    """The smallest valid inventory: one host in group `prod` (defaults overridable)."""
    return {
        "defaults": {"deploy_to": "/srv/app", "source": {"path": "."},
                     "supervisor": {"programs": ["web"]}, **defaults},
        "groups": {"prod": {"hosts": {"web1": {"host": "127.0.0.1"}}}},
    }
