"""Pipelines and operators, on a real 3-host fleet: the JSON report against its schema,
stdout purity, TTY vs plain output, dry runs, --skip-unchanged, status/check, locks held
by others, a project reusing the task collection, and the demo."""

from __future__ import annotations

import json
import os
import pstats
import pty
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from deploytools.jsonreport import SCHEMA_PATH
from deploytools.sandbox import Fleet, SimHost
from tests.support.apprepo import AppRepo
from tests.support.cli import Cli, clean_env, inv_command
from tests.support.fleets import deployed, serving_release
from tests.support.layout import current_release

SCHEMA = json.loads(SCHEMA_PATH.read_text())


def report(cli: Cli, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    path = tmp_path / f"report-{time.monotonic_ns()}.json"
    done = cli(*args, "--json", str(path))
    document = json.loads(path.read_text())
    jsonschema.validate(document, SCHEMA)
    assert document["exit_code"] == done.returncode
    return done, document


def tree(host: SimHost) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(host.deploy_to):
        for name in dirnames + filenames:
            stat = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (stat.st_size, stat.st_mtime_ns)
    return out


def settled_tree(host: SimHost, timeout: float = 20) -> dict[str, tuple[int, int]]:
    """The tree once the last deploy's background housekeeping (old releases moved to
    hidden trash and deleted) has finished: no trash left and two equal looks."""
    deadline = time.monotonic() + timeout
    last = tree(host)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = tree(host)
        trash = any(p.name.startswith(".") for p in (host.deploy_to / "releases").iterdir())
        if now == last and not trash:
            return now
        last = now
    raise AssertionError(f"{host.name}: deploy_to never settled")


def test_json_report_of_a_mixed_run_matches_the_fleet(cli: Cli, fleet3: Fleet,
                                                      app_repo: AppRepo, tmp_path: Path) -> None:
    app_repo.commit("j1")
    cli("deploy", "--hosts", "prod", check=True)
    app_repo.commit("j2")
    data = yaml.safe_load(cli.inventory.read_text())
    version = fleet3.host("web2").health()["version"]
    data["groups"]["prod"]["hosts"]["web2"]["health"] = {"expect_json": {"version": version},
                                                         "timeout": 1}
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(yaml.safe_dump(data))
    done, document = report(cli, tmp_path, "deploy", "--hosts", "prod", "--inventory",
                            str(mixed))
    assert done.returncode == 4 and document["outcome"] == "partial"
    assert document["run"]["action"] == "deploy"
    assert document["run"]["revision"] == app_repo.git("rev-parse", "HEAD")
    outcomes = {h["name"]: h["outcome"] for h in document["hosts"]}
    assert outcomes == {"web1": "healthy", "web2": "rolled_back", "web3": "healthy"}
    for entry in document["hosts"]:
        host = fleet3.host(entry["name"])
        assert entry["release"] == current_release(host.deploy_to) == host.health()["release"]
        # one connection and one agent session per host: preflight, prepare, activate, finish
        assert entry["transport"]["connections"] == 1
        assert (entry["transport"]["commands"], entry["transport"]["requests"]) == (1, 4)
    web1 = next(h for h in document["hosts"] if h["name"] == "web1")
    assert web1["programs"][0]["new_pid"] == fleet3.host("web1").health()["pid"]
    assert web1["health"]["ok"] is True and web1["phases"]["prepare"] > 0
    web2 = next(h for h in document["hosts"] if h["name"] == "web2")
    assert "version is" in web2["error"]
    # what each step cost, both ends: the agent measures itself, its sshd and supervisord
    cost = web1["cost"]
    assert {"connect", "agent_start", "preflight", "prepare", "activate", "finish"} <= set(cost)
    assert cost["prepare"]["bytes_sent"] > 0 and cost["prepare"]["files_written"] >= 1
    assert cost["prepare"]["agent_cpu_s"] > 0 and cost["agent_start"]["agent_cpu_s"] > 0
    assert cost["prepare"]["sshd_cpu_s"] is not None  # root may read its sshd's /proc
    assert cost["activate"]["supervisord_cpu_s"] is not None
    assert document["run"]["cost"]["controller_cpu_s"] > 0


def test_every_task_writes_a_valid_report(cli: Cli, fleet3: Fleet, app_repo: AppRepo,
                                          tmp_path: Path) -> None:
    serving_release(cli, fleet3, app_repo)
    deployed(cli, app_repo, "every-task")  # and a previous release to roll back to
    for args in (["verify"], ["status"], ["releases"], ["check"], ["clear-cache"],
                 ["rollback", "--dry-run"], ["unlock"]):
        done, document = report(cli, tmp_path, *args, "--hosts", "prod")
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert document["run"]["action"] == args[0]
    _, document = report(cli, tmp_path, "verify", "--hosts", "prod")
    assert all(c["ok"] for h in document["hosts"] for c in h["checks"])


def test_json_on_stdout_is_pure(cli: Cli, fleet3: Fleet, app_repo: AppRepo) -> None:
    serving_release(cli, fleet3, app_repo)
    done = cli("status", "--hosts", "prod", "--json", "-")
    document = json.loads(done.stdout)
    jsonschema.validate(document, SCHEMA)
    assert "release" in done.stderr  # the human view went to stderr


def test_plain_lines_without_a_tty_and_a_live_view_with_one(cli: Cli, app_repo: AppRepo,
                                                            tmp_path: Path) -> None:
    app_repo.commit("tty")
    done = cli("deploy", "--hosts", "prod", check=True)
    assert "\x1b" not in done.stdout + done.stderr
    assert all(line[:2].isdigit() or not line or line.startswith(("host", "-", "web"))
               for line in done.stdout.splitlines())

    app_repo.commit("tty2")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "DEPLOYTOOLS_INVENTORY")}
    env.update(TERM="xterm-256color", COLUMNS="120", LINES="40")
    pid, fd = pty.fork()
    if pid == 0:  # the child: inv on a pseudo-terminal
        os.execve(sys.executable, inv_command("deploy", "--hosts", "prod",
                                              inventory=cli.inventory), env)
    output = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    assert "\x1b[" in text  # drawn by the live view
    assert "elapsed" in text and "phase" in text  # its columns


