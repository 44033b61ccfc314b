"""Python hooks on the controller, for projects that use the task collection.

Remote hooks (the inventory's `hooks:`) are shell commands on each host. Some steps
belong on the controller instead: tell a load balancer to drain a host, post to chat,
check an external system before switching. Register a function in your `tasks.py`::

    from deploytools import local_hooks

    @local_hooks.on("before_switch")
    def drain(ctx):
        ctx.connection.run(f"touch {ctx.deploy_to}/shared/maintenance")  # fabric Connection

Points: `after_prepare` and `before_switch` (raising fails that host: nothing switched
there), `after_restart` (the host is healthy on the new release), `after_failure` (the
host failed). Exceptions from the last two are reported but change no outcome: the host
is already where it is.

`before_switch` runs for every host before the first batch (migrations, checks); a
rolling drain belongs in the per-host points, which run inside each host's batch:
`before_restart` (the host is about to be stopped: take it out of rotation; raising
fails that host before anything switched there) and `after_restart` (healthy again:
put it back). Local `before_restart` hooks run just before the host's activation
request, that is just before the symlink switch, which changes nothing its running
process serves; the inventory's shell `before_restart` hooks run on the host after
the switch, right before the stop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deploytools.errors import RemoteError

POINTS = ("after_prepare", "before_switch", "after_restart", "after_failure", "before_restart")
VETO_POINTS = ("after_prepare", "before_switch", "before_restart")


@dataclass(frozen=True)
class HookContext:
    """What a local hook gets: the host, the releases involved, and its open connection."""

    point: str
    name: str
    address: str
    deploy_to: str
    release: str | None
    previous: str | None
    settings: Any
    connection: Any  # fabric.Connection, open and host-key verified (None in a dry run)


_registry: dict[str, list[Callable[[HookContext], None]]] = {point: [] for point in POINTS}


def on(point: str) -> Callable[[Callable[[HookContext], None]], Callable[[HookContext], None]]:
    """Decorator: call the function for every host at `point`."""
    if point not in POINTS:
        raise ValueError(f"unknown hook point {point!r} (known: {', '.join(POINTS)})")

    def register(function: Callable[[HookContext], None]) -> Callable[[HookContext], None]:
        _registry[point].append(function)
        return function

    return register


def registered(point: str) -> bool:
    return bool(_registry.get(point))


def clear() -> None:
    """Forget every registered hook (tests, long-lived processes)."""
    for functions in _registry.values():
        functions.clear()


def fire(point: str, context: HookContext) -> list[str]:
    """Run the point's hooks; a veto point raises on the first failure, the others collect
    the failures and return them."""
    problems = []
    for function in _registry[point]:
        try:
            function(context)
        except Exception as exc:
            message = f"local {point} hook {function.__name__} failed: {type(exc).__name__}: {exc}"
            if point in VETO_POINTS:
                raise RemoteError(context.name, message) from exc
            problems.append(message)
    return problems
