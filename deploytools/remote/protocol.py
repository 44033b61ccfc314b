"""The agent protocol, spelled once: which ops exist, which fields each request
carries, and which ops mutate the host or need the deploy lock.

Both ends import this module (the agent is stdlib-only and runs on Python 3.8+ and
PyPy 3.9, so this module is too). A request on the wire is one JSON object: the op
name, the envelope fields (`time_limit`, `streams`, `lock_token`, added by the
transport and by steps.call) and the op's own fields. Parsing is strict: a field the
op does not declare, or a missing required one, raises ProtocolError naming both, so
the two ends cannot drift apart silently.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Optional, Tuple, Type, Union

TRANSPORT_FIELDS = ("time_limit", "streams", "profile")  # added by transport.call, read by
# agent.main and agent.serve
RESULT_FIELDS = ("cost", "profile")  # added to every result by agent.serve, read by transport.call

# An error answer's `kind`: what failed, for logs and tests (the agent ends the session on
# "timeout"; the controller acts on the answer's `ends_session`, never on the kind).
ERROR_KINDS = ("failed", "timeout", "lock_lost", "disk_full", "hook_failed", "internal",
               "protocol")


class ProtocolError(ValueError):
    """A request or result that does not match its op's declared fields."""

    kind = "protocol"

    def __init__(self, op: str, problem: str) -> None:
        super().__init__("%s: %s" % (op, problem))
        self.op = op