def test_dry_run_changes_nothing_and_lists_every_host_and_batch(
        cli: Cli, fleet3: Fleet, app_repo: AppRepo) -> None:
    serving_release(cli, fleet3, app_repo)
    deployed(cli, app_repo, "dry-base")  # and a previous release to roll back to
    app_repo.commit("dry")
    before = {h.name: settled_tree(h) for h in fleet3.hosts}
    pids = {h.name: h.health()["pid"] for h in fleet3.hosts}
    done = cli("deploy", "--hosts", "prod", "--dry-run", "--serial", "1", check=True)
    assert {h.name: tree(h) for h in fleet3.hosts} == before
    assert {h.name: h.health()["pid"] for h in fleet3.hosts} == pids
    for number, host in enumerate(fleet3.hosts, 1):
        assert f"batch {number}/3: {host.name}" in done.stdout
        assert f"[{host.name}] would create" in done.stdout
        assert f"[{host.name}] would switch" in done.stdout
    assert "nothing was changed" in done.stdout
    for args in (["rollback", "--dry-run"], ["clear-cache", "--restart", "--dry-run"]):
        cli(*args, "--hosts", "prod", check=True)
        assert {h.name: tree(h) for h in fleet3.hosts} == before


def test_skip_unchanged_is_a_fast_no_op(cli: Cli, fleet3: Fleet, app_repo: AppRepo,
                                        tmp_path: Path) -> None:
    deployed(cli, app_repo, "skip")
    pids = {h.name: h.health()["pid"] for h in fleet3.hosts}
    done, document = report(cli, tmp_path, "deploy", "--hosts", "prod", "--skip-unchanged")
    assert done.returncode == 0
    assert {h["outcome"] for h in document["hosts"]} == {"unchanged"}
    # one remote command and one request per host: asked, verified, left alone
    assert all((h["transport"]["commands"], h["transport"]["requests"]) == (1, 1)
               for h in document["hosts"])
    assert {h.name: h.health()["pid"] for h in fleet3.hosts} == pids
    assert "building release" not in done.stdout  # nothing to build either
    # a host whose processes are stale is not "unchanged": it gets the deploy
    fleet3.host("web3").supervisor_rpc().supervisor.stopProcess("app")
    done, document = report(cli, tmp_path, "deploy", "--hosts", "prod", "--skip-unchanged")
    assert done.returncode == 0
    outcomes = {h["name"]: h["outcome"] for h in document["hosts"]}
    assert outcomes == {"web1": "unchanged", "web2": "unchanged", "web3": "healthy"}
    assert fleet3.host("web3").health()["release"] == current_release(fleet3.host("web3").deploy_to)


def test_lock_held_by_someone_else(cli: Cli, fleet3: Fleet, app_repo: AppRepo) -> None:
    serving_release(cli, fleet3, app_repo)  # the hosts have their state directory
    host = fleet3.host("web1")
    lock = host.deploy_to / ".deploytools" / "lock"
    lock.mkdir()
    (lock / "owner.json").write_text(json.dumps({
        "user": "alice", "controller": "laptop", "pid": 4242, "action": "deploy",
        "release": "20260101T000000Z-abcdef0", "acquired_at": time.time() - 30,
        "token": "not-yours"}))
    try:
        done = cli("deploy", "--hosts", "prod")
        assert done.returncode == 5
        assert "deploy lock held by alice@laptop (pid 4242)" in done.stderr
        assert not (fleet3.host("web2").deploy_to / ".deploytools" / "lock").exists()
        done = cli("status", "--hosts", "prod")
        assert "held by alice" in done.stdout
        done = cli("unlock", "--hosts", "web1")  # not stale: refused without --force
        assert done.returncode == 5 and "not stale" in done.stderr and lock.exists()
    finally:
        cli("unlock", "--hosts", "web1", "--force", check=True)
    assert not lock.exists()


