"""`inv demo`: a local sandbox fleet, a sample app, and a real deploy story on it.

Shows a new user the whole product in one command on one machine: simulated
hosts (real sshd + supervisord each, on 127.x addresses), deploy v1, deploy v2,
a failing v3 that is rolled back on its own, the releases on every host, the proof
(`verify`) and the fleet view (`status`).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from deploytools import flow, operations
from deploytools.console import Console
from deploytools.errors import ConfigError, ExitCode
from deploytools.fleetrun import RunResult
from deploytools.inventory import load_inventory
from deploytools.sandbox import sshd_path, start_fleet, write_sample_app


def _commit(repo: Path, version: str, **options: object) -> None:
    write_sample_app(repo, version, **options)  # type: ignore[arg-type]
    for args in (["add", "-A"], ["-c", "user.name=demo", "-c", "user.email=demo@example.com",
                                 "commit", "-q", "-m", version]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def run_demo(console: Console, hosts: int = 3, keep: bool = False) -> RunResult:
    """Bring up the sandbox, deploy twice and once badly, show the result, tear down."""
    if sshd_path() is None:
        raise ConfigError("inv demo needs OpenSSH's sshd binary: run `bash .ci/install` "
                          "or `apt-get install openssh-server`")
    root = Path(tempfile.mkdtemp(prefix="deploytools-demo-"))
    console.info(f"starting {hosts} simulated hosts under {root}")
    fleet = start_fleet(hosts, root=root / "fleet")
    try:
        repo = root / "app"
        repo.mkdir()
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        inventory_file = fleet.write_inventory(root / "inventory.yaml",
                                               source={"repo": str(repo)})
        selected = load_inventory(inventory_file).select("prod")
        for version, options in (("v1", {}), ("v2", {}), ("v3-broken", {"health_status": 500})):
            _commit(repo, version, **options)
            console.info(f"==> inv deploy --hosts prod   (app {version})")
            result = flow.deploy(selected, console)
        console.info("==> inv releases --hosts prod")
        operations.list_releases(selected, console)
        console.info("==> inv verify --hosts prod")
        verified = operations.verify(selected, console)
        console.info("==> inv status --hosts prod")
        operations.status(selected, console)
        for sim in fleet.hosts:
            answer = sim.health() or {}
            console.info(f"{sim.name} serves release {answer.get('release')} "
                         f"(version {answer.get('version')}, pid {answer.get('pid')})")
        ok = result.exit_code == ExitCode.FAILED_ROLLED_BACK and verified.exit_code == 0 and all(
            (sim.health() or {}).get("version") == "v2" for sim in fleet.hosts)
        console.info("demo finished: v3 failed its health check and every host is back on v2"
                     if ok else "demo finished with unexpected results (see above)")
        if keep:
            pids = fleet.detach()
            console.info(f"left running: inventory {inventory_file}; "
                         f"stop with: kill $(cat {pids})")
        result.exit_code = ExitCode.OK if ok else ExitCode.INTERNAL
        return result
    finally:
        if not keep:
            fleet.stop()
