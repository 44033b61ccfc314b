"""Errors the sandbox raises to its callers."""

from __future__ import annotations


class FleetStartError(RuntimeError):
    """The fleet (or one daemon of it) could not be started; the message has log tails."""