def test_check_reports_problems_without_changing_anything(cli: Cli, fleet3: Fleet,
                                                          tmp_path: Path) -> None:
    done = cli("check", "--hosts", "prod", check=True)
    assert done.stdout.count(" ok ") >= 3
    data = yaml.safe_load(cli.inventory.read_text())
    data["defaults"]["supervisor"] = {"programs": ["app", "nosuchprogram"]}
    fresh = tmp_path / "fresh"
    data["groups"]["prod"]["hosts"]["web3"]["deploy_to"] = str(fresh / "app")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    done = cli("check", "--hosts", "prod", "--inventory", str(bad))
    assert done.returncode == 7
    assert "nosuchprogram" in done.stdout
    assert not fresh.exists()  # check created nothing


def test_a_project_reusing_the_collection(cli: Cli, fleet3: Fleet, app_repo: AppRepo,
                                          tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    hook_log = tmp_path / "local-hooks.log"
    (project / "tasks.py").write_text(
        "from invoke import Collection, task\n"
        "import deploytools.tasks\n"
        "from deploytools import local_hooks\n\n"
        "@task\n"
        "def hello(c):\n"
        "    print('hello')\n\n"
        "@local_hooks.on('before_switch')\n"
        "@local_hooks.on('after_restart')\n"
        "def record(ctx):\n"
        "    where = ctx.connection.run('echo $HOME', hide=True).stdout.strip()\n"
        f"    with open({str(hook_log)!r}, 'a') as fh:\n"
        "        fh.write(f'{ctx.point} {ctx.name} {ctx.release} {bool(where)}\\n')\n\n"
        "ns = Collection(hello)\n"
        "ns.add_collection(deploytools.tasks.collection, 'dt')\n")
    (project / "invoke.yaml").write_text(yaml.safe_dump(
        {"deploytools": {"inventory": str(cli.inventory), "hosts": "prod"}}))
    app_repo.commit("from-project")
    env = clean_env()
    listing = subprocess.run(inv_command("--list", search_root=None), cwd=project,
                             capture_output=True, text=True, env=env)
    assert "dt.deploy" in listing.stdout and "dt.verify" in listing.stdout
    done = subprocess.run(inv_command("dt.deploy", search_root=None), cwd=project,
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    sha = app_repo.git("rev-parse", "HEAD")
    release = current_release(fleet3.hosts[0].deploy_to)
    for host in fleet3.hosts:
        assert host.health()["revision"] == sha
    calls = sorted(hook_log.read_text().splitlines())
    assert calls == sorted(f"{point} {h.name} {release} True" for h in fleet3.hosts
                           for point in ("before_switch", "after_restart"))
    helptext = subprocess.run(inv_command("--help", "dt.deploy", search_root=None),
                              cwd=project, capture_output=True, text=True, env=env)
    for flag in ("--serial", "--canary", "--dry-run", "--skip-unchanged", "--json"):
        assert flag in helptext.stdout


def test_log_file_gets_the_progress_lines(cli: Cli, fleet3: Fleet, app_repo: AppRepo,
                                          tmp_path: Path) -> None:
    serving_release(cli, fleet3, app_repo)
    log = tmp_path / "deploy.log"
    cli("verify", "--hosts", "prod", "--log", str(log), check=True)
    cli("releases", "--hosts", "prod", "--log", str(log), check=True)
    text = log.read_text()
    assert "verify: 3 of 3 hosts pass" in text and "release" in text
    assert text.splitlines()[0][:4].isdigit()  # dated lines


def test_demo_runs_end_to_end() -> None:
    done = subprocess.run(inv_command("demo"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every host is back on v2" in done.stdout
    assert "verify: 3 of 3 hosts pass" in done.stdout


def test_profile_of_the_controller_and_one_agent(cli: Cli, fleet3: Fleet, app_repo: AppRepo,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYTOOLS_PROFILE", str(tmp_path / "profile"))
    app_repo.commit("profiled")
    cli("deploy", "--hosts", "prod", check=True)
    written = sorted(p.name for p in (tmp_path / "profile").iterdir())
    assert written[-1] == "controller.pstats" and len(written) == 2, written
    assert written[0] in {f"agent-{h.name}.pstats" for h in fleet3.hosts}
    agent = pstats.Stats(str(tmp_path / "profile" / written[0]))
    assert any(name == "op_prepare" for _, _, name in agent.stats)  # type: ignore[attr-defined]
    controller = pstats.Stats(str(tmp_path / "profile" / "controller.pstats"))
    assert any(name == "prepare" and path.endswith("steps.py")
               for path, _, name in controller.stats)  # type: ignore[attr-defined]
