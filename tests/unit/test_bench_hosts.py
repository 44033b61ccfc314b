"""What benchmarks/fleet_hosts.py reads from a fleet's files, without a fleet: supervisor
startsecs, and the inventory copy the benchmark deploys through."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from deploytools.inventory import load_inventory
from tests.support.cli import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import fleet_hosts  # noqa: E402

CONF = """
[supervisord]
nodaemon=true

[program:app]
command=python app.py
startsecs = 3 ; comment

[program:worker]
command=python worker.py
"""


def test_startsecs_defaults_to_one_and_names_missing_programs() -> None:
    assert fleet_hosts.startsecs(CONF, ["app", "worker:*", "ghost"]) == {
        "app": 3, "worker": 1, "ghost": None}


def test_inventory_copy_keeps_the_group_and_deploys_the_benchmark_repo(tmp_path: Path) -> None:
    source = tmp_path / "conf" / "inventory.yaml"
    source.parent.mkdir()
    source.write_text(yaml.safe_dump({
        "ssh": {"user": "deploy", "identity": "keys/id", "known_hosts": "known"},
        "defaults": {"deploy_to": "/srv/app", "supervisor": {"programs": ["app"]},
                     "source": {"repo": "git@example.com:app.git", "ref": "main",
                                "exclude": ["docs"]}},
        "groups": {"web": {"hosts": {"web1": {"host": "10.0.0.1", "port": 2222}}},
                   "db": {"hosts": {"db1": {"host": "10.0.0.9"}}}},
    }), encoding="utf-8")
    copy = fleet_hosts.write_inventory_copy(source, "web", tmp_path / "repo",
                                            tmp_path / "inv.yaml")
    hosts = load_inventory(copy).select("web")
    assert [h.name for h in hosts] == ["web1"]
    web1 = hosts[0]
    assert (web1.address, web1.port, web1.user) == ("10.0.0.1", 2222, "deploy")
    assert web1.get("source.repo") == str(tmp_path / "repo")
    assert web1.get("source.ref") == "HEAD"
    assert list(web1.get("source.exclude")) == ["docs"]
    assert web1.get("ssh.identity") == (str(source.parent / "keys" / "id"),)  # still absolute
    assert "db1" not in load_inventory(copy).hosts

    ssh = fleet_hosts.SshHosts.load(copy, "web").ssh_command("web1", "true")
    assert ssh[:3] == ["ssh", "-F", "/dev/null"]
    assert ["-i", str(source.parent / "keys" / "id")] == ssh[3:5]
    assert f"UserKnownHostsFile={source.parent / 'known'}" in ssh
    assert "StrictHostKeyChecking=yes" in ssh and "BatchMode=yes" in ssh
    assert ssh[-4:] == ["-p", "2222", "deploy@10.0.0.1", "true"]
