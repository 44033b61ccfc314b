"""The HAProxy drain's pure parts: runtime-API commands, show-stat parsing, the batch guard."""

from __future__ import annotations

import shlex

import pytest

from deploytools.balancer import (
    ServerStat,
    checked_name,
    expand,
    parse_show_stat,
    refuse_full_drain,
    remote_client_command,
    set_state_command,
)
from deploytools.errors import ConfigError

SHOW_STAT = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,weight\n"
    "web,FRONTEND,,,3,5,2000,10,OPEN,\n"
    "app,web1,0,0,2,3,,7,UP,1\n"
    "app,web2,0,0,0,1,,3,DRAIN,1\n"
    "app,web3,0,0,0,0,,0,DOWN,1\n"
    "app,web4,0,0,0,0,,0,no check,1\n"
    "app,BACKEND,0,0,2,5,200,10,UP,3\n"
)


def test_set_state_commands() -> None:
    assert set_state_command("app", "web1", "drain") == "set server app/web1 state drain"
    assert set_state_command("app", "web1", "ready") == "set server app/web1 state ready"
    with pytest.raises(ValueError):
        set_state_command("app", "web1", "up")


def test_names_that_would_inject_commands_are_refused() -> None:
    for bad in ("web1;shutdown sessions", "web 1", "web1\nset", ""):
        with pytest.raises(ConfigError):
            checked_name(bad, "server")
    assert checked_name("web-1.example.com", "server") == "web-1.example.com"


def test_parse_show_stat_keeps_server_rows() -> None:
    stats = parse_show_stat(SHOW_STAT)
    assert set(stats) == {("app", "web1"), ("app", "web2"), ("app", "web3"), ("app", "web4")}
    assert stats[("app", "web1")] == ServerStat("app", "web1", 2, "UP")
    assert [s.in_rotation for s in stats.values()] == [True, False, False, True]


def test_refuses_a_batch_that_takes_every_up_server_out() -> None:
    stats = parse_show_stat(SHOW_STAT)  # in rotation: web1, web4
    assert refuse_full_drain([[("app", "web1")], [("app", "web4")]], stats) is None
    why = refuse_full_drain([[("app", "web1"), ("app", "web4")]], stats)
    assert why and "backend app" in why and "--serial" in why
    assert refuse_full_drain([[("app", "web2"), ("app", "web3")]], stats) is None
    # nothing UP (a first deploy): nothing to protect
    assert refuse_full_drain([[("app", "web3")]], {("app", "web3"): stats[("app", "web3")]}) \
        is None


def test_remote_client_command_quotes_every_argument() -> None:
    line = remote_client_command("python3", "/run/it's here.sock", "show stat")
    assert shlex.split(line)[-2:] == ["/run/it's here.sock", "show stat"]
    assert expand("{name}-srv", {"name": "web1", "host": "x"}) == "web1-srv"
