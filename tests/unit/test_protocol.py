"""The agent protocol is spelled once (deploytools/remote/protocol.py) and parsed
strictly on both ends; these tests keep it that way."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploytools.remote import agent, protocol
from deploytools.transport import frame

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "deploytools"

# one valid instance per op, with every field set to something non-default
EXAMPLES: list[protocol.Request] = [
    protocol.Preflight(deploy_to="/srv/a", supervisor={"programs": ["web"]}, min_free_mb=3,
                       shared={"dirs": ["log"]}, read_only=True, lock={"owner": {}},
                       unchanged_if="abc", expect="r1", health={"url": "http://x/"},
                       values={"host": "h"}, lock_token="t"),
    protocol.Prepare(deploy_to="/srv/a", release_id="r2", manifest={"revision": "abc"},
                     file_count=3, artifact_size=10, bytecode="precompile",
                     pyc_invalidation="checked-hash", shared={}, venv={"requirements": "r"},
                     hooks={"after_prepare": ["true"]}, run_once_here=True, values={}),
    protocol.Activate(deploy_to="/srv/a", target="r2", supervisor={"programs": ["web"]},
                      fallback="r1", mark_failed=True, health={}, action="rollback"),
    protocol.Hooks(deploy_to="/srv/a", point="after_deploy", release_id="r2"),
    protocol.Verify(deploy_to="/srv/a", expect="r2", supervisor={"programs": []}),
    protocol.ResolveRollback(deploy_to="/srv/a", to="r1"),
    protocol.Finish(deploy_to="/srv/a", lock_token="t", history={"action": "deploy"},
                    record_intact=True, keep_releases=5, discard_release="r3"),
    protocol.Releases(deploy_to="/srv/a"),
    protocol.ClearCache(deploy_to="/srv/a", path="/srv/a/current", include_venv=True),
    protocol.Unlock(deploy_to="/srv/a", token="t", force=True, stale_after=60.0),
]

RESULTS: list[Any] = [
    protocol.ReleasesResult(current="r1", releases=[{"id": "r1"}], lock=None, history=[]),
    protocol.ResolveRollbackResult(current="r2", target="r1"),
]


def test_every_agent_op_has_a_request_type_and_back() -> None:
    assert set(agent.OPS) == set(protocol.REQUESTS)
    assert {type(r).op for r in EXAMPLES} == set(protocol.REQUESTS)


def test_flags_keep_the_former_op_lists() -> None:
    """The flags replaced agent.LOCKED_OPS and dryrun.MUTATING_OPS, unchanged."""
    locked = {op for op, cls in protocol.REQUESTS.items() if cls.locked}
    mutating = {op for op, cls in protocol.REQUESTS.items() if cls.mutating}
    assert locked == {"prepare", "activate", "hooks", "clear_cache"}
    assert mutating == {"prepare", "activate", "finish", "hooks", "clear_cache", "unlock"}


@pytest.mark.parametrize("request_", EXAMPLES, ids=lambda r: r.op)
def test_requests_round_trip_through_json(request_: protocol.Request) -> None:
    wire = json.loads(json.dumps(dict(request_.to_wire(), time_limit=5.0, streams=False)))
    assert wire["op"] == request_.op
    assert protocol.parse_request(wire) == request_
    assert protocol.Request.from_wire(wire) == request_


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: r.op)
def test_results_round_trip_through_json(result: Any) -> None:
    assert type(result).from_wire(json.loads(json.dumps(result.to_wire()))) == result


@pytest.mark.parametrize("request_", EXAMPLES, ids=lambda r: r.op)
def test_agent_side_rejects_unknown_and_missing_fields(request_: protocol.Request) -> None:
    wire = request_.to_wire()
    with pytest.raises(protocol.ProtocolError, match=f"{request_.op}: unknown field 'bogus'"):
        protocol.parse_request(dict(wire, bogus=1))
    with pytest.raises(protocol.ProtocolError,
                       match=f"{request_.op}: missing required field 'deploy_to'"):
        protocol.parse_request({k: v for k, v in wire.items() if k != "deploy_to"})


def test_unknown_op_is_rejected() -> None:
    with pytest.raises(protocol.ProtocolError, match="nope: unknown op"):
        protocol.parse_request({"op": "nope", "deploy_to": "/x"})


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: r.op)
def test_controller_side_rejects_unknown_and_missing_fields(result: Any) -> None:
    wire = result.to_wire()
    with pytest.raises(protocol.ProtocolError, match=f"{result.op}: unknown field 'bogus'"):
        type(result).from_wire(dict(wire, bogus=1))
    first = result.FIELDS[0]
    with pytest.raises(protocol.ProtocolError, match=f"{result.op}: missing required field"):
        type(result).from_wire({k: v for k, v in wire.items() if k != first})


def test_agent_answers_a_bad_request_with_a_protocol_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert agent.serve({"op": "releases", "deploy_to": "/x", "bogus": 1}, None)  # type: ignore
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["kind"] == "protocol" and "unknown field 'bogus'" in error["message"]
    assert error["kind"] in protocol.ERROR_KINDS


# --------------------------------------------------------------- spelled once

FIELD_NAMES = {name for cls in protocol.REQUESTS.values() for name in cls.FIELDS}
REQUEST_NAMES = {"req", "request", "request_", "wire"}


def spelled_protocol(path: Path) -> list[str]:
    """Places that spell the protocol by hand: a dict literal keyed "op", an "op"
    subscript or .get() on anything, or a request field read by name off a variable
    that holds a request (`req["deploy_to"]`, `request.get("target")`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
            if "op" in keys:
                found.append(f"{path}:{node.lineno}: dict keyed 'op'")
        key, owner = None, None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key, owner = node.slice.value, node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "get" and node.args and isinstance(node.args[0], ast.Constant):
            key, owner = node.args[0].value, node.func.value
        if key == "op" or (key in FIELD_NAMES and isinstance(owner, ast.Name)
                           and owner.id in REQUEST_NAMES):
            found.append(f"{path}:{node.lineno}: {key!r} read by name")
    return found


def test_the_protocol_is_spelled_only_in_protocol_py() -> None:
    sources = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "remote" / "protocol.py"]
    assert [hit for p in sources for hit in spelled_protocol(p)] == []


