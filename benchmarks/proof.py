"""The false-alarm figure (issue 11): K healthy deploy+verify cycles across the variant
fleet, then a catalogue of planted stale situations, and one table.

    PYTHONPATH=. python3 benchmarks/proof.py [--cycles 50] [--time-limit 900]

A healthy cycle counts as a false alarm when its deploy or the verify after it does not
exit 0. Each planted situation counts as caught when verify exits 7 on that host; it is
then undone and verify must pass again. Every process the script starts is stopped by
PID (the fleet's daemons by Fleet.stop, planted processes by their own PID).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run straight from a checkout

from deploytools.sandbox import (  # noqa: E402
    PYPY,
    Fleet,
    start_variant_fleet,
    write_variant_app,
)
from tests.support.bytecode import write_timestamp_pyc  # noqa: E402
from tests.support.variants import VARIANTS  # noqa: E402

# guoff's workers outlive every stop on purpose (they are a planted stale situation), so
# it takes no part in the healthy cycles: its survivors would serve old code in them.
HEALTHY_HOSTS = ",".join(v.name for v in VARIANTS if not v.stubborn_workers)


class Bench:
    """The fleet, its app repository and the `inv` runner."""

    def __init__(self, fleet: Fleet, workdir: Path) -> None:
        self.fleet = fleet
        self.repo = workdir / "app"
        self.repo.mkdir()
        self.git("init", "-q", "-b", "main")
        self.commit("v0")
        self.inventory = fleet.write_inventory(workdir / "inventory.yaml",
                                               source={"repo": str(self.repo)})

    def git(self, *args: str) -> None:
        subprocess.run(["git", "-C", str(self.repo), *args], check=True, capture_output=True)

    def commit(self, version: str) -> None:
        write_variant_app(self.repo, version)
        self.git("add", "-A")
        self.git("-c", "user.email=b@example.com", "-c", "user.name=bench", "commit", "-q",
                 "--allow-empty", "-m", version)

    def failing_hosts(self, *args: str, hosts: str = "prod") -> list[str]:
        """Hosts a task did not pass on (from its `--json -` report); all if no report."""
        done = self._run(*args, "--json", "-", hosts=hosts)
        try:
            hosts = json.loads(done.stdout)["hosts"]
        except (ValueError, KeyError):
            return [v.name for v in VARIANTS]
        return [h["name"] for h in hosts if h.get("outcome") not in ("healthy", "unchanged")
                ] if done.returncode else []

    def inv(self, *args: str, hosts: str = "prod") -> int:
        return self._run(*args, hosts=hosts).returncode

    def _run(self, *args: str, hosts: str = "prod") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "DEPLOYTOOLS_INVENTORY"}
        done = subprocess.run([sys.executable, "-m", "invoke", "--search-root",
                               str(REPO_ROOT), *args, "--hosts", hosts, "--inventory",
                               str(self.inventory)], capture_output=True, text=True,
                              env=env, timeout=300)
        return done

    def current(self, name: str) -> Path:
        return (self.fleet.host(name).deploy_to / "current").resolve()

    def older_release(self, name: str) -> Path:
        releases = sorted(p for p in (self.fleet.host(name).deploy_to / "releases").iterdir()
                          if not p.name.startswith("."))
        return next(p for p in reversed(releases) if p != self.current(name))


def stale_pyc(bench: Bench, host: str, python: str, tag: str) -> Callable[[], None]:
    views = bench.current(host) / "sampleapp" / "views.py"
    pyc = views.parent / "__pycache__" / f"views.{tag}.pyc"
    saved = pyc.read_bytes() if pyc.exists() else None
    text = views.read_text()
    write_timestamp_pyc(python, text.replace("hello from", "HELLO FROM"), pyc,
                        stamp_from=views)
    return lambda: pyc.write_bytes(saved) if saved is not None else pyc.unlink()


def orphan_pyc(bench: Bench, host: str) -> Callable[[], None]:
    legacy = bench.current(host) / "sampleapp" / "gone.pyc"
    write_timestamp_pyc("/usr/bin/python3", "VALUE = 'deleted module'\n", legacy)
    return legacy.unlink


def edited_file(bench: Bench, host: str) -> Callable[[], None]:
    views = bench.current(host) / "sampleapp" / "views.py"
    saved = views.read_bytes()
    stat = views.stat()
    views.write_bytes(saved.replace(b"hello from", b"HELLO FROM"))
    os.utime(views, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    def undo() -> None:
        views.write_bytes(saved)
    return undo


def process_in_old_release(bench: Bench, host: str, command: list[str]) -> Callable[[], None]:
    proc = subprocess.Popen(command, cwd=bench.older_release(host), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={"PATH": "/usr/bin:/bin",
                                 "HOME": str(bench.fleet.host(host).home)})
    time.sleep(0.3)

    def undo() -> None:
        proc.kill()
        proc.wait()
    return undo


def surviving_workers(bench: Bench) -> Callable[[], None]:
    sim = bench.fleet.host("guoff")
    with sim.supervisor_rpc() as rpc:
        master = rpc.supervisor.getProcessInfo("app")["pid"]
    workers = [int(e) for e in os.listdir("/proc") if e.isdigit() and _ppid(e) == master]
    bench.commit(f"survivors-{time.time()}")
    bench.inv("deploy", hosts="guoff")

    def undo() -> None:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return undo


def _ppid(entry: str) -> int | None:
    try:
        return int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def catalogue(bench: Bench) -> list[tuple[str, str, Callable[[], Callable[[], None]]]]:
    server = ["/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", "0"]
    return [
        ("stale timestamp pyc, same mtime/size (CPython)", "s3",
         lambda: stale_pyc(bench, "s3", "/usr/bin/python3", "cpython-311")),
        ("stale timestamp pyc, same mtime/size (PyPy)", "pypy",
         lambda: stale_pyc(bench, "pypy", PYPY, "pypy39")),
        ("orphan legacy foo.pyc", "s3", lambda: orphan_pyc(bench, "s3")),
        ("edited file, mtime restored", "link", lambda: edited_file(bench, "link")),
        ("surviving old gunicorn worker", "guoff", lambda: surviving_workers(bench)),
        ("hand-started server in an old release", "s3",
         lambda: process_in_old_release(bench, "s3", server)),
        ("process with cwd in an old release", "pypy",
         lambda: process_in_old_release(bench, "pypy", ["/usr/bin/sleep", "300"])),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--time-limit", type=float, default=900.0)
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the fleet and planted processes are stopped by PID.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(130))
    deadline = time.monotonic() + args.time_limit
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dt-proof-") as tmp, \
            start_variant_fleet(VARIANTS) as fleet:
        bench = Bench(fleet, Path(tmp))
        cycles = alarms = 0
        by_host: dict[str, int] = {}
        for cycle in range(args.cycles):
            if time.monotonic() > deadline:
                break
            bench.commit(f"cycle-{cycle}")
            bad = (set(bench.failing_hosts("deploy", hosts=HEALTHY_HOSTS))
                   | set(bench.failing_hosts("verify", hosts=HEALTHY_HOSTS)))
            alarms += bool(bad)
            for name in bad:
                by_host[name] = by_host.get(name, 0) + 1
            cycles += 1
        planted = caught = 0
        missed = []
        bench.inv("deploy", hosts="guoff")  # a first release: no old workers can exist yet
        for label, host, plant in catalogue(bench):
            if time.monotonic() > deadline:
                break
            if bench.inv("verify", hosts=host) != 0:
                missed.append(f"{label} (host not clean before planting)")
                continue
            undo = plant()
            planted += 1
            try:
                if bench.inv("verify", hosts=host) == 7:
                    caught += 1
                else:
                    missed.append(label)
            finally:
                undo()
    print("| variant hosts | cycles | verify false alarms | stale caught / planted | seconds |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {len(VARIANTS)} | {cycles} | {alarms} | {caught} / {planted} | "
          f"{time.monotonic() - started:.0f} |")
    for name, count in sorted(by_host.items()):
        print(f"false alarms on {name}: {count} of {cycles} cycles")
    for label in missed:
        print(f"missed: {label}")
    return 0 if alarms == 0 and caught == planted and not missed else 1


if __name__ == "__main__":
    sys.exit(main())
