"""Judging a health answer against what the inventory expects."""

from __future__ import annotations

from deploytools.remote import health


def test_health_evaluation() -> None:
    spec = {"expect_status": 200, "expect_json": {"release": "r9", "app.ok": "True"}}
    assert health.evaluate(200, b'{"release": "r9", "app": {"ok": true}}', spec) is None
    assert "r8" in health.evaluate(200, b'{"release": "r8", "app": {"ok": true}}', spec)
    assert "HTTP 500" in health.evaluate(500, b"", spec)
    assert "not JSON" in health.evaluate(200, b"<html>", spec)
    assert health.evaluate(200, b"all good", {"expect_text": "good"}) is None
    values = {"host": "10.0.0.1", "release": "r9"}
    assert health.expand_placeholders({"u": "http://{host}/{release}/{x}"}, values) == \
        {"u": "http://10.0.0.1/r9/{x}"}
