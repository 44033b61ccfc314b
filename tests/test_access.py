"""Real access paths against the real fleet: a key held only by ssh-agent, hosts named by
ssh_config aliases, targets behind a jump host (ssh_config ProxyJump and ssh.proxy_jump)
whose key is verified like a target's, and the failures each of these can produce."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from deploytools import access
from deploytools.sandbox import Fleet, SimHost
from deploytools.sandbox.sshd import _public_key
from tests.support.access import (
    Agent,
    forwards,
    isolate_behind,
    logins,
    start_agent,
    start_jump_host,
)
from tests.support.apprepo import AppRepo
from tests.support.cli import Cli, clean_env, inv_command
from tests.support.fleets import make_fleet
from tests.support.layout import current_release


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    yield from make_fleet(2)


@pytest.fixture(scope="module")
def jump(fleet: Fleet) -> Iterator[SimHost]:
    host = start_jump_host(fleet, fleet.root / "jump")
    try:
        yield host
    finally:
        host.stop_sshd()


@pytest.fixture()
def agent(tmp_path: Path) -> Iterator[Agent]:
    started = start_agent(tmp_path)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(autouse=True)
def no_ambient_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the agent a test starts counts; the controller's own must not help."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def inventory(fleet: Fleet, app_repo: AppRepo, path: Path, **ssh: object) -> dict:
    data = fleet.inventory_dict(source={"repo": str(app_repo.path)})
    data["ssh"].update(ssh)
    for key in [k for k, v in ssh.items() if v is None]:
        del data["ssh"][key]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return data


def rewrite(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def releases(fleet: Fleet) -> set[str | None]:
    return {current_release(h.deploy_to) for h in fleet.hosts}


# ----------------------------------------------------------------------------- keys


def test_key_only_in_ssh_agent(fleet: Fleet, app_repo: AppRepo, agent: Agent, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    agent.add(fleet.client_key)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(agent.socket))
    cli = Cli(tmp_path / "inv.yaml")
    inventory(fleet, app_repo, cli.inventory, identity=None)
    app_repo.commit("agent-v1")
    cli("deploy", "--hosts", "prod", check=True)
    first = releases(fleet)
    app_repo.commit("agent-v2")
    cli("deploy", "--hosts", "prod", check=True)
    second = releases(fleet)
    assert len(second) == 1 and second != first
    cli("verify", "--hosts", "prod", check=True)
    cli("rollback", "--hosts", "prod", check=True)
    assert releases(fleet) == first


def test_no_key_anywhere_names_user_host_and_what_was_tried(
        fleet: Fleet, app_repo: AppRepo, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* either
    cli = Cli(tmp_path / "inv.yaml")
    inventory(fleet, app_repo, cli.inventory, identity=None)
    done = cli("check", "--hosts", "prod")
    assert done.returncode == 6, done.stdout + done.stderr
    web1 = fleet.hosts[0]
    assert f"authentication failed for user {fleet.user} at {web1.address}:{web1.port}" \
        in done.stderr
    assert "server accepts: publickey" in done.stderr and "no ssh-agent" in done.stderr
    assert "no key to offer" in done.stderr
    assert "Traceback" not in done.stderr and "TypeError" not in done.stderr


def test_encrypted_key_without_agent_is_one_line_and_never_prompts(
        fleet: Fleet, app_repo: AppRepo, tmp_path: Path) -> None:
    key = tmp_path / "locked_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(key)],
                   check=True, stdin=subprocess.DEVNULL)
    cli = Cli(tmp_path / "inv.yaml")
    inventory(fleet, app_repo, cli.inventory, identity=[str(key)])
    started = time.monotonic()
    done = cli("check", "--hosts", "prod")
    assert done.returncode == 6, done.stdout + done.stderr
    assert time.monotonic() - started < 30  # nothing waited for a passphrase
    assert f"key file {key} is encrypted and ssh-agent does not hold it" in done.stderr
    assert "Traceback" not in done.stderr


def test_identity_list_tries_each_key(fleet: Fleet, app_repo: AppRepo, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True, stdin=subprocess.DEVNULL)
    cli = Cli(tmp_path / "inv.yaml")
    inventory(fleet, app_repo, cli.inventory, identity=[str(stranger), str(fleet.client_key)])
    cli("check", "--hosts", "prod", check=True)
    inventory(fleet, app_repo, cli.inventory, identity=[str(stranger)])
    done = cli("check", "--hosts", "prod")
    assert done.returncode == 6
    assert f"tried key file {stranger} (ED25519 SHA256:" in done.stderr


# ----------------------------------------------------------------------------- ssh_config


def alias_config(fleet: Fleet, path: Path, port: int | None = None, extra: str = "") -> Path:
    lines = []
    for sim in fleet.hosts:
        lines += [f"Host alias-{sim.name}", f"  HostName {sim.address}",
                  f"  Port {port or sim.port}", f"  User {fleet.user}",
                  f"  IdentityFile {fleet.client_key}", "  IdentitiesOnly yes", extra]
    path.write_text("\n".join(lines) + "\n")
    return path


def alias_inventory(fleet: Fleet, app_repo: AppRepo, path: Path, config: Path) -> dict:
    data = inventory(fleet, app_repo, path, identity=None, user=None, config=str(config))
    for name, entry in data["groups"]["prod"]["hosts"].items():
        entry["host"] = f"alias-{name}"
        del entry["port"]
    rewrite(path, data)
    return data


def test_hosts_named_by_ssh_config_aliases(fleet: Fleet, app_repo: AppRepo,
                                          tmp_path: Path) -> None:
    cli = Cli(tmp_path / "inv.yaml")
    alias_inventory(fleet, app_repo, cli.inventory, alias_config(fleet, tmp_path / "ssh_config"))
    sha = app_repo.commit("alias-v1")
    cli("deploy", "--hosts", "prod", check=True)
    assert {r.rsplit("-", 1)[-1] for r in releases(fleet) if r} == {sha[:7]}


def test_ssh_config_port_is_used_and_inventory_port_wins(fleet: Fleet, app_repo: AppRepo,
                                                        tmp_path: Path) -> None:
    cli = Cli(tmp_path / "inv.yaml")
    data = alias_inventory(fleet, app_repo, cli.inventory,
                           alias_config(fleet, tmp_path / "ssh_config", port=1))
    done = cli("check", "--hosts", "prod")
    assert done.returncode == 6 and f"{fleet.hosts[0].address}:1 refused" in done.stderr
    for sim in fleet.hosts:  # an explicit inventory port beats ssh_config's
        data["groups"]["prod"]["hosts"][sim.name]["port"] = sim.port
    cli("check", "--hosts", "prod", "--inventory", str(rewrite(cli.inventory, data)), check=True)


def test_resolution_precedence(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host web\n  HostName 10.1.1.1\n  Port 2222\n  User cfg\n"
                      "  IdentityFile /k/cfg\n  ProxyJump hop1,ops@hop2:2200\n"
                      "Host hop1\n  HostName 10.9.9.9\n  User bastion\n")
    ssh = {"config": str(config)}
    seen = access.resolve("web", None, None, ssh)
    assert (seen.hostname, seen.port, seen.user, seen.identities) == \
        ("10.1.1.1", 2222, "cfg", ("/k/cfg",))
    assert [(h.hostname, h.port, h.user) for h in seen.jumps] == \
        [("10.9.9.9", 22, "bastion"), ("hop2", 2200, "ops")]
    explicit = access.resolve("web", 22, "me", {**ssh, "identity": ("/k/mine",),
                                                 "proxy_jump": ()})
    assert (explicit.port, explicit.user, explicit.identities, explicit.jumps) == \
        (22, "me", ("/k/mine",), ())
    bare = access.resolve("other", None, "u", {"config": False})
    assert (bare.hostname, bare.port, bare.jumps) == ("other", 22, ())


# ----------------------------------------------------------------------------- jump hosts


def test_proxy_jump_from_ssh_config(fleet: Fleet, jump: SimHost, app_repo: AppRepo,
                                    tmp_path: Path) -> None:
    cli = Cli(tmp_path / "inv.yaml")
    config = alias_config(fleet, tmp_path / "ssh_config",
                          extra=f"  ProxyJump {fleet.user}@bastion:{jump.port}")
    with open(config, "a", encoding="utf-8") as fh:  # the hop is an alias too
        fh.write(f"Host bastion\n  HostName {jump.address}\n  IdentityFile {fleet.client_key}\n")
    alias_inventory(fleet, app_repo, cli.inventory, config)
    before_forwards, before_logins = len(forwards(jump)), logins(jump)
    app_repo.commit("jump-config-v1")
    cli("deploy", "--hosts", "prod", check=True)
    seen = forwards(jump)[before_forwards:]
    assert sorted(set(seen)) == sorted(h.address for h in fleet.hosts), seen
    assert logins(jump) - before_logins == 1  # one jump connection shared by both targets


def test_proxy_jump_from_inventory(fleet: Fleet, jump: SimHost, app_repo: AppRepo,
                                   tmp_path: Path) -> None:
    cli = Cli(tmp_path / "inv.yaml")
    hop = jump.address if jump.port == 22 else f"{jump.address}:{jump.port}"
    inventory(fleet, app_repo, cli.inventory, proxy_jump=hop, config=False)
    before = len(forwards(jump))
    app_repo.commit("jump-inventory-v1")
    cli("deploy", "--hosts", "prod", check=True)
    assert sorted(set(forwards(jump)[before:])) == sorted(h.address for h in fleet.hosts)


def test_wrong_jump_host_key_is_refused_naming_the_hop(
        fleet: Fleet, jump: SimHost, app_repo: AppRepo, tmp_path: Path) -> None:
    where = jump.address if jump.port == 22 else f"[{jump.address}]:{jump.port}"
    lines = fleet.known_hosts.read_text().splitlines()
    other_key = next(line.split(None, 1)[1] for line in lines if not line.startswith(where + " "))
    known = tmp_path / "known_hosts"
    known.write_text("".join(f"{where} {other_key}\n" if line.startswith(where + " ")
                             else line + "\n" for line in lines))
    cli = Cli(tmp_path / "inv.yaml")
    hop = f"{jump.address}:{jump.port}"
    inventory(fleet, app_repo, cli.inventory, proxy_jump=[hop], known_hosts=str(known))
    before, forwarded = releases(fleet), len(forwards(jump))
    app_repo.commit("jump-wrong-key")
    done = cli("deploy", "--hosts", "prod")
    assert done.returncode == 6, done.stdout + done.stderr
    assert f"jump host {fleet.user}@{jump.address}:{jump.port}" in done.stderr
    assert "CHANGED" in done.stderr and "refusing to connect" in done.stderr
    assert releases(fleet) == before  # nothing deployed
    assert len(forwards(jump)) == forwarded  # nothing went through the unverified hop
    assert done.stderr.count("CHANGED") >= len(fleet.hosts)  # every target says why


def test_two_hops_each_verified(fleet: Fleet, jump: SimHost, app_repo: AppRepo,
                                tmp_path: Path) -> None:
    second = start_jump_host(fleet, tmp_path / "jump2")
    try:
        cli = Cli(tmp_path / "inv.yaml")
        hops = [f"{jump.address}:{jump.port}", f"{fleet.user}@{second.address}:{second.port}"]
        inventory(fleet, app_repo, cli.inventory, proxy_jump=hops, config=False)
        before = len(forwards(jump))
        cli("check", "--hosts", "prod", check=True)
        assert set(forwards(jump)[before:]) == {second.address}  # first hop: to the second only
        assert sorted(set(forwards(second))) == sorted(h.address for h in fleet.hosts)
        assert logins(second) == 1  # shared by both targets
    finally:
        second.stop_sshd()


def test_proxy_command_from_ssh_config(fleet: Fleet, jump: SimHost, app_repo: AppRepo,
                                       tmp_path: Path) -> None:
    command = (f"ssh -q -i {fleet.client_key} -o IdentitiesOnly=yes -o BatchMode=yes "
               f"-o UserKnownHostsFile={fleet.known_hosts} -o StrictHostKeyChecking=yes "
               f"-p {jump.port} -W %h:%p {fleet.user}@{jump.address}")
    config = alias_config(fleet, tmp_path / "ssh_config", extra=f"  ProxyCommand {command}")
    cli = Cli(tmp_path / "inv.yaml")
    alias_inventory(fleet, app_repo, cli.inventory, config)
    before = len(forwards(jump))
    cli("check", "--hosts", "prod", check=True)
    assert sorted(set(forwards(jump)[before:])) == sorted(h.address for h in fleet.hosts)


def test_targets_reachable_only_through_the_jump_host(fleet: Fleet, jump: SimHost,
                                                      app_repo: AppRepo, tmp_path: Path) -> None:
    """The controller runs in a network namespace of its own whose only way out is
    127.0.0.1:2222, relayed to the jump host: a direct connection cannot reach a target."""
    if os.geteuid() != 0:
        pytest.skip("a network namespace for the controller needs root (unshare --net, setns)")
    isolated = isolate_behind(jump)
    try:
        known = tmp_path / "known_hosts"
        known.write_text(fleet.known_hosts.read_text()
                         + f"[127.0.0.1]:{isolated.port} {_public_key(jump.host_key)}\n")
        def inv(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(isolated.command(inv_command(*args, inventory=path)),
                                  capture_output=True, text=True, env=clean_env(),
                                  timeout=300)

        direct = tmp_path / "direct.yaml"
        inventory(fleet, app_repo, direct, known_hosts=str(known), config=False)
        done = inv(direct, "check", "--hosts", "prod")
        assert done.returncode == 6, done.stdout + done.stderr  # no way in without the hop
        assert "refused" in done.stderr or "cannot connect" in done.stderr

        jumped = tmp_path / "jumped.yaml"
        inventory(fleet, app_repo, jumped, known_hosts=str(known), config=False,
                  proxy_jump=f"127.0.0.1:{isolated.port}")
        before = len(forwards(jump))
        sha = app_repo.commit("isolated-v1")
        done = inv(jumped, "deploy", "--hosts", "prod")
        assert done.returncode == 0, done.stdout + done.stderr
        assert {r.rsplit("-", 1)[-1] for r in releases(fleet) if r} == {sha[:7]}
        assert sorted(set(forwards(jump)[before:])) == sorted(h.address for h in fleet.hosts)
    finally:
        isolated.stop()


def test_identities_only_offers_just_the_named_keys(
        fleet: Fleet, app_repo: AppRepo, agent: Agent, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True, stdin=subprocess.DEVNULL)
    agent.add(fleet.client_key)  # the right key, but only in the agent
    monkeypatch.setenv("SSH_AUTH_SOCK", str(agent.socket))
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n  IdentityFile " + str(stranger) + "\n  IdentitiesOnly yes\n")
    cli = Cli(tmp_path / "inv.yaml")
    inventory(fleet, app_repo, cli.inventory, identity=None, config=str(config))
    done = cli("check", "--hosts", "prod")
    assert done.returncode == 6, done.stdout + done.stderr  # the agent's key was not offered
    assert "ssh-agent key" not in done.stderr and f"tried key file {stranger}" in done.stderr
    config.write_text("Host *\n  IdentitiesOnly no\n  IdentityFile " + str(stranger) + "\n")
    cli("check", "--hosts", "prod", check=True)  # now the agent's key is offered too
