"""The built-in HAProxy drain, against a real HAProxy in front of the real sandbox fleet.

Module order matters (one fleet, one HAProxy): a first deploy without balancer, then
rolling deploys under steady load through HAProxy, each checked for zero failed
requests and every server back in rotation.
"""

from __future__ import annotations

import io
import json
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploytools.sandbox import Fleet
from deploytools.sandbox.balancer import HAProxy, haproxy_for, haproxy_path
from deploytools.sandbox.load import LoadGenerator
from tests.support.apprepo import AppRepo
from tests.support.cli import Cli, inv_command
from tests.support.fleets import make_fleet
from tests.support.layout import current_release, release_dirs

BOOT = 2.0  # seconds the sample app takes to boot, as real apps do


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def fleet4() -> Iterator[Fleet]:
    if haproxy_path() is None:
        pytest.fail("haproxy is not installed: run .ci/install (apt-get install haproxy)")
    yield from make_fleet(4)


@pytest.fixture(scope="module")
def plain_cli(fleet4: Fleet, app_repo: AppRepo,
              tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """The lb fleet's inventory without a balancer: prod is web1-3, web4 is the lb."""
    inventory = tmp_path_factory.mktemp("inv") / "inventory.yaml"
    fleet4.write_inventory(inventory, groups={"prod": ["web1", "web2", "web3"],
                                              "lb": ["web4"]},
                           source={"repo": str(app_repo.path)})
    return Cli(inventory)


@pytest.fixture(scope="module")
def proxy(fleet4: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HAProxy]:
    haproxy = haproxy_for(fleet4, tmp_path_factory.mktemp("haproxy"), free_port(),
                          ["web1", "web2", "web3"])
    try:
        yield haproxy
    finally:
        haproxy.stop()


@pytest.fixture()
def lb_cli(plain_cli: Cli, app_repo: AppRepo, proxy: HAProxy, fleet4: Fleet,
           tmp_path: Path) -> Cli:
    """Every prod server serving and UP in `proxy`, and a Cli whose inventory drains
    through it (an inventory of the test's own)."""
    if not all(h.health() for h in prod(fleet4)) or set(proxy.statuses().values()) != {"UP"}:
        app_repo.commit("lb-base", boot_delay=BOOT)
        plain_cli("deploy", "--hosts", "prod", check=True)
    assert set(proxy.wait_all_up(20).values()) == {"UP"}
    return plain_cli.with_settings(tmp_path / "lb.yaml", balancer=balancer(str(proxy.socket)))


def balancer(socket_path: str, **haproxy: str) -> dict:
    return {"haproxy": {"socket": socket_path, "backend": "app", "server": "{name}",
                        **haproxy},
            "drain_timeout": 10, "ready_timeout": 20}


def prod(fleet: Fleet) -> list:
    return [h for h in fleet.hosts if h.name != "web4"]


def no_lock_left(fleet: Fleet) -> bool:
    return not any((h.deploy_to / ".deploytools" / "lock").exists() for h in prod(fleet))


def test_first_deploy_brings_servers_up(plain_cli: Cli, app_repo: AppRepo, proxy: HAProxy,
                                        fleet4: Fleet) -> None:
    app_repo.commit("v1", boot_delay=BOOT)
    plain_cli("deploy", "--hosts", "prod", check=True)
    assert set(proxy.wait_all_up(20).values()) == {"UP"}


def deploy_under_load(cli: Cli, proxy: HAProxy, *args: str,
                      minimum: int = 500) -> tuple[subprocess.CompletedProcess[str], dict]:
    load = LoadGenerator(proxy.port, rate=60, threads=6, max_requests=3000,
                         max_seconds=150).start()
    try:
        done = cli("deploy", "--hosts", "prod", *args)
        load.wait_for(minimum, timeout=30)
    finally:
        result = load.stop()
    return done, {**result.summary(), "errors": result.errors}


def test_serial_deploy_with_drain_drops_nothing(lb_cli: Cli, app_repo: AppRepo,
                                                proxy: HAProxy, fleet4: Fleet,
                                                tmp_path: Path) -> None:
    app_repo.commit("v2", boot_delay=BOOT)
    report_path = tmp_path / "report.json"
    done, load = deploy_under_load(lb_cli, proxy, "--serial", "1", "--json", str(report_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert load["sent"] >= 500 and load["failed"] == 0, load
    report = json.loads(report_path.read_text())
    releases = {h["release"] for h in report["hosts"]}
    assert releases == {report["run"]["release_id"]}
    assert {current_release(h.deploy_to) for h in prod(fleet4)} == releases
    assert set(proxy.statuses().values()) == {"UP"}
    for host in report["hosts"]:
        avail = host["availability"]
        assert [a["action"] for a in avail["balancer_actions"]] == ["drain", "ready"]
        assert avail["out_of_rotation_seconds"] >= avail["unavailable_seconds"] >= BOOT
    assert "out of rotation" in done.stdout


def test_failed_health_is_rolled_back_and_back_in_rotation(lb_cli: Cli, app_repo: AppRepo,
                                                           proxy: HAProxy,
                                                           fleet4: Fleet) -> None:
    before = {h.name: current_release(h.deploy_to) for h in prod(fleet4)}
    app_repo.commit("v3-bad", boot_delay=BOOT, health_status=500)
    done, load = deploy_under_load(lb_cli, proxy, "--serial", "1", minimum=300)
    assert done.returncode == 3, done.stdout + done.stderr
    assert load["failed"] == 0, load
    assert {h.name: current_release(h.deploy_to) for h in prod(fleet4)} == before
    assert "rolled back" in done.stdout
    assert set(proxy.wait_all_up(10).values()) == {"UP"}
    assert no_lock_left(fleet4)


def test_batch_that_drains_every_up_server_is_refused(lb_cli: Cli, app_repo: AppRepo,
                                                      proxy: HAProxy, fleet4: Fleet) -> None:
    before = {h.name: (current_release(h.deploy_to), len(release_dirs(h.deploy_to)))
              for h in prod(fleet4)}
    app_repo.commit("v4", boot_delay=BOOT)
    done = lb_cli("deploy", "--hosts", "prod")  # one batch of all three
    assert done.returncode == 2, done.stdout + done.stderr
    assert "every UP server of backend app" in done.stderr + done.stdout
    assert "--serial" in done.stderr + done.stdout
    assert {h.name: (current_release(h.deploy_to), len(release_dirs(h.deploy_to)))
            for h in prod(fleet4)} == before
    assert set(proxy.statuses().values()) == {"UP"}
    assert no_lock_left(fleet4)


def test_ctrl_c_while_drained_ends_back_in_rotation(lb_cli: Cli, app_repo: AppRepo,
                                                    proxy: HAProxy, fleet4: Fleet) -> None:
    app_repo.commit("v5", boot_delay=BOOT)
    command = inv_command("deploy", "--hosts", "prod", "--serial", "1",
                          inventory=lb_cli.inventory)
    load = LoadGenerator(proxy.port, rate=40, threads=4, max_requests=2000,
                         max_seconds=90).start()
    inv = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while "DRAIN" not in proxy.statuses().values():
            assert time.monotonic() < deadline and inv.poll() is None, "never drained"
            time.sleep(0.02)
        inv.send_signal(signal.SIGINT)
        output, _ = inv.communicate(timeout=90)
    finally:
        if inv.poll() is None:
            inv.kill()
            inv.wait()
        result = load.stop()
    # 130 (interrupted), or 4 when the host in flight finished on the new release and the
    # fleet is now mixed (the existing exit-code rule: a mixed fleet outranks the interrupt)
    assert inv.returncode in (130, 4), output
    assert "interrupted" in output
    assert set(proxy.wait_all_up(10).values()) == {"UP"}, output
    assert result.failed == 0, result.errors
    assert no_lock_left(fleet4), output
    assert all(h.health() for h in prod(fleet4))


def test_via_host_reaches_a_socket_only_it_can_see(lb_cli: Cli, app_repo: AppRepo,
                                                   proxy: HAProxy, fleet4: Fleet,
                                                   tmp_path: Path) -> None:
    """The runtime socket lives under web4's own $HOME ("~/..." there): the controller
    cannot reach it, web4's SSH connection can."""
    lb_host = fleet4.host("web4")
    private = haproxy_for(fleet4, tmp_path / "lb", free_port(), ["web1", "web2", "web3"],
                          socket_path=lb_host.home / "haproxy" / "admin.sock")
    try:
        private.wait_all_up(20)
        hidden = lb_cli.with_settings(tmp_path / "hidden.yaml",
                                      balancer=balancer("~/haproxy/admin.sock"))
        refused = hidden("deploy", "--hosts", "prod", "--serial", "1")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "does not answer" in refused.stdout + refused.stderr
        via = lb_cli.with_settings(tmp_path / "via.yaml",
                                   balancer=balancer("~/haproxy/admin.sock", via="web4"))
        app_repo.commit("v6", boot_delay=BOOT)
        done, load = deploy_under_load(via, private, "--serial", "1", minimum=200)
        assert done.returncode == 0, done.stdout + done.stderr
        assert load["failed"] == 0, load
        assert "drained app/web1" in done.stdout
        assert set(private.statuses().values()) == {"UP"}
    finally:
        private.stop()


def test_via_runtime_survives_a_connection_gone_stale(lb_cli: Cli, fleet4: Fleet,
                                                      tmp_path: Path) -> None:
    """The via host's SSH connection dies between two commands (sshd restarted, NAT
    timeout): the next command opens a fresh connection instead of failing the drain."""
    from deploytools.balancer import Balancer
    from deploytools.console import Console
    from deploytools.inventory import load_inventory

    lb_host = fleet4.host("web4")
    private = haproxy_for(fleet4, tmp_path / "lb", free_port(), ["web1"],
                          socket_path=lb_host.home / "haproxy" / "admin.sock")
    hosts = {h.name: h for h in load_inventory(lb_cli.inventory).select("all")}
    balancer_ = Balancer([], Console(io.StringIO()), inventory_hosts=hosts)
    key = ("~/haproxy/admin.sock", "web4")
    try:
        assert ("app", "web1") in balancer_.stats(key)
        first = balancer_._via_connection("web4")
        first.client.get_transport().close()
        assert ("app", "web1") in balancer_.stats(key)
        assert balancer_._via_connection("web4") is not first
    finally:
        balancer_.close()
        private.stop()


def test_per_host_hook_points_run_inside_each_batch(lb_cli: Cli, app_repo: AppRepo,
                                                    fleet4: Fleet, tmp_path: Path) -> None:
    """Local and shell hooks: before_switch for the whole fleet first, then per host and
    in batch order before_restart -> (stop, start, health) -> after_restart; --batch-wait
    pauses between batches."""

    import yaml

    from deploytools import flow, local_hooks
    from deploytools.console import Console
    from deploytools.inventory import load_inventory
    from deploytools.rollout import RolloutPolicy

    log = tmp_path / "hooks.log"
    shell = {point: [f"echo remote {point} {{name}} >> {shlex.quote(str(log))}"]
             for point in ("before_switch", "before_restart", "after_restart")}
    data = yaml.safe_load(lb_cli.inventory.read_text())
    data["defaults"].pop("balancer", None)
    data["defaults"]["hooks"] = shell
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    stamps: dict[str, float] = {}

    def record(ctx: local_hooks.HookContext) -> None:
        stamps[f"{ctx.point} {ctx.name}"] = time.monotonic()
        with log.open("a") as fh:
            fh.write(f"local {ctx.point} {ctx.name}\n")

    for point in ("before_switch", "before_restart", "after_restart"):
        local_hooks.on(point)(record)
    try:
        app_repo.commit("v-hooks")
        hosts = load_inventory(inventory).select("prod")
        result = flow.deploy(hosts, Console(io.StringIO()),
                             policy=RolloutPolicy(serial=1, batch_wait=0.5))
    finally:
        local_hooks.clear()
    assert result.exit_code == 0
    lines = log.read_text().splitlines()
    fleet_wide = lines[:6]
    assert sorted(fleet_wide) == sorted(f"{side} before_switch {h}" for h in
                                        ("web1", "web2", "web3") for side in ("local", "remote"))
    assert lines[6:] == [f"{side} {point} {h}" for h in ("web1", "web2", "web3")
                         for side, point in (("local", "before_restart"),
                                             ("remote", "before_restart"),
                                             ("remote", "after_restart"),
                                             ("local", "after_restart"))]
    assert stamps["before_restart web2"] - stamps["after_restart web1"] >= 0.5