def test_the_scan_finds_hand_spelled_requests(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('x = {"op": "releases"}\nreq["deploy_to"]\nrequest.get("target")\n')
    assert len(spelled_protocol(sample)) == 3


# --------------------------------------------------------------- the real agent

INTERPRETERS = ["/work/main/.venv/bin/python", "/usr/bin/pypy3",
                "/root/.pyenv/versions/3.8.18/bin/python"]  # the oldest supported


@pytest.mark.parametrize("python", INTERPRETERS, ids=os.path.basename)
def test_real_agent_answers_releases(python: str, tmp_path: Path) -> None:
    if not os.path.exists(python):
        pytest.skip(f"{python} not installed")
    os.makedirs(tmp_path / "releases" / "r1")
    os.symlink("releases/r1", tmp_path / "current")
    request = protocol.Releases(deploy_to=str(tmp_path))
    wire = dict(request.to_wire(), time_limit=10.0, streams=False)
    bad = dict(wire, bogus=True)
    # stdin stays open until both answers are read: a closed stdin means the controller
    # went away, and the agent then works on silently (locking.watch_controller)
    agent_process = subprocess.Popen(
        [python, "-S", "-c", "from deploytools.remote import agent; agent.main()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")})
    assert agent_process.stdin is not None and agent_process.stdout is not None
    try:
        answers = []
        for message in (wire, bad):
            agent_process.stdin.write(frame(message))
            agent_process.stdin.flush()
            answers.append(json.loads(agent_process.stdout.readline()))
    finally:
        agent_process.stdin.close()
        agent_process.wait(timeout=10)
    result = protocol.ReleasesResult.from_wire(answers[0]["result"])
    assert result.current == "r1"
    assert [row["id"] for row in result.releases] == ["r1"]
    assert answers[1]["error"]["kind"] == "protocol"
