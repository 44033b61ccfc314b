"""`--dry-run`: the same flow, over a connection backend that describes changes instead
of making them (SSHKit's printer backend; no task knows it exists).

Read-only operations (preflight in read-only mode, releases, verify) still run for
real, so the plan shows each host's actual current release and lock; every
operation that would change a host is printed, step by step, and answered with the
result it would have had if all went well.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deploytools.remote import protocol
from deploytools.remote.health import expand_placeholders
from deploytools.transport import AgentCall, Answer, HostConnection


def describe(request: protocol.Request) -> list[str]:
    """The remote operations one agent request would perform, in order, as text."""
    deploy_to = request.deploy_to  # type: ignore[attr-defined]  # every op has one
    if isinstance(request, protocol.Prepare):
        files = request.file_count
        lines = [f"create {deploy_to}/releases/{request.release_id} from the artifact "
                 f"({files} files, {request.artifact_size} bytes; only changed files are sent)"]
        shared = request.shared or {}
        for rel in [*shared.get("dirs", ()), *shared.get("files", ())]:
            lines.append(f"link {rel} -> {deploy_to}/shared/{rel}")
        if request.venv:
            lines.append(f"virtualenv for {request.venv['requirements']} "
                         "(reused when unchanged), linked as .venv")
        mode = request.bytecode
        lines.append({"precompile": f"precompile bytecode ({request.pyc_invalidation})",
                      "clear": "remove any bytecode", "off": "leave bytecode alone"}[mode])
        lines += _hooks(request, "after_prepare")
        return lines
    if isinstance(request, protocol.Activate):
        programs = ", ".join(request.supervisor["programs"])
        lines = [f"switch {deploy_to}/current -> releases/{request.target} (atomic rename)"]
        lines += _hooks(request, "after_switch")
        lines += _hooks(request, "before_restart")
        lines.append(f"stop {programs}, wait until stopped; start, wait until RUNNING")
        url = (request.health or {}).get("url")
        if url:
            values = {**(request.values or {}), "release": request.target}
            lines.append(f"health check {expand_placeholders(url, values)}")
        lines += _hooks(request, "after_restart")
        if request.fallback:
            lines.append(f"on failure: switch back to {request.fallback}, restart, re-check")
        return lines
    if isinstance(request, protocol.Hooks):
        return _hooks(request, request.point) or [f"no {request.point} hooks"]
    if isinstance(request, protocol.Finish):
        lines = ["append a history line"]
        if request.keep_releases:
            lines.append(f"remove old releases beyond {request.keep_releases} good ones")
        if request.discard_release:
            lines.append(f"remove unused release {request.discard_release}")
        lines.append("release the deploy lock")
        return lines
    if isinstance(request, protocol.ClearCache):
        where = request.path or f"{deploy_to}/current"
        venvs = " (including virtualenvs)" if request.include_venv else ""
        return [f"remove __pycache__ and *.pyc under {where}{venvs}"]
    if isinstance(request, protocol.Unlock):
        return ["remove the deploy lock" + (" (forced)" if request.force else "")]
    return [request.op]


def _hooks(request: protocol.HookRequest, point: str) -> list[str]:
    hooks = (request.hooks or {}).get(point) or []
    out = []
    for hook in hooks:
        spec = {"run": hook} if isinstance(hook, str) else hook
        if spec.get("run_once") and not request.run_once_here:
            continue
        out.append(f"{point} hook: {spec['run']}")
    return out


def pretend(request: protocol.Request) -> dict[str, Any]:
    """The result a mutating operation would return had everything gone well."""
    if isinstance(request, protocol.Prepare):
        return {"release": request.release_id, "files": request.file_count,
                "bytes": request.artifact_size, "timings": {}, "bytecode": {}}
    if isinstance(request, protocol.Activate):
        return {"outcome": "healthy", "release": request.target, "target": request.target,
                "fallback": request.fallback, "attempt": {"ok": True, "programs": []}}
    if isinstance(request, protocol.Hooks):
        return {"hooks": []}
    if isinstance(request, protocol.ClearCache):
        return {"path": request.path, "dirs": 0, "files": 0, "errors": [], "edits": []}
    if isinstance(request, protocol.Unlock):
        return {"owner": None, "removed": False, "reason": "dry run"}
    return {}


class DryRunConnection:
    """A real connection whose mutating requests are printed and answered as if they
    had succeeded; everything else (connecting, read-only requests) is real."""

    def __init__(self, inner: HostConnection) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # endpoint, fabric, counters, open, close
        return getattr(self.inner, name)

    def call(self, request: protocol.Request, on_event: Callable[[str], None] | None = None,
             timeout: float | None = None, answer: Answer | None = None) -> AgentCall:
        if not request.mutating:
            return self.inner.call(request, on_event, timeout, answer)
        for line in describe(request):
            if on_event:
                on_event("would " + line)
        return AgentCall(result=pretend(request), error=None)
