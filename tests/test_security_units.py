"""Pure-logic security checks: masking, credential stripping, deploy_to guards,
hook quoting, inventory validation."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from deploytools.artifact import build_artifact
from deploytools.console import make_console
from deploytools.errors import ConfigError, InventoryError
from deploytools.inventory import load_inventory, parse_inventory
from deploytools.jsonreport import SCHEMA_PATH
from deploytools.masking import mask_secrets, strip_credentials
from deploytools.operations import clear_cache
from deploytools.remote.hooks import run_hooks


def test_masking_catches_token_userinfo_password_only_and_webhook_paths() -> None:
    cases = {
        "clone https://ghp_abcDEF123@github.com/o/r.git": "ghp_abcDEF123",
        "redis://:pw0rd@cache:6379/0": "pw0rd",
        "amqp://user:hunter2@mq/vhost": "hunter2",
        "POST https://hooks.slack.com/services/T0001/B0002/XXXXsecretYYYY failed": "XXXXsecret",
        "https://discord.com/api/webhooks/123/abcTOKENdef": "abcTOKENdef",
        "https://ci.example.com/webhook/9f8e7d6c5b4a39281706": "9f8e7d6c5b4a",
        "GET http://h/health?access_token=abc123": "abc123",
    }
    for text, secret in cases.items():
        assert secret not in mask_secrets(text), text
    assert mask_secrets("ssh://git@github.com/o/r") == "ssh://git@github.com/o/r"
    assert mask_secrets("no secrets at http://h:8000/health") == \
        "no secrets at http://h:8000/health"


def test_strip_credentials_drops_userinfo_secrets_only() -> None:
    assert strip_credentials("https://user:tok@h/r.git") == "https://h/r.git"
    assert strip_credentials("https://tok@h/r.git") == "https://h/r.git"
    assert strip_credentials("ssh://git@h/r.git") == "ssh://git@h/r.git"
    assert strip_credentials("git@h:r.git") == "git@h:r.git"
    assert strip_credentials("/srv/repos/app") == "/srv/repos/app"
    assert "pw" not in strip_credentials("ssh://git:pw@h/r")


def _inventory(**defaults: object) -> dict:
    return {
        "defaults": {"deploy_to": "/srv/app", "source": {"path": "."},
                     "supervisor": {"programs": ["web"]}, **defaults},
        "groups": {"prod": {"hosts": {"web1": {"host": "127.0.0.1"}}}},
    }


@pytest.mark.parametrize("spelling", ["/etc/.", "//etc", "/./etc", "///etc//", "/usr/./lib",
                                      "//", "/srv/."])
def test_deploy_to_guard_sees_through_spellings(spelling: str) -> None:
    with pytest.raises(InventoryError, match="system directory"):
        parse_inventory(_inventory(deploy_to=spelling))


def test_deploy_to_is_normalised() -> None:
    inv = parse_inventory(_inventory(deploy_to="//srv/./app//"))
    assert inv.hosts["web1"].deploy_to == "/srv/app"


def test_clear_cache_path_guard_sees_through_spellings() -> None:
    host = parse_inventory(_inventory()).hosts["web1"]
    for path in ("/srv/app/../../etc", "/srv/app/./../x", "/srv/appx", "//srv/other"):
        with pytest.raises(ConfigError):
            clear_cache([host], make_console(io.StringIO()), path=path, dry_run=True)


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
    data = _inventory()
    data["groups"]["canary"] = {"vars": {"keep_releases": 9}, "hosts": ["web1"]}
    host = parse_inventory(data).hosts["web1"]
    assert host.settings["keep_releases"] == 9 and host.groups == ("prod", "canary")
    data["groups"]["prod"]["hosts"]["web1"]["keep_releases"] = 4  # the host still wins
    assert parse_inventory(data).hosts["web1"].settings["keep_releases"] == 4


@pytest.mark.parametrize(("address", "hint"), [
    ("10.0.0.1:2222", "port: 2222"), ("[fe80::1]:22", "port: 22"),
    ("deploy@web1.example.com", "user: deploy"), ("ops@10.0.0.1", "host: 10.0.0.1")])
def test_host_with_port_or_user_is_refused_with_a_hint(address: str, hint: str) -> None:
    data = _inventory()
    data["groups"]["prod"]["hosts"]["web1"]["host"] = address
    with pytest.raises(InventoryError, match="groups.prod.hosts.web1.host") as caught:
        parse_inventory(data)
    assert hint in str(caught.value) and caught.value.exit_code == 2


def test_plain_ipv6_address_is_accepted() -> None:
    data = _inventory()
    data["groups"]["prod"]["hosts"]["web1"]["host"] = "fe80::1"
    assert parse_inventory(data).hosts["web1"].address == "fe80::1"


def test_non_utf8_file_name_is_a_clear_planning_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "app.py").write_text("X = 1\n")
    with open(os.path.join(os.fsencode(repo), b"caf\xe9.txt"), "w") as fh:
        fh.write("x")
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    for source in ({"repo": str(repo)}, {"path": str(repo)}):
        with pytest.raises(ConfigError, match=r"file name b'caf\\xe9.txt' is not valid UTF-8"):
            build_artifact(dict(source, exclude=()), "HEAD" if "repo" in source else None)
    built = build_artifact({"path": str(repo), "exclude": ("caf*",)})
    assert set(built.manifest["files"]) == {"app.py"}


def test_hook_placeholders_are_shell_quoted(tmp_path: Path) -> None:
    """A hostile value (here a deploy_to with shell syntax) reaches the hook as one word
    and runs nothing: the hook is run for real by the host-side runner, in a real shell."""
    pwned = tmp_path / "PWNED"
    hostile = f"/srv/a b; touch {pwned}; $(touch {pwned}) `touch {pwned}` '\""
    values = {"deploy_to": hostile, "name": "web1", "release": "r1"}
    results = run_hooks("after_restart", {"after_restart": ["printf '%s|' {deploy_to} {name}"]},
                        str(tmp_path), values, True, lambda line: None)
    assert results[0]["output"] == f"{hostile}|web1|"
    assert not pwned.exists()


def _run_inv(*args: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(root), *args],
                          capture_output=True, text=True, timeout=120)


def test_json_report_is_written_on_config_errors(tmp_path: Path) -> None:
    """Exit 2 (a refused inventory) still writes --json: outcome "error", the message,
    valid against the schema; a stale report from an earlier run is replaced."""
    inventory = tmp_path / "inventory.yaml"
    data = _inventory()
    data["groups"]["prod"]["hosts"]["web1"]["host"] = "10.0.0.1:2222"
    inventory.write_text(yaml.safe_dump(data))
    target = tmp_path / "report.json"
    target.write_text('{"outcome": "ok", "stale": true}')
    for task in ("deploy", "clear-cache", "status"):
        done = _run_inv(task, "--hosts", "prod", "--inventory", str(inventory),
                        "--json", str(target))
        assert done.returncode == 2, done.stderr
        document = json.loads(target.read_text())
        jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))
        assert document["outcome"] == "error" and document["exit_code"] == 2
        assert "port: 2222" in document["error"] and document["run"]["action"] == task
    done = _run_inv("deploy", "--hosts", "prod", "--inventory", str(inventory), "--json", "-")
    assert json.loads(done.stdout)["outcome"] == "error"


def test_json_report_is_written_when_planning_fails(tmp_path: Path) -> None:
    """A run that stops while planning (an unreachable git URL) writes the report too,
    its secrets masked like everything printed."""
    inventory = tmp_path / "inventory.yaml"
    data = _inventory()
    data["defaults"]["source"] = {"repo": "https://deployer:tok3nXYZ@127.0.0.1:9/none.git"}
    inventory.write_text(yaml.safe_dump(data))
    target = tmp_path / "report.json"
    done = _run_inv("deploy", "--hosts", "prod", "--inventory", str(inventory),
                    "--json", str(target))
    assert done.returncode != 0
    document = json.loads(target.read_text())
    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))
    assert document["outcome"] == "error" and document["exit_code"] == done.returncode
    assert "tok3nXYZ" not in target.read_text() + done.stdout + done.stderr