@dataclasses.dataclass
class Request:
    """Base of every op's request: the envelope fields plus the op's class-level flags.

    `mutating`: changes the host, so a dry run must not send it (dryrun answers it).
    `locked`: refused unless this run still holds the host's deploy lock.
    """

    op: ClassVar[str] = ""
    mutating: ClassVar[bool] = False
    locked: ClassVar[bool] = False

    def to_wire(self) -> Dict[str, Any]:
        """The JSON object sent to the agent: op plus every field (None included)."""
        wire = {"op": self.op}
        # shallow: fields hold plain JSON data, and asdict's deep copy of the settings
        # cost more than the request's whole round trip
        wire.update((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
        return wire

    @classmethod
    def from_wire(cls, wire: Dict[str, Any]) -> "Request":
        """Strictly parse a wire object into its op's request type (see parse_request)."""
        return parse_request(wire)


def _fields(cls: type) -> Dict[str, dataclasses.Field]:  # type: ignore[type-arg]
    return {f.name: f for f in dataclasses.fields(cls)}


def _required(field: dataclasses.Field) -> bool:  # type: ignore[type-arg]
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _build(cls: type, op: str, wire: Dict[str, Any], ignore: Tuple[str, ...]) -> Any:
    fields = _fields(cls)
    for name in wire:
        if name not in fields and name not in ignore:
            raise ProtocolError(op, "unknown field %r" % name)
    for name, field in fields.items():
        if _required(field) and name not in wire:
            raise ProtocolError(op, "missing required field %r" % name)
    return cls(**{k: v for k, v in wire.items() if k in fields})


@dataclasses.dataclass
class Preflight(Request):
    op: ClassVar[str] = "preflight"
    deploy_to: str
    supervisor: Optional[Dict[str, Any]] = None
    min_free_mb: int = 0
    shared: Optional[Dict[str, Any]] = None
    read_only: bool = False
    lock: Optional[Dict[str, Any]] = None
    unchanged_if: Optional[str] = None
    # --skip-unchanged sends the verify checks' inputs with its preflight
    expect: Optional[str] = None
    health: Optional[Dict[str, Any]] = None
    values: Optional[Dict[str, Any]] = None
    lock_token: Optional[str] = None


@dataclasses.dataclass
class Prepare(Request):
    op: ClassVar[str] = "prepare"
    mutating: ClassVar[bool] = True
    locked: ClassVar[bool] = True
    deploy_to: str
    release_id: str
    manifest: Dict[str, Any]
    file_count: int
    artifact_size: int
    bytecode: str
    pyc_invalidation: str
    shared: Optional[Dict[str, Any]] = None
    venv: Optional[Dict[str, Any]] = None
    hooks: Optional[Dict[str, Any]] = None
    run_once_here: bool = False
    values: Optional[Dict[str, Any]] = None
    lock_token: Optional[str] = None


@dataclasses.dataclass
class Activate(Request):
    op: ClassVar[str] = "activate"
    mutating: ClassVar[bool] = True
    locked: ClassVar[bool] = True
    deploy_to: str
    target: str
    supervisor: Dict[str, Any]
    fallback: Optional[str] = None
    mark_failed: bool = False
    health: Optional[Dict[str, Any]] = None
    action: str = "deploy"
    hooks: Optional[Dict[str, Any]] = None
    run_once_here: bool = False
    values: Optional[Dict[str, Any]] = None
    lock_token: Optional[str] = None


@dataclasses.dataclass
class Hooks(Request):
    op: ClassVar[str] = "hooks"
    mutating: ClassVar[bool] = True
    locked: ClassVar[bool] = True
    deploy_to: str
    point: str
    release_id: str
    hooks: Optional[Dict[str, Any]] = None
    run_once_here: bool = False
    values: Optional[Dict[str, Any]] = None
    lock_token: Optional[str] = None


@dataclasses.dataclass
class Verify(Request):
    op: ClassVar[str] = "verify"
    deploy_to: str
    expect: Optional[str] = None
    supervisor: Optional[Dict[str, Any]] = None
    health: Optional[Dict[str, Any]] = None
    values: Optional[Dict[str, Any]] = None
    lock_token: Optional[str] = None


@dataclasses.dataclass
class ResolveRollback(Request):
    op: ClassVar[str] = "resolve_rollback"
    deploy_to: str
    to: Optional[str] = None
    lock_token: Optional[str] = None


@dataclasses.dataclass
class Finish(Request):
    op: ClassVar[str] = "finish"
    mutating: ClassVar[bool] = True
    deploy_to: str
    lock_token: Optional[str] = None
    history: Optional[Dict[str, Any]] = None
    record_intact: bool = False
    keep_releases: Optional[int] = None
    discard_release: Optional[str] = None


@dataclasses.dataclass
class Releases(Request):
    op: ClassVar[str] = "releases"
    deploy_to: str
    lock_token: Optional[str] = None


@dataclasses.dataclass
class ClearCache(Request):
    op: ClassVar[str] = "clear_cache"
    mutating: ClassVar[bool] = True
    locked: ClassVar[bool] = True
    deploy_to: str
    path: Optional[str] = None
    include_venv: bool = False
    lock_token: Optional[str] = None


@dataclasses.dataclass
class Unlock(Request):
    op: ClassVar[str] = "unlock"
    mutating: ClassVar[bool] = True
    deploy_to: str
    token: Optional[str] = None
    force: bool = False
    stale_after: Optional[float] = None
    lock_token: Optional[str] = None


HookRequest = Union[Prepare, Activate, Hooks]  # the requests that run shell hooks

REQUESTS: Dict[str, Type[Request]] = {cls.op: cls for cls in (
    Preflight, Prepare, Activate, Hooks, Verify, ResolveRollback, Finish, Releases,
    ClearCache, Unlock)}


def parse_request(wire: Dict[str, Any]) -> Request:
    """The typed request for a wire object; ProtocolError on an unknown op or field,
    or a missing required field. Envelope fields other than lock_token are the
    transport's and are not part of the typed request."""
    op = wire.get("op")
    cls = REQUESTS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise ProtocolError(str(op), "unknown op")
    body = {k: v for k, v in wire.items() if k != "op"}
    return _build(cls, cls.op, body, TRANSPORT_FIELDS)  # type: ignore[no-any-return]


@dataclasses.dataclass
class ReleasesResult:
    """The `releases` op's answer (`inv releases`, and the tests' view of a host)."""

    op: ClassVar[str] = "releases"
    current: Optional[str]
    releases: list  # type: ignore[type-arg]
    lock: Optional[Dict[str, Any]]
    history: list  # type: ignore[type-arg]

    def to_wire(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, wire: Dict[str, Any]) -> "ReleasesResult":
        return _build(cls, cls.op, wire, RESULT_FIELDS)  # type: ignore[no-any-return]


@dataclasses.dataclass
class ResolveRollbackResult:
    """The `resolve_rollback` op's answer: the release a rollback switches to."""

    op: ClassVar[str] = "resolve_rollback"
    current: Optional[str]
    target: str

    def to_wire(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, wire: Dict[str, Any]) -> "ResolveRollbackResult":
        return _build(cls, cls.op, wire, RESULT_FIELDS)  # type: ignore[no-any-return]
