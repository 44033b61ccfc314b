"""supervisorctl's status text, read when sudo supervisorctl is the only way in."""

from __future__ import annotations

from deploytools.remote.supervisorctl import parse_status


def test_parse_status() -> None:
    """supervisorctl's status text becomes getProcessInfo-shaped rows; noise is kept apart."""
    text = ("app                              RUNNING   pid 4242, uptime 0:00:05\n"
            "web:web_0                        BACKOFF   Exited too quickly (process log may "
            "have details)\n"
            "worker                           STOPPED   Not started\n"
            "unix:///x/supervisor.sock refused connection\n")
    infos, noise = parse_status(text)
    assert [(i["group"], i["name"], i["statename"], i["pid"]) for i in infos] == [
        ("app", "app", "RUNNING", 4242), ("web", "web_0", "BACKOFF", 0),
        ("worker", "worker", "STOPPED", 0)]
    assert infos[1]["description"].startswith("Exited too quickly")
    assert noise == ["unix:///x/supervisor.sock refused connection"]
