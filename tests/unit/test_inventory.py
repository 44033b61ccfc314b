"""Inventory parsing and validation: pure logic, no hosts needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploytools.errors import ConfigError, InventoryError
from deploytools.inventory import load_inventory, parse_inventory
from tests.support.cli import REPO_ROOT
from tests.support.inventories import one_host_inventory

BASE = {
    "defaults": {
        "deploy_to": "/srv/myapp",
        "source": {"repo": "/src/app"},
        "supervisor": {"programs": ["web"]},
        "health": {"url": "http://{host}:8000/health"},
    },
    "ssh": {"user": "deploy", "identity": "keys/id_ed25519"},
    "groups": {
        "prod": {
            "vars": {"keep_releases": 3, "health": {"timeout": 5}},
            "hosts": {
                "web1": {"host": "10.0.0.1"},
                "web2": {"host": "10.0.0.2", "port": 2222, "keep_releases": 7},
            },
        },
        "staging": {"hosts": {"stage1": {"host": "10.0.1.1", "user": "ops"}}},
        "web": {"hosts": ["web1", "stage1"]},
    },
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_precedence_host_over_group_over_defaults(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, BASE))
    web1, web2, stage1 = inv.hosts["web1"], inv.hosts["web2"], inv.hosts["stage1"]
    assert web1.settings["keep_releases"] == 3  # group vars
    assert web2.settings["keep_releases"] == 7  # host
    assert stage1.settings["keep_releases"] == 5  # built-in default
    # maps merge key by key: group sets health.timeout, defaults set health.url
    assert web1.get("health.timeout") == 5.0
    assert web1.get("health.url") == "http://{host}:8000/health"
    assert stage1.get("health.timeout") == 30.0
    # a port set nowhere stays unset: ssh_config's Port applies, else 22 (deploytools.access)
    assert (web2.port, web1.port) == (2222, None)
    assert (web1.user, stage1.user) == ("deploy", "ops")
    # relative key path resolves against the inventory's directory
    assert web1.get("ssh.identity") == (str(tmp_path / "keys/id_ed25519"),)
    assert web1.get("pyc_invalidation") == "checked-hash"


def test_host_selection(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, BASE))
    assert [h.name for h in inv.select("prod")] == ["web1", "web2"]
    assert [h.name for h in inv.select("web2,stage1")] == ["web2", "stage1"]
    assert [h.name for h in inv.select("all")] == ["web1", "web2", "stage1"]
    assert [h.name for h in inv.select("web")] == ["web1", "stage1"]
    assert inv.hosts["web1"].groups == ("prod", "web")
    with pytest.raises(ConfigError) as err:
        inv.select("web9")
    message = str(err.value)
    assert "web9" in message and "prod (group)" in message and "stage1" in message


@pytest.mark.parametrize(
    ("mutate", "key_path", "expected"),
    [
        (lambda d: d["groups"]["prod"]["hosts"]["web1"].update(prot=1),
         "groups.prod.hosts.web1.prot", "unknown key 'prot'"),
        (lambda d: d["groups"]["prod"]["hosts"]["web1"].update(port="abc"),
         "groups.prod.hosts.web1.port", "expected an integer from 1 to 65535"),
        (lambda d: d["defaults"].update(bytecode="sometimes"),
         "defaults.bytecode", "expected one of precompile, clear, off"),
        (lambda d: d["defaults"]["health"].update(expect_status="200"),
         "defaults.health.expect_status", "expected an integer"),
        (lambda d: d["groups"]["prod"]["vars"].update(keep_releases=0),
         "groups.prod.vars.keep_releases", "expected an integer from 1"),
        (lambda d: d["defaults"].update(deploy_to="relative/path"),
         "defaults.deploy_to", "expected an absolute path"),
        (lambda d: d["defaults"].update(deploy_to="/srv/../etc"),
         "defaults.deploy_to", "without '..'"),
        (lambda d: d["defaults"].update(deploy_to="/usr"),
         "defaults.deploy_to", "system directory"),
        (lambda d: d["defaults"]["supervisor"].update(programs="web"),
         "defaults.supervisor.programs", "expected a list"),
        (lambda d: d["ssh"].update(connect_timeout=[1]),
         "ssh.connect_timeout", "expected a number"),
        (lambda d: d["groups"]["staging"]["hosts"]["stage1"].pop("host"),
         "groups.staging.hosts.stage1", "missing required key 'host'"),
        (lambda d: d["defaults"].pop("deploy_to"),
         "groups.prod.hosts.web1", "missing required setting 'deploy_to'"),
        (lambda d: d["defaults"]["source"].update(path="/x"),
         "groups.prod.hosts.web1.source", "exactly one of source.repo"),
        (lambda d: d.update(extra=1), "extra", "unknown key 'extra'"),
        (lambda d: d["ssh"].update(identity=[]),
         "ssh.identity", "expected a key file path or a list of them"),
        (lambda d: d["ssh"].update(config=True),
         "ssh.config", "expected a path to an ssh_config file or false"),
        (lambda d: d["ssh"].update(config="missing_config"),
         "groups.prod.hosts.web1.ssh.config", "ssh_config file not found"),
        (lambda d: d["groups"]["prod"]["vars"].update(ssh={"proxy_jump": "a b"}),
         "groups.prod.vars.ssh.proxy_jump", 'expected "[user@]host[:port]"'),
        (lambda d: d["ssh"].update(proxy_jump=["ops@bastion:22", 5]),
         "ssh.proxy_jump[1]", 'expected "[user@]host[:port]"'),
    ],
)
def test_validation_names_file_key_path_and_expectation(
    tmp_path: Path, mutate, key_path: str, expected: str
) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(InventoryError) as err:
        load_inventory(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key_path}: "), message
    assert expected in message
    assert "\n" not in message


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="inventory file not found"):
        load_inventory(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  prod: [\n")
    with pytest.raises(InventoryError, match=r"bad.yaml: line \d+, column \d+"):
        load_inventory(bad)
    with pytest.raises(InventoryError, match="empty"):
        parse_inventory(None, "empty.yaml")


def test_example_inventory_is_valid() -> None:
    example = REPO_ROOT / "inventory.example.yaml"
    inv = load_inventory(example)
    assert inv.hosts and inv.groups


def test_access_settings_merge_and_resolve(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    (tmp_path / "ssh_config").write_text("Host *\n  User cfg\n")
    data["ssh"].update(identity=["keys/a", "/abs/b"], config="ssh_config")
    data["groups"]["prod"]["vars"]["ssh"] = {"proxy_jump": "ops@bastion:2222"}
    data["groups"]["staging"]["hosts"]["stage1"]["ssh"] = {"proxy_jump": False}
    inv = load_inventory(write(tmp_path, data))
    web1, stage1 = inv.hosts["web1"], inv.hosts["stage1"]
    assert web1.get("ssh.identity") == (str(tmp_path / "keys/a"), "/abs/b")
    assert web1.get("ssh.config") == str(tmp_path / "ssh_config")
    assert (web1.get("ssh.proxy_jump"), stage1.get("ssh.proxy_jump")) == \
        (("ops@bastion:2222",), ())


@pytest.mark.parametrize("spelling", ["/etc/.", "//etc", "/./etc", "///etc//", "/usr/./lib",
                                      "//", "/srv/."])
def test_deploy_to_guard_sees_through_spellings(spelling: str) -> None:
    with pytest.raises(InventoryError, match="system directory"):
        parse_inventory(one_host_inventory(deploy_to=spelling))


def test_deploy_to_is_normalised() -> None:
    inv = parse_inventory(one_host_inventory(deploy_to="//srv/./app//"))
    assert inv.hosts["web1"].deploy_to == "/srv/app"


def test_duplicate_yaml_keys_name_file_key_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("defaults:\n  deploy_to: /srv/a\n  source: {path: .}\n"
                    "  supervisor: {programs: [web]}\n  deploy_to: /srv/b\n"
                    "groups:\n  prod:\n    hosts:\n      web1: {host: 127.0.0.1}\n")
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    message = str(caught.value)
    assert str(path) in message and "defaults.deploy_to" in message and "line 5" in message
    assert caught.value.exit_code == 2 and "\n" not in message


def test_group_listing_a_host_by_name_applies_its_vars() -> None:
    data = one_host_inventory()
    data["groups"]["canary"] = {"vars": {"keep_releases": 9}, "hosts": ["web1"]}
    host = parse_inventory(data).hosts["web1"]
    assert host.settings["keep_releases"] == 9 and host.groups == ("prod", "canary")
    data["groups"]["prod"]["hosts"]["web1"]["keep_releases"] = 4  # the host still wins
    assert parse_inventory(data).hosts["web1"].settings["keep_releases"] == 4


@pytest.mark.parametrize(("address", "hint"), [
    ("10.0.0.1:2222", "port: 2222"), ("[fe80::1]:22", "port: 22"),
    ("deploy@web1.example.com", "user: deploy"), ("ops@10.0.0.1", "host: 10.0.0.1")])
def test_host_with_port_or_user_is_refused_with_a_hint(address: str, hint: str) -> None:
    data = one_host_inventory()
    data["groups"]["prod"]["hosts"]["web1"]["host"] = address
    with pytest.raises(InventoryError, match="groups.prod.hosts.web1.host") as caught:
        parse_inventory(data)
    assert hint in str(caught.value) and caught.value.exit_code == 2


def test_plain_ipv6_address_is_accepted() -> None:
    data = one_host_inventory()
    data["groups"]["prod"]["hosts"]["web1"]["host"] = "fe80::1"
    assert parse_inventory(data).hosts["web1"].address == "fe80::1"
