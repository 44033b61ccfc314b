#!/usr/bin/env python3
"""Fault soak: deploy / rollback cycles on a 4-host sandbox fleet, one fault per cycle.

Usage::

    python benchmarks/soak.py [--cycles 100] [--max-seconds 3600] [--seed 1]
                              [--kinds a,b,...] [--out benchmarks/SOAK.md]

Why: the failure paths (crash-safe lock, signal handling, timeouts, rollback) are only
trustworthy if they hold under many faults at random moments, judged by something other
than the tool itself. Each cycle injects ONE fault from :data:`KINDS` at a seeded random
moment, then an **independent** check reads every host's files and processes directly
(not ``inv verify``): ``current`` points to a complete release (manifest present), the
supervised programs run with their cwd in that release, ``/health`` answers for it, and
nothing outside ``deploy_to`` changed (a sentinel directory per host). The cycle ends with
a normal deploy run without ``inv unlock``: if it needs one, that is a leaked lock and a
manual intervention. Everything runs on 127.0.0.0/8; every process started is stopped by
PID; the fleet is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run straight from a checkout

from deploytools.sandbox import Fleet, SimHost, start_fleet, write_sample_app  # noqa: E402
from tests.support.cli import Background, Cli  # noqa: E402
from tests.support.faults import (  # noqa: E402
    freeze_sshd,
    thaw_sshd,
    write_crashing_app,
    write_malformed_health_app,
)

KINDS = (
    "sigkill_prepare", "sigkill_activate", "sigint", "sigterm", "frozen_host", "disk_full",
    "health_failing", "crash_on_import", "malformed_health", "concurrent_deploy",
    "unreachable_host",
)
# Faults that also make sense while rolling back (the rest concern a new release).
ROLLBACK_KINDS = {"sigkill_activate", "sigint", "sigterm", "frozen_host", "unreachable_host"}
HOSTS = 4
SLOW_HOOK = "sleep 1"
RUN_TIMEOUT = 120.0
SETTLE_TIMEOUT = 30.0
DISK_HOST = "web4"
DISK_SIZE = "24m"
# Low enough that a frozen host times out in seconds, high enough for a loaded 2-core box.
SSH_TIMEOUTS = {"connect_timeout": 3, "command_timeout": 15, "host_timeout": 20}


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# =========================================================================== runs


# =========================================================================== state


@dataclass
class Tally:
    cycles: int = 0
    faults: Counter = field(default_factory=Counter)
    actions: Counter = field(default_factory=Counter)
    inconsistent: int = 0
    leaked_locks: int = 0
    interventions: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Soak:
    fleet: Fleet
    repo: Path
    workdir: Path
    rng: random.Random
    tally: Tally = field(default_factory=Tally)
    live: list[Background] = field(default_factory=list)
    sentinels: dict[str, dict[str, Any]] = field(default_factory=dict)
    mounted: list[Path] = field(default_factory=list)
    versions: int = 0

    # ---- repository
    def commit(self, tag: str, writer: Callable[..., None] = write_sample_app,
               **options: Any) -> None:
        self.versions += 1
        writer(self.repo, f"{tag}-{self.versions}", **options)
        git(self.repo, "add", "-A")
        git(self.repo, "-c", "user.email=s@example.com", "-c", "user.name=soak", "commit",
            "-q", "--allow-empty", "-m", tag)

    # ---- inventories
    def inventory(self, name: str, hooks: dict[str, list[str]] | None = None) -> Path:
        path = self.workdir / f"inventory-{name}.yaml"
        if path.exists():
            return path
        data = self.fleet.inventory_dict(source={"repo": str(self.repo)})
        data["ssh"].update(SSH_TIMEOUTS)
        data["defaults"]["health"].update({"timeout": 3, "interval": 0.2})
        if hooks:
            data["defaults"]["hooks"] = hooks
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def start(self, action: str, inventory: Path, *extra: str) -> Background:
        """`inv ACTION --hosts prod` in a process group of its own (SIGINT goes to the
        group, as a terminal's Ctrl-C does)."""
        run = Background(Cli(inventory), action, "--hosts", "prod", *extra,
                         new_session=True, CI="1", PYTHONPATH=str(REPO_ROOT))
        self.live.append(run)
        return run

    def stop_runs(self) -> None:
        for run in self.live:
            run.stop()
        self.live.clear()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


# =========================================================================== sentinels


def sentinel_dir(host: SimHost) -> Path:
    """A directory beside deploy_to that no run may touch."""
    return host.deploy_to.parent / "outside"


def plant_sentinel(host: SimHost) -> None:
    base = sentinel_dir(host)
    (base / "uploads").mkdir(parents=True, exist_ok=True)
    (base / "keep.txt").write_text(f"{host.name} data\n")
    (base / "uploads" / "photo.bin").write_bytes(os.urandom(2048))


def snapshot(base: Path, skip: Path | None = None) -> dict[str, Any]:
    """Every entry under base: type, mode, size, mtime and content hash."""
    out: dict[str, Any] = {}
    for root, dirs, files in os.walk(base):
        if skip is not None:
            dirs[:] = [d for d in dirs if Path(root, d) != skip]
        for name in dirs + files:
            path = Path(root, name)
            st = path.lstat()
            digest = ""
            if path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_symlink():
                digest = os.readlink(path)
            out[str(path.relative_to(base))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def outside_snapshot(host: SimHost) -> dict[str, Any]:
    """What lies beside deploy_to (the sentinel and anything created next to it)."""
    return snapshot(host.deploy_to.parent, skip=host.deploy_to)


# =========================================================================== the check


def process_cwd(pid: int) -> str | None:
    try:
        return os.path.realpath(f"/proc/{pid}/cwd")
    except OSError:
        return None


def host_problems(host: SimHost) -> list[str]:
    """What is wrong with one host, read straight from its files and processes."""
    link = host.deploy_to / "current"
    if not link.is_symlink():
        return ["current is not a symlink"]
    release = Path(os.path.realpath(link))
    if release.parent != Path(os.path.realpath(host.deploy_to / "releases")):
        return [f"current points outside releases: {release}"]
    manifest = release / ".deploytools" / "release.json"
    try:
        json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        return [f"release {release.name} has no valid manifest ({exc.__class__.__name__})"]
    problems = []
    try:
        with host.supervisor_rpc(timeout=3) as rpc:
            info = rpc.supervisor.getProcessInfo("app")
    except Exception as exc:  # noqa: BLE001 - any supervisor failure is a finding
        return [f"supervisor: {exc}"]
    if info.get("statename") != "RUNNING":
        problems.append(f"app is {info.get('statename')}")
    elif process_cwd(int(info["pid"])) != str(release):
        problems.append(f"app pid {info['pid']} runs in {process_cwd(int(info['pid']))}, "
                        f"not {release}")
    answer = host.health()
    if not answer or answer.get("release") != release.name:
        problems.append(f"/health answers {answer and answer.get('release')!r}, "
                        f"not {release.name!r}")
    return problems


def lock_dir(host: SimHost) -> Path:
    return host.deploy_to / ".deploytools" / "lock"


def settle(soak: Soak) -> dict[str, list[str]]:
    """Wait (bounded) for orphaned agents to finish what the fault left in flight, then
    the independent check per host: {host: problems} for the hosts that fail it."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        found = {h.name: host_problems(h) for h in soak.fleet.hosts}
        found = {k: v for k, v in found.items() if v}
        locked = [h for h in soak.fleet.hosts if lock_dir(h).exists()]
        if (not found and not locked) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for host in soak.fleet.hosts:
        if outside_snapshot(host) != soak.sentinels[host.name]:
            found.setdefault(host.name, []).append("something outside deploy_to changed")
    return found


# =========================================================================== faults


def daemon_pids(host: SimHost) -> set[int]:
    """sshd listener, supervisord and the programs it runs: never frozen."""
    pids = {p for p in (host.sshd_pid, host.supervisord_pid) if p}
    with contextlib.suppress(Exception), host.supervisor_rpc(timeout=2) as rpc:
        pids |= {int(i["pid"]) for i in rpc.supervisor.getAllProcessInfo() if i.get("pid")}
    return pids


def session_pids(host: SimHost) -> list[int]:
    """The host's SSH session processes and its agent (what a hung host stops)."""
    keep = daemon_pids(host)
    return [p for p in host.session_pids() if p not in keep]


def freeze(pids: list[int]) -> list[int]:
    frozen = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
            frozen.append(pid)
    return frozen


def thaw(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def fill_disk(mount: Path) -> Path:
    """Fill the host's dedicated tmpfs to the last byte; returns the filler to remove."""
    filler = mount / ".soak-filler"
    chunk = b"\0" * (1 << 20)
    with contextlib.suppress(OSError), open(filler, "ab") as fh:
        while True:
            fh.write(chunk)
            fh.flush()
    with contextlib.suppress(OSError), open(filler, "ab") as fh:
        while True:  # the last partial megabyte
            fh.write(b"\0" * 4096)
            fh.flush()
    return filler


def phase_needle(rng: random.Random) -> tuple[str, dict[str, list[str]]]:
    """A random phase to hit, with the slow hook that opens a window in it."""
    point = rng.choice(["after_prepare", "after_switch"])
    return f"{point} hook", {point: [SLOW_HOOK]}


def signal_during(soak: Soak, action: str, sig: int, where: str | None = None) -> str:
    """Start `action` with a slow hook, send `sig` at a random moment of its window."""
    if action == "rollback":
        needle, hooks = "after_switch hook", {"after_switch": [SLOW_HOOK]}
    elif where is not None:
        needle, hooks = f"{where} hook", {where: [SLOW_HOOK]}
    else:
        needle, hooks = phase_needle(soak.rng)
    inventory = soak.inventory(needle.split()[0], hooks)
    run = soak.start(action, inventory)
    seen = run.saw(lambda line: needle in line)
    delay = soak.rng.uniform(0, 0.9)
    time.sleep(delay)
    if run.proc.poll() is None:
        os.killpg(run.proc.pid, sig) if sig == signal.SIGINT else run.proc.send_signal(sig)
    code = run.finish(RUN_TIMEOUT)[0]
    return f"{signal.Signals(sig).name} {delay:.2f}s into {needle} (seen={seen}), exit {code}"


def fault_frozen(soak: Soak, action: str) -> str:
    host = soak.rng.choice(soak.fleet.hosts)
    if soak.rng.random() < 0.3:
        freeze_sshd(host)  # hangs before the banner: connect times out
        try:
            code = soak.start(action, soak.inventory("plain")).finish(RUN_TIMEOUT)[0]
        finally:
            thaw_sshd(host)
        return f"{host.name} sshd listener frozen before the run, exit {code}"
    needle, hooks = ("after_switch hook", {"after_switch": [SLOW_HOOK]}) \
        if action == "rollback" else phase_needle(soak.rng)
    run = soak.start(action, soak.inventory(needle.split()[0], hooks))
    run.saw(lambda line: needle in line)
    delay = soak.rng.uniform(0, 0.9)
    time.sleep(delay)
    frozen = freeze(session_pids(host))
    try:
        code = run.finish(RUN_TIMEOUT)[0]
    finally:
        thaw(frozen)
    return f"{host.name} session ({len(frozen)} pids) frozen {delay:.2f}s into {needle}, " \
           f"exit {code}"


def fault_disk_full(soak: Soak, action: str) -> str:
    host = soak.fleet.host(DISK_HOST)
    if not soak.mounted:
        return "skipped: no tmpfs (needs root)"
    soak.commit("disk")
    delay = soak.rng.uniform(0, 2.5)
    inventory = soak.inventory("after_prepare hook", {"after_prepare": [SLOW_HOOK]})
    run = soak.start("deploy", inventory)
    time.sleep(delay)
    filler = fill_disk(host.deploy_to)
    try:
        code = run.finish(RUN_TIMEOUT)[0]
    finally:
        filler.unlink(missing_ok=True)
    return f"{host.name} disk filled {delay:.2f}s after start, exit {code}"


def fault_bad_release(soak: Soak, kind: str) -> str:
    if kind == "malformed_health":
        soak.commit(kind, writer=write_malformed_health_app, mode="garbage")
    elif kind == "health_failing":
        soak.commit(kind, health_status=500)
    else:
        soak.commit(kind, writer=write_crashing_app)
    code = soak.start("deploy", soak.inventory("plain")).finish(RUN_TIMEOUT)[0]
    return f"bad release ({kind}), exit {code}"


def fault_concurrent(soak: Soak, action: str) -> str:
    needle, hooks = phase_needle(soak.rng)
    first = soak.start(action, soak.inventory(needle.split()[0], hooks))
    delay = soak.rng.uniform(0, 3.0)
    time.sleep(delay)
    second = soak.start("deploy", soak.inventory("plain"))
    codes = (first.finish(RUN_TIMEOUT)[0], second.finish(RUN_TIMEOUT)[0])
    return f"second deploy {delay:.2f}s after the first, exits {codes}"


def fault_unreachable(soak: Soak, action: str) -> str:
    host = soak.rng.choice(soak.fleet.hosts)
    host.stop_sshd()
    try:
        code = soak.start(action, soak.inventory("plain")).finish(RUN_TIMEOUT)[0]
    finally:
        host.start_sshd()
    return f"{host.name} sshd stopped for the run, exit {code}"


def inject(soak: Soak, kind: str, action: str) -> str:
    """Run `action` with one fault of `kind`; returns what happened, in one line."""
    if action == "deploy" and kind not in ("health_failing", "crash_on_import",
                                           "malformed_health", "disk_full"):
        soak.commit(kind)
    if kind == "sigkill_prepare":
        return signal_during(soak, action, signal.SIGKILL, "after_prepare")
    if kind == "sigkill_activate":
        return signal_during(soak, action, signal.SIGKILL, "after_switch")
    if kind in ("sigint", "sigterm"):
        return signal_during(soak, action, signal.SIGINT if kind == "sigint" else signal.SIGTERM)
    if kind == "frozen_host":
        return fault_frozen(soak, action)
    if kind == "disk_full":
        return fault_disk_full(soak, action)
    if kind in ("health_failing", "crash_on_import", "malformed_health"):
        return fault_bad_release(soak, kind)
    if kind == "concurrent_deploy":
        return fault_concurrent(soak, action)
    if kind == "unreachable_host":
        return fault_unreachable(soak, action)
    raise ValueError(f"unknown fault kind {kind!r}")


# =========================================================================== a cycle


def normal_deploy(soak: Soak, tag: str) -> tuple[int, str]:
    soak.commit(tag)
    run = soak.start("deploy", soak.inventory("plain"))
    return run.finish(RUN_TIMEOUT)


def repair(soak: Soak, cycle: int) -> tuple[bool, bool]:
    """The next normal deploy, without unlock. Returns (lock leaked, intervention)."""
    code, out = normal_deploy(soak, f"next-{cycle}")
    if code == 0:
        return False, False
    leaked = code == 5
    soak.tally.problems.append(f"cycle {cycle}: next normal deploy exited {code}: "
                               + tail(out))
    if leaked:
        soak.start("unlock", soak.inventory("plain"), "--force").finish(RUN_TIMEOUT)[0]
    code, out = normal_deploy(soak, f"repair-{cycle}")
    if code != 0:
        soak.tally.problems.append(f"cycle {cycle}: repair deploy exited {code}: " + tail(out))
        soak.start("unlock", soak.inventory("plain"), "--force").finish(RUN_TIMEOUT)[0]
        normal_deploy(soak, f"repair2-{cycle}")
    return leaked, True


def tail(text: str, lines: int = 4) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def cycle(soak: Soak, index: int, kind: str) -> None:
    action = "rollback" if kind in ROLLBACK_KINDS and soak.rng.random() < 0.35 else "deploy"
    started = time.monotonic()
    what = inject(soak, kind, action)
    outputs = [tail(run.output, 8) for run in soak.live]
    soak.stop_runs()
    bad = settle(soak)
    leftover = [h.name for h in soak.fleet.hosts if lock_dir(h).exists()]
    for name, problems in bad.items():
        soak.tally.problems.append(f"cycle {index} {kind}/{action}: {name}: "
                                   + "; ".join(problems) + f" [{what}]")
    if bad:
        soak.tally.problems.append(f"cycle {index} output of the faulted run(s): "
                                   + " || ".join(outputs))
    leaked, intervened = repair(soak, index)
    after = settle(soak)
    for name, problems in after.items():
        soak.tally.problems.append(f"cycle {index} after repair: {name}: " + "; ".join(problems))
    soak.stop_runs()
    soak.tally.cycles += 1
    soak.tally.faults[kind] += 1
    soak.tally.actions[action] += 1
    soak.tally.inconsistent += len(set(bad) | set(after))
    soak.tally.leaked_locks += int(leaked)
    soak.tally.interventions += int(intervened)
    status = "ok" if not (bad or after or leaked or intervened) else "PROBLEM"
    log(f"cycle {index:3d} {kind:18s} {action:8s} {status} {time.monotonic() - started:5.1f}s "
        f"{what}" + (f" locks-after-fault={leftover}" if leftover else ""))


# =========================================================================== fleet


@contextlib.contextmanager
def soak_fleet(workdir: Path) -> Iterator[Soak]:
    fleet = start_fleet(HOSTS)
    soak: Soak | None = None
    try:
        repo = workdir / "app"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        soak = Soak(fleet=fleet, repo=repo, workdir=workdir, rng=random.Random())
        mount_disk(soak)
        for host in fleet.hosts:
            plant_sentinel(host)
            soak.sentinels[host.name] = outside_snapshot(host)
        yield soak
    finally:
        if soak is not None:
            soak.stop_runs()
        fleet.stop()
        if soak is not None:
            for mount in soak.mounted:
                subprocess.run(["umount", "-l", str(mount)], check=False)


def mount_disk(soak: Soak) -> None:
    """A small tmpfs of its own under DISK_HOST's deploy_to, so filling it hits only that
    host and removing the filler restores it (root only)."""
    if os.geteuid() != 0:
        log("disk_full: not root, no tmpfs: that fault is skipped")
        return
    target = soak.fleet.host(DISK_HOST).deploy_to
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0755",
                           "soak-disk", str(target)], capture_output=True, text=True)
    if done.returncode == 0:
        soak.mounted.append(target)
    else:
        log(f"disk_full: mount failed ({done.stderr.strip()}): that fault is skipped")


# =========================================================================== main


def schedule(rng: random.Random, cycles: int, kinds: tuple[str, ...]) -> list[str]:
    """Every kind once per round, each round shuffled: all kinds get covered early."""
    out: list[str] = []
    while len(out) < cycles:
        round_ = list(kinds)
        rng.shuffle(round_)
        out += round_
    return out[:cycles]


def table(tally: Tally, seed: int, kinds: tuple[str, ...]) -> str:
    faults = ", ".join(f"{k} {tally.faults[k]}" for k in kinds if tally.faults[k])
    rows = [
        ("cycles", str(tally.cycles)),
        ("faults by kind", faults or "none"),
        ("actions", ", ".join(f"{k} {v}" for k, v in sorted(tally.actions.items()))),
        ("inconsistent hosts", str(tally.inconsistent)),
        ("leaked locks", str(tally.leaked_locks)),
        ("manual interventions", str(tally.interventions)),
        ("seed", str(seed)),
        ("wall seconds", f"{tally.seconds:.0f}"),
    ]
    lines = ["| metric | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    if tally.problems:
        lines += ["", "Problems:", ""] + [f"- {p}" for p in tally.problems]
    return "\n".join(lines) + "\n"


def run_soak(cycles: int, max_seconds: float, seed: int,
             kinds: tuple[str, ...] = KINDS, progress: Callable[[str], None] = log) -> Tally:
    """The soak itself (also used by tests/test_soak.py)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dt-soak-") as tmp, soak_fleet(Path(tmp)) as soak:
        soak.rng.seed(seed)
        code, out = normal_deploy(soak, "base-a")
        if code != 0:
            raise RuntimeError(f"first deploy failed ({code}): {tail(out, 10)}")
        code, out = normal_deploy(soak, "base-b")
        if code != 0:
            raise RuntimeError(f"second deploy failed ({code}): {tail(out, 10)}")
        for index, kind in enumerate(schedule(soak.rng, cycles, kinds), 1):
            if time.monotonic() - started > max_seconds:
                progress(f"stopping after {index - 1} cycles: --max-seconds reached")
                break
            cycle(soak, index, kind)
        soak.tally.seconds = time.monotonic() - started
        return soak.tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "SOAK.md")
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))} (known: {', '.join(KINDS)})")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        tally = run_soak(args.cycles, args.max_seconds, args.seed, kinds)
    except KeyboardInterrupt:
        log("interrupted: fleet stopped")
        return 130
    text = table(tally, args.seed, kinds)
    print(text)
    args.out.write_text("# Fault soak: last result\n\n"
                        f"`python benchmarks/soak.py --cycles {args.cycles} --seed {args.seed}`"
                        f" on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n" + text)
    bad = tally.inconsistent + tally.leaked_locks + tally.interventions
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
