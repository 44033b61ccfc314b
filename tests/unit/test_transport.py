"""The SSH session: the remote command line it sends."""

from __future__ import annotations

import shlex

from deploytools.inventory import parse_inventory
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
