"""The SSH session: the remote command line it sends."""

from __future__ import annotations

import shlex

import paramiko

from deploytools.access import Endpoint
from deploytools.inventory import parse_inventory
from deploytools.ssh import describe_connect_error
from deploytools.transport import BOOTSTRAP, HostConnection


def test_remote_command_is_quoted() -> None:
    inv = parse_inventory({
        "defaults": {"deploy_to": "/srv/a b", "python": "/opt/py thon/bin/python3",
                     "source": {"path": "."}, "supervisor": {"programs": ["w"], "sudo": True}},
        "groups": {"g": {"hosts": {"h": {"host": "127.0.0.1"}}}}})
    command = HostConnection(inv.hosts["h"]).agent_command(cached=False)
    assert command.startswith("sudo -n timeout ")
    argv = shlex.split(command)
    assert argv[argv.index("-c") - 2:argv.index("-c")] == ["/opt/py thon/bin/python3", "-S"]
    assert argv[argv.index("-c") + 1] == BOOTSTRAP
    assert argv[-1] == "inline"


def test_a_handshake_that_outlived_the_connect_timeout_is_named_and_retried() -> None:
    """paramiko stops waiting for the key exchange at the connect timeout without an
    error; authentication then fails with "No existing session". That is a slow host
    (or controller), worth another attempt, and is said so."""
    endpoint = Endpoint("web1", "127.0.0.2", 22, "deploy", ())
    text, retryable = describe_connect_error(
        paramiko.SSHException("No existing session"), endpoint, None)
    assert retryable and "127.0.0.2:22" in text and "connect_timeout" in text
