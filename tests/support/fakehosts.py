"""A fake connection backend: hosts that answer the agent's ops from a real on-disk
layout (deploytools.remote.releases.Layout in a temp dir) without SSH, supervisor or an
app, so the orchestration (batches, stop rules, failure policy, rollback choice, exit
codes, interrupts) runs in milliseconds.

What a host does wrong is scripted per host: unreachable, lock held by another run, an
op that fails, an activation whose health check fails (and, optionally, whose switch
back fails too), a callback before an op (to send a signal mid-step). The real-fleet
tests check the same behaviours against sshd and supervisord.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploytools.costs import CostBook
from deploytools.errors import UnreachableError
from deploytools.inventory import Host, parse_inventory
from deploytools.remote import protocol
from deploytools.remote.releases import Layout
from deploytools.transport import AgentCall, Answer


@dataclass
class Script:
    """How one fake host misbehaves (nothing, by default)."""

    unreachable: bool = False
    fail: dict[str, str] = field(default_factory=dict)  # op -> error message
    unhealthy: set[str] = field(default_factory=set)  # releases whose health check fails
    rollback_fails: bool = False  # the switch back fails too
    before: dict[str, Callable[[], None]] = field(default_factory=dict)  # op -> callback


class FakeHost:
    """One host: its deploy_to is a temp dir with releases/, current and the lock."""

    def __init__(self, name: str, deploy_to: Path) -> None:
        self.name = name
        self.layout = Layout(str(deploy_to))
        self.layout.ensure()
        self.script = Script()
        self.calls: list[str] = []  # ops, in the order they arrived
        self.restarts = 0

    # ------------------------------------------------------------------ state for tests

    @property
    def current(self) -> str | None:
        return self.layout.current_id()

    def locked(self) -> bool:
        return self.layout.lock_owner() is not None

    def install(self, *release_ids: str) -> None:
        """Releases that served here, oldest first; the last is current."""
        for release_id in release_ids:
            os.makedirs(self.layout.release(release_id), exist_ok=True)
            self.layout.switch(release_id)
            self.layout.record_served(release_id, "deploy")

    # ------------------------------------------------------------------ ops

    def answer(self, request: protocol.Request, answer: Answer | None) -> dict[str, Any]:
        op = request.op
        self.calls.append(op)
        if op in self.script.before:
            self.script.before[op]()
        if op in self.script.fail:
            raise _Failed(self.script.fail[op])
        return getattr(self, "op_" + op)(request, answer)

    def op_preflight(self, req: Any, answer: Answer | None) -> dict[str, Any]:
        layout = self.layout
        result: dict[str, Any] = {
            "python": {"version": "3.11", "magic": "fake", "cache_tag": "fake"},
            "current": layout.current_id(), "releases": layout.describe(), "problems": []}
        lock = req.lock
        if req.read_only:
            result["lock"] = {"acquired": False, "holder": layout.lock_owner()}
        elif lock:
            holder = layout.acquire_lock(lock["owner"])
            result["lock"] = {"acquired": holder is None, "holder": holder}
        return result

    def op_prepare(self, req: Any, answer: Answer | None) -> dict[str, Any]:
        assert answer is not None
        _, upload = answer({"base": None, "files": {}})
        if upload is not None:
            for _ in upload():
                pass
        os.makedirs(self.layout.release(req.release_id), exist_ok=True)
        return {"release": req.release_id, "files": req.file_count, "timings": {},
                "bytecode": {}}

    def op_activate(self, req: Any, answer: Answer | None) -> dict[str, Any]:
        target, fallback = req.target, req.fallback
        result: dict[str, Any] = {"target": target, "fallback": fallback}
        result["attempt"] = attempt = self._switch_restart_check(target, req)
        if attempt["ok"]:
            return dict(result, outcome="healthy", release=target)
        result["error"] = attempt["error"]
        if req.mark_failed:
            self.layout.mark_failed(target, attempt["error"])
        if not fallback:
            return dict(result, outcome="failed", release=self.current)
        result["rollback"] = back = self._switch_restart_check(
            fallback, req, fails=self.script.rollback_fails)
        return dict(result, outcome="rolled_back" if back["ok"] else "rollback_failed",
                    release=self.current)

    def _switch_restart_check(self, target: str, req: Any,
                              fails: bool = False) -> dict[str, Any]:
        self.layout.switch(target)
        self.restarts += 1
        if fails or target in self.script.unhealthy:
            return {"ok": False, "error": f"health check failed on {target}",
                    "restart_started": time.time()}
        self.layout.record_served(target, req.action or "deploy")
        return {"ok": True, "programs": [], "restart_started": time.time(),
                "healthy_at": time.time()}

    def op_hooks(self, req: Any, answer: Answer | None) -> dict[str, Any]:
        return {"hooks": []}

    def op_finish(self, req: Any, answer: Answer | None) -> dict[str, Any]:
        layout = self.layout
        layout.append_history(req.history)
        result: dict[str, Any] = {"removed": []}
        if req.keep_releases:
            result["removed"] = layout.cleanup(int(req.keep_releases))
        if req.discard_release:
            layout.discard(layout.release(req.discard_release))
        layout.release_lock(req.lock_token)
        return result

    def op_unlock(self, req: Any, answer: Answer | None) -> dict[str, Any]:
        owner = self.layout.lock_owner()
        removed = self.layout.release_lock(req.token, force=bool(req.force))
        return {"owner": owner, "removed": removed, "age_seconds": 0}

    def op_resolve_rollback(self, req: Any, answer: Answer | None
                            ) -> dict[str, Any]:
        target = req.to or self.layout.rollback_target()
        if not target:
            raise _Failed(f"no previous good release to roll back to (current: {self.current})")
        return {"current": self.current, "target": target}

    def op_releases(self, req: Any, answer: Answer | None) -> dict[str, Any]:
        return {"current": self.current, "releases": self.layout.describe(),
                "history": self.layout.read_history()}

    def op_verify(self, req: Any, answer: Answer | None) -> dict[str, Any]:
        failed = self.current is None or self.current in self.script.unhealthy
        return {"release": self.current, "revision": None, "lock": self.layout.lock_owner(),
                "checks": [{"check": "health", "ok": not failed,
                            "detail": "fails" if failed else "200"}]}

    def op_clear_cache(self, req: Any, answer: Answer | None) -> dict[str, Any]:
        return {"path": req.path, "dirs": 0, "files": 0, "errors": [], "edits": []}


class _Failed(Exception):
    """A scripted agent error (the agent's `{"error": ...}` answer)."""


class FakeConnection:
    """The `deploytools.connection.Connection` interface over one FakeHost."""

    endpoint = None
    fabric = None

    def __init__(self, host: FakeHost) -> None:
        self.fake = host
        self.connections = self.commands = self.requests = self.bytes_sent = 0
        self.costs = CostBook()

    def io_thread_id(self) -> None:
        return None

    def open(self) -> None:
        if self.fake.script.unreachable:
            raise UnreachableError(self.fake.name, "connection refused (fake)")
        self.connections += 1

    def start_agent(self) -> None:
        self.commands += 1

    def call(self, request: protocol.Request, on_event: Callable[[str], None] | None = None,
             timeout: float | None = None, answer: Answer | None = None) -> AgentCall:
        self.requests += 1
        request = protocol.parse_request(request.to_wire())  # as strict as the real agent
        try:
            return AgentCall(result=self.fake.answer(request, answer), error=None)
        except _Failed as exc:
            return AgentCall(result=None, error={"message": str(exc)})

    def close(self) -> None:
        pass


class FakeFleet:
    """N fake hosts with an inventory of them, and the connector a task takes."""

    def __init__(self, root: Path, count: int, source: Path, **defaults: Any) -> None:
        names = [f"web{i}" for i in range(1, count + 1)]
        self.hosts = {name: FakeHost(name, root / name) for name in names}
        settings = {"source": {"path": str(source)}, "deploy_to": "/srv/app",
                    "supervisor": {"programs": ["app"]}, **defaults}
        inventory = parse_inventory({
            "defaults": settings,
            "groups": {"all_hosts": {"hosts": {
                name: {"host": f"127.0.0.{i}"} for i, name in enumerate(names, 1)}}}})
        self.inventory = [inventory.hosts[name] for name in names]

    def connector(self, host: Host) -> FakeConnection:
        return FakeConnection(self.hosts[host.name])

    def __getitem__(self, name: str) -> FakeHost:
        return self.hosts[name]
