"""Secrets never reach a log, a report or a host file."""

from __future__ import annotations

from deploytools.masking import mask_secrets, strip_credentials


def test_secrets_are_masked() -> None:
    assert mask_secrets("GET https://u:hunter2@h/x") == "GET https://u:***@h/x"
    assert mask_secrets("http://h/health?token=abc&x=1") == "http://h/health?token=***&x=1"
    assert "s3cr3t" not in mask_secrets("url http://h/?api_key=s3cr3t failed")


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
