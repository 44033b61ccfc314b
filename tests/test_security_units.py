"""Pure-logic security checks: masking, credential stripping, deploy_to guards,
hook quoting, inventory validation."""

from __future__ import annotations

import io

import pytest

from deploytools.errors import ConfigError, InventoryError
from deploytools.inventory import parse_inventory
from deploytools.operations import clear_cache
from deploytools.report import make_console, mask_secrets, strip_credentials


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
