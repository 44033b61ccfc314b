"""Zero downtime, measured: requests dropped by a rolling deploy with and without the drain.

A real HAProxy (Debian's `haproxy`, our own config and runtime socket, stopped by PID)
runs in front of a 4-host sandbox fleet whose app takes BOOT seconds to boot. A bounded
loopback load generator sends steady requests through it during
`inv deploy --serial 1`, first with `balancer.haproxy` set, then the same deploy without
it. HAProxy has `retries 0` and no `option redispatch`, so a request sent to a host
that is restarting fails instead of being retried elsewhere.

    python benchmarks/zero_downtime.py [--hosts 4] [--boot 2] [--rate 60]

Prints, for both runs: requests sent, failed (non-2xx, resets, timeouts), p50/p99/max
latency, and the deploy's per-host time out of rotation / unavailable.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import yaml  # noqa: E402

from deploytools.sandbox import start_fleet, write_sample_app  # noqa: E402
from deploytools.sandbox.balancer import haproxy_for  # noqa: E402
from deploytools.sandbox.load import LoadGenerator  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def commit(repo: Path, version: str, boot: float) -> None:
    write_sample_app(repo, version, boot_delay=boot)
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=b@example.com", "-c", "user.name=bench", "commit", "-q",
        "--allow-empty", "-m", version)


def inv(inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYTOOLS_INVENTORY"}
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT),
                           *args, "--inventory", str(inventory)], capture_output=True,
                          text=True, env=env, timeout=600)


def set_balancer(inventory: Path, value: dict | None) -> None:
    data = yaml.safe_load(inventory.read_text())
    data["defaults"].pop("balancer", None)
    if value:
        data["defaults"]["balancer"] = value
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))


def measured_deploy(inventory: Path, port: int, rate: float, report: Path) -> dict:
    load = LoadGenerator(port, rate=rate, threads=6, max_requests=20000,
                         max_seconds=300).start()
    try:
        done = inv(inventory, "deploy", "--hosts", "all", "--serial", "1", "--json",
                   str(report))
    finally:
        result = load.stop()
    hosts = json.loads(report.read_text())["hosts"] if report.exists() else []
    return {"exit": done.returncode, **result.summary(), "errors": result.errors,
            "deploy_seconds": round(result.seconds, 1),
            "availability": {h["name"]: h.get("availability") for h in hosts},
            "output": done.stdout[-3000:] + done.stderr[-2000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--boot", type=float, default=2.0, help="app boot time, seconds")
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zero-downtime-") as tmp:
        root = Path(tmp)
        repo = root / "app"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        fleet = start_fleet(args.hosts, root / "fleet")
        proxy = None
        try:
            proxy = haproxy_for(fleet, root / "haproxy", free_port())
            inventory = fleet.write_inventory(root / "inventory.yaml", groups={
                "prod": [h.name for h in fleet.hosts]}, source={"repo": str(repo)})
            commit(repo, "v1", args.boot)
            first = inv(inventory, "deploy", "--hosts", "all")
            if first.returncode != 0:
                print(first.stdout, first.stderr, file=sys.stderr)
                return 1
            proxy.wait_all_up(30)
            results = {}
            for label, value in (("with balancer (drain)", {
                    "haproxy": {"socket": str(proxy.socket), "backend": "app",
                                "server": "{name}"},
                    "drain_timeout": 30, "ready_timeout": 30}),
                    ("without balancer", None)):
                set_balancer(inventory, value)
                commit(repo, f"v-{len(results) + 2}", args.boot)
                proxy.wait_all_up(30)
                results[label] = measured_deploy(inventory, proxy.port, args.rate,
                                                 root / f"report{len(results)}.json")
        finally:
            if proxy is not None:
                proxy.stop()
            fleet.stop()
    print(f"\n{args.hosts} hosts, app boot {args.boot:g} s, {args.rate:g} req/s, "
          "`inv deploy --serial 1`, HAProxy retries 0, no redispatch\n")
    print("| run | deploy exit | sent | failed | p50 | p99 | max | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for label, r in results.items():
        print(f"| {label} | {r['exit']} | {r['sent']} | {r['failed']} | {r['p50_ms']} ms | "
              f"{r['p99_ms']} ms | {r['max_ms']} ms | "
              f"{', '.join(f'{k}: {v}' for k, v in r['errors'].items()) or '-'} |")
    for label, r in results.items():
        rows = [f"{n}: out of rotation {a['out_of_rotation_seconds'] or '-'} s, unavailable "
                f"{a['unavailable_seconds']} s" for n, a in r["availability"].items() if a]
        print(f"\n{label}: " + "; ".join(rows))
    bad = [label for label, r in results.items() if r["exit"] != 0]
    for label in bad:
        print(f"\n{label} deploy failed:\n{results[label]['output']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
