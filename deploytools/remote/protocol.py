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

from typing import TYPE_CHECKING, Any, ClassVar, Dict, Optional, Tuple, Type, Union

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


if TYPE_CHECKING:  # type checkers see the dataclasses these behave as
    from dataclasses import dataclass as message
else:
    def message(cls):
        """Declare a message class: its fields are its (and its bases') annotations that
        are not ClassVars, in order; a class-level value is that field's default.

        Why not dataclasses: importing it (and the inspect it imports) and generating
        its methods cost ~15 ms of CPU on every agent start on every host, for classes
        that only hold JSON data (every default is immutable)."""
        names, defaults = [], {}
        for klass in reversed(cls.__mro__):
            for name, annotation in klass.__dict__.get("__annotations__", {}).items():
                if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
                    continue
                if name not in names:
                    names.append(name)
                if name in klass.__dict__:
                    defaults[name] = klass.__dict__[name]
                else:
                    defaults.pop(name, None)
        cls.FIELDS, cls.DEFAULTS = tuple(names), defaults
        return cls


class Message:
    """Keyword construction, equality, repr and to_wire for @message classes."""

    FIELDS: ClassVar[Tuple[str, ...]] = ()
    DEFAULTS: ClassVar[Dict[str, Any]] = {}

    def __init__(self, **values: Any) -> None:
        for name in values:
            if name not in self.FIELDS:
                raise TypeError("%s() got an unexpected keyword argument %r"
                                % (type(self).__name__, name))
        for name in self.FIELDS:
            if name in values:
                setattr(self, name, values[name])
            elif name in self.DEFAULTS:
                setattr(self, name, self.DEFAULTS[name])
            else:
                raise TypeError("%s() missing required argument %r"
                                % (type(self).__name__, name))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_wire() == other.to_wire()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return "%s(%s)" % (type(self).__name__,
                           ", ".join("%s=%r" % (n, getattr(self, n)) for n in self.FIELDS))

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (dataclasses.replace)."""
        values = {n: getattr(self, n) for n in self.FIELDS}
        values.update(changes)
        return type(self)(**values)

    def to_wire(self) -> Dict[str, Any]:
        """The JSON object sent: every field (None included). Shallow: fields hold plain
        JSON data, and a deep copy of the settings cost more than a round trip."""
        return {n: getattr(self, n) for n in self.FIELDS}


@message
class Request(Message):
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
        wire.update(super().to_wire())
        return wire

    @classmethod
    def from_wire(cls, wire: Dict[str, Any]) -> "Request":
        """Strictly parse a wire object into its op's request type (see parse_request)."""
        return parse_request(wire)


def _build(cls: Type[Message], op: str, wire: Dict[str, Any], ignore: Tuple[str, ...]) -> Any:
    for name in wire:
        if name not in cls.FIELDS and name not in ignore:
            raise ProtocolError(op, "unknown field %r" % name)
    for name in cls.FIELDS:
        if name not in cls.DEFAULTS and name not in wire:
            raise ProtocolError(op, "missing required field %r" % name)
    return cls(**{k: v for k, v in wire.items() if k in cls.FIELDS})


@message
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


@message
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


@message
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


@message
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


@message
class Verify(Request):
    op: ClassVar[str] = "verify"
    deploy_to: str
    expect: Optional[str] = None
    supervisor: Optional[Dict[str, Any]] = None
    health: Optional[Dict[str, Any]] = None
    values: Optional[Dict[str, Any]] = None
    lock_token: Optional[str] = None


@message
class ResolveRollback(Request):
    op: ClassVar[str] = "resolve_rollback"
    deploy_to: str
    to: Optional[str] = None
    lock_token: Optional[str] = None


@message
class Finish(Request):
    op: ClassVar[str] = "finish"
    mutating: ClassVar[bool] = True
    deploy_to: str
    lock_token: Optional[str] = None
    history: Optional[Dict[str, Any]] = None
    record_intact: bool = False
    keep_releases: Optional[int] = None
    discard_release: Optional[str] = None


@message
class Releases(Request):
    op: ClassVar[str] = "releases"
    deploy_to: str
    lock_token: Optional[str] = None


@message
class ClearCache(Request):
    op: ClassVar[str] = "clear_cache"
    mutating: ClassVar[bool] = True
    locked: ClassVar[bool] = True
    deploy_to: str
    path: Optional[str] = None
    include_venv: bool = False
    lock_token: Optional[str] = None


@message
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


@message
class ReleasesResult(Message):
    """The `releases` op's answer (`inv releases`, and the tests' view of a host)."""

    op: ClassVar[str] = "releases"
    current: Optional[str]
    releases: list  # type: ignore[type-arg]
    lock: Optional[Dict[str, Any]]
    history: list  # type: ignore[type-arg]

    @classmethod
    def from_wire(cls, wire: Dict[str, Any]) -> "ReleasesResult":
        return _build(cls, cls.op, wire, RESULT_FIELDS)  # type: ignore[no-any-return]


@message
class ResolveRollbackResult(Message):
    """The `resolve_rollback` op's answer: the release a rollback switches to."""

    op: ClassVar[str] = "resolve_rollback"
    current: Optional[str]
    target: str

    @classmethod
    def from_wire(cls, wire: Dict[str, Any]) -> "ResolveRollbackResult":
        return _build(cls, cls.op, wire, RESULT_FIELDS)  # type: ignore[no-any-return]
