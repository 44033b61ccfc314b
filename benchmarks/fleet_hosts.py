"""The hosts a benchmark deploys to, behind one interface: a local sandbox fleet, or any
fleet described by a deploytools inventory and reached over SSH.

Why two implementations: the sandbox's hosts share our filesystem, so resetting them,
listing their releases and reading their /health is cheapest done directly (XML-RPC on
the supervisord socket, the directory on disk). A real fleet offers only SSH, so the
same questions are asked with the real ``ssh`` client and the inventory's settings. The
benchmark itself (run.py) only talks to :class:`Hosts`.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from deploytools.inventory import Host, load_inventory
from deploytools.remote.supervisorctl import command_argv
from deploytools.sandbox import Fleet

SSH_TIMEOUT = 60.0
# What deploytools (and the baseline) create in deploy_to; an SSH reset removes these
# only, so whatever else lives in a real deploy_to (shared/ data included) survives.
RESET_ENTRIES = ("releases", "current", "current.tmp*", ".deploytools")


class HostsError(Exception):
    """A host could not be read or reset; the benchmark cannot measure on it."""


class Hosts(Protocol):
    """What the benchmark needs from a fleet, whatever the fleet is."""

    inventory: Path  # the inventory `inv deploy --inventory` reads
    group: str  # what `inv deploy --hosts` selects: every host below

    @property
    def names(self) -> list[str]: ...

    def reset(self) -> None:
        """Make every host look freshly provisioned: programs stopped, no release."""

    def release_dirs(self) -> list[set[str]]:
        """Each host's release directory names, in :attr:`names` order."""

    def current_release(self) -> str | None:
        """The release the first host's `current` points to (None: no link)."""

    def health_releases(self) -> dict[str, str | None]:
        """The ``release`` each host's /health reports right now (None: no answer)."""

    def baseline_script(self, name: str, release: str) -> str:
        """The hand-written deploy's remote half for host ``name``."""

    def ssh_command(self, name: str, remote: str) -> list[str]:
        """The real ssh client running ``remote`` on host ``name``."""

    def describe(self) -> dict[str, Any]:
        """The fleet's settings a reader needs to judge the numbers (see fleet_settings)."""


# --------------------------------------------------------------------------- shared


def startsecs(conf_text: str, programs: Sequence[str]) -> dict[str, int | None]:
    """supervisor's ``startsecs`` of each program (its default, 1, when unset): every
    restart waits that long before the program counts as started. None: the program has
    no ``[program:X]`` section in this file (e.g. it sits in an ``[include]``d file)."""
    parser = configparser.RawConfigParser(strict=False, inline_comment_prefixes=(";", "#"))
    parser.read_string(conf_text)
    out: dict[str, int | None] = {}
    for program in programs:
        name = program.split(":", 1)[0]
        section = f"program:{name}"
        if not parser.has_section(section):
            out[name] = None
            continue
        try:
            out[name] = int(parser.get(section, "startsecs", fallback="1"))
        except ValueError:
            out[name] = None
    return out


def fleet_settings(per_host: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per-host facts (startsecs, python, python_version) folded into one summary: the
    distinct values of each, so a uniform fleet reads as one value."""
    def distinct(key: str) -> list[Any]:
        return sorted({json.dumps(facts.get(key), sort_keys=True) for facts in per_host.values()})

    return {
        "hosts": len(per_host),
        "startsecs": [json.loads(v) for v in distinct("startsecs")],
        "python": [json.loads(v) for v in distinct("python")],
        "python_version": [json.loads(v) for v in distinct("python_version")],
        "per_host": {name: dict(facts) for name, facts in per_host.items()},
    }


def _probe_python_version(python: str) -> str:
    code = "import platform; print(platform.python_implementation(), platform.python_version())"
    return f"{python} -c {shlex.quote(code)}"


def health_poll(url: str, python: str, curl: bool | None) -> str:
    """Shell that polls /health until it answers 200 (5 s at most), printing the body.

    ``curl``: whether the host has curl (True/False), or None to decide on the host.
    """
    curl_probe = f"curl -fsS --noproxy '*' --max-time 2 {shlex.quote(url)}"
    code = ("import sys,urllib.request as u;"
            "o=u.build_opener(u.ProxyHandler({}));"
            "sys.stdout.write(o.open(sys.argv[1],timeout=2).read().decode())")
    py_probe = f"{python} -c {shlex.quote(code)} {shlex.quote(url)} 2>/dev/null"
    if curl is None:
        probe = (f"{{ if command -v curl >/dev/null 2>&1; then {curl_probe}; "
                 f"else {py_probe}; fi; }}")
    else:
        probe = curl_probe if curl else py_probe
    return (f"ok=0; for i in $(seq 1 50); do if {probe}; then ok=1; break; fi; sleep 0.1; "
            f'done; [ "$ok" = 1 ]')


def _release_of(body: str) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data.get("release") if isinstance(data, dict) else None


# --------------------------------------------------------------------------- sandbox


@dataclass
class SandboxHosts:
    """A ``deploytools.sandbox`` fleet: its hosts are processes on this machine."""

    fleet: Fleet
    inventory: Path
    group: str = "prod"

    @property
    def names(self) -> list[str]:
        return [sim.name for sim in self.fleet.hosts]

    def reset(self) -> None:
        """App stopped over XML-RPC, everything under deploy_to removed."""
        for sim in self.fleet.hosts:
            try:
                with sim.supervisor_rpc() as rpc:
                    rpc.supervisor.stopProcess("app")
            except xmlrpc.client.Fault as fault:
                if "NOT_RUNNING" not in fault.faultString:
                    raise
            for child in sim.deploy_to.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    def release_dirs(self) -> list[set[str]]:
        out = []
        for sim in self.fleet.hosts:
            releases = sim.deploy_to / "releases"
            names = {p.name for p in releases.iterdir()} if releases.is_dir() else set()
            out.append({n for n in names if not n.startswith(".")})
        return out

    def current_release(self) -> str | None:
        link = self.fleet.hosts[0].deploy_to / "current"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    def health_releases(self) -> dict[str, str | None]:
        """What each app's /health reports; on a fleet without an app server (the scale
        runs) the release `current` names, which `inv verify` then proves is running."""
        out: dict[str, str | None] = {}
        for sim in self.fleet.hosts:
            if not self.fleet.app_server:
                link = sim.deploy_to / "current"
                out[sim.name] = os.path.basename(os.readlink(link)) if link.is_symlink() \
                    else None
                continue
            answer = sim.health(timeout=3.0)
            out[sim.name] = answer.get("release") if answer else None
        return out

    def baseline_script(self, name: str, release: str) -> str:
        """supervisorctl runs under the controller's interpreter: on these hosts a
        non-login ssh session's ``python3`` (/usr/bin/python3) has no supervisor, and the
        controller's interpreter is on the same machine."""
        sim = self.fleet.host(name)
        ctl = f"{shlex.quote(sys.executable)} -m supervisor.supervisorctl " \
              f"-c {shlex.quote(str(sim.supervisor_conf))}"
        return baseline_steps(str(sim.deploy_to), release, self.fleet.python, ctl, ["app"],
                              health_poll(sim.health_url(), self.fleet.python,
                                          curl=shutil.which("curl") is not None))

    def ssh_command(self, name: str, remote: str) -> list[str]:
        """No user config, the fleet's key, strict host key checking."""
        sim = self.fleet.host(name)
        return ["ssh", "-F", "/dev/null", "-i", str(self.fleet.client_key),
                "-o", f"UserKnownHostsFile={self.fleet.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=10", "-p", str(sim.port),
                f"{self.fleet.user}@{sim.address}", remote]

    def describe(self) -> dict[str, Any]:
        done = subprocess.run(shlex.split(_probe_python_version(self.fleet.python)),
                              capture_output=True, text=True, timeout=30, check=False)
        version = done.stdout.strip() or None
        return fleet_settings({
            sim.name: {"startsecs": startsecs(sim.supervisor_conf.read_text(encoding="utf-8"),
                                              ["app"]),
                       "python": self.fleet.python, "python_version": version}
            for sim in self.fleet.hosts})


def baseline_steps(deploy_to: str, release: str, python: str, ctl: str,
                   programs: Sequence[str], health: str) -> str:
    """The remote script of the baseline, as someone would write it by hand: unpack
    the tar from stdin, compile, swap `current`, restart, poll /health."""
    quoted = shlex.quote(deploy_to)
    names = " ".join(shlex.quote(p) for p in programs)
    steps = [
        "set -e",
        f"R={quoted}/releases/{release}",
        'mkdir -p "$R"',
        'tar -x -C "$R"',
        f'{python} -m compileall -q -j0 --invalidation-mode checked-hash "$R" >/dev/null',
        f"ln -sfn releases/{release} {quoted}/current.tmp",
        f"mv -T {quoted}/current.tmp {quoted}/current",
        f"{ctl} stop {names}",
        f"{ctl} start {names}",
        health,
    ]
    return "; ".join(steps)


# --------------------------------------------------------------------------- any fleet


def plain(value: Any) -> Any:
    """Inventory settings as YAML-safe data (the loader returns tuples)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def write_inventory_copy(source: Path, group: str, repo: Path, target: Path) -> Path:
    """The selected group's hosts of ``source``, each with its fully merged settings
    (paths already absolute, so the copy works from anywhere), deploying ``repo`` at
    HEAD: the benchmark commits into ``repo`` and must deploy exactly what it committed.
    Everything else (ssh, supervisor, health, hooks, ...) is the inventory's own."""
    hosts = load_inventory(source).select(group)
    members: dict[str, Any] = {}
    for host in hosts:
        settings = plain(host.settings)
        settings["source"] = {"repo": str(repo), "ref": "HEAD",
                              "exclude": settings["source"].get("exclude", [])}
        entry: dict[str, Any] = {"host": host.address}
        if host.port is not None:
            entry["port"] = host.port
        if host.user is not None:
            entry["user"] = host.user
        members[host.name] = {**entry, **settings}
    target.write_text(yaml.safe_dump({"groups": {group: {"hosts": members}}}, sort_keys=False),
                      encoding="utf-8")
    load_inventory(target)  # the copy must read back, or no deploy would
    return target


@dataclass
class SshHosts:
    """Any fleet in a deploytools inventory; every question goes over the real ``ssh``
    with the inventory's settings (user, port, identity, known_hosts, proxy_jump)."""

    hosts: list[Host]
    inventory: Path
    group: str

    @classmethod
    def load(cls, inventory: Path, group: str) -> SshHosts:
        hosts = load_inventory(inventory).select(group)
        for host in hosts:
            if host.settings.get("become"):
                raise HostsError(f"{host.name}: `become` is not supported by the benchmark "
                                 "(its reset and baseline would need sudo); use "
                                 "supervisor.supervisorctl with sudo instead")
        return cls(hosts, inventory, group)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def _host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def ssh_command(self, name: str, remote: str) -> list[str]:
        """No user ssh_config unless the inventory asks for one; keys are checked strictly.
        Jump hosts (``ssh.proxy_jump``) become ``-J``; OpenSSH applies the ``-o``
        options to the target only, so the hops use the user's defaults."""
        host = self._host(name)
        ssh = host.settings["ssh"]
        config = ssh.get("config")  # a file, True (the user's ~/.ssh/config) or unset
        argv = ["ssh"] if config is True else \
            ["ssh", "-F", config if isinstance(config, str) else "/dev/null"]
        for identity in ssh.get("identity") or ():
            argv += ["-i", identity]
        if ssh.get("known_hosts"):
            argv += ["-o", f"UserKnownHostsFile={ssh['known_hosts']}"]
        argv += ["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                 "-o", f"ConnectTimeout={int(ssh.get('connect_timeout') or 10)}"]
        if ssh.get("proxy_jump"):
            argv += ["-J", ",".join(ssh["proxy_jump"])]
        if host.port is not None:
            argv += ["-p", str(host.port)]
        target = f"{host.user}@{host.address}" if host.user else host.address
        return [*argv, target, remote]

    def run_all(self, remotes: Mapping[str, str],
                timeout: float = SSH_TIMEOUT) -> dict[str, tuple[int, str]]:
        """Run one remote command per host, all at once: (exit code, stdout+stderr).
        Every ssh started is waited for or killed here, by PID."""
        procs = {name: subprocess.Popen(self.ssh_command(name, remote), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for name, remote in remotes.items()}
        deadline = time.monotonic() + timeout
        out: dict[str, tuple[int, str]] = {}
        try:
            for name, proc in procs.items():
                try:
                    data, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise HostsError(f"{name}: ssh gave no answer in {timeout:.0f} s") from None
                out[name] = (proc.returncode, data.decode("utf-8", "replace"))
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return out

    def _ctl(self, host: Host) -> str:
        """The inventory's supervisorctl command (deploytools' own reading of it)."""
        supervisor = host.settings["supervisor"]
        argv = command_argv(supervisor)
        if supervisor.get("serverurl") and not supervisor.get("conf"):
            argv += ["-s", supervisor["serverurl"]]
        return shlex.join(argv)

    @staticmethod
    def _programs(host: Host) -> list[str]:
        return list(host.settings["supervisor"]["programs"])

    def _checked(self, remotes: Mapping[str, str], what: str) -> dict[str, str]:
        results = self.run_all(remotes)
        failed = {n: r for n, r in results.items() if r[0] != 0}
        if failed:
            name, (code, text) = next(iter(failed.items()))
            raise HostsError(f"{what} failed on {len(failed)} host(s); {name} exited {code}: "
                             f"{text.strip()[-500:]}")
        return {n: text for n, (_, text) in results.items()}

    def reset(self) -> None:
        """Programs stopped with supervisorctl, then deploytools' own entries in
        deploy_to removed (:data:`RESET_ENTRIES`); deploy_to itself and anything else in
        it stay. A program that is not running is fine; any other stop error is not."""
        remotes = {}
        for host in self.hosts:
            deploy_to = shlex.quote(host.deploy_to.rstrip("/"))
            names = " ".join(shlex.quote(f"{p.split(':', 1)[0]}:*") for p in self._programs(host))
            remotes[host.name] = (
                f"out=$({self._ctl(host)} stop {names} 2>&1); "
                f'if printf "%s\\n" "$out" | grep ERROR | grep -qv "not running"; '
                f'then printf "%s\\n" "$out"; exit 3; fi; '
                f"[ -d {deploy_to} ] || exit 0; cd {deploy_to} && "
                f"rm -rf -- {' '.join(RESET_ENTRIES)}"
            )
        self._checked(remotes, "reset")

    def release_dirs(self) -> list[set[str]]:
        texts = self._checked(
            {h.name: f"ls -1A -- {shlex.quote(h.deploy_to + '/releases')} 2>/dev/null || true"
             for h in self.hosts}, "listing releases")
        return [{n for n in texts[name].split() if not n.startswith(".")} for name in self.names]

    def current_release(self) -> str | None:
        host = self.hosts[0]
        text = self._checked(
            {host.name: f"readlink -- {shlex.quote(host.deploy_to + '/current')} || true"},
            "reading current")[host.name].strip()
        return os.path.basename(text.rstrip("/")) if text else None

    def health_url(self, host: Host) -> str:
        url = host.get("health.url")
        if not url:
            raise HostsError(f"{host.name}: the inventory has no health.url to check "
                             "releases against")
        return url.replace("{host}", host.address)

    def health_releases(self) -> dict[str, str | None]:
        """Read on the host (no controller route to the app is assumed): curl, or the
        host's python when there is no curl."""
        code = ("import sys,urllib.request as u;"
                "o=u.build_opener(u.ProxyHandler({}));"
                "sys.stdout.write(o.open(sys.argv[1],timeout=3).read().decode())")
        remotes = {}
        for host in self.hosts:
            url = shlex.quote(self.health_url(host))
            remotes[host.name] = (
                f"if command -v curl >/dev/null 2>&1; then curl -fsS --noproxy '*' "
                f"--max-time 3 {url}; else {host.python} -c {shlex.quote(code)} {url}; fi")
        return {name: _release_of(text) if code == 0 else None
                for name, (code, text) in self.run_all(remotes).items()}

    def baseline_script(self, name: str, release: str) -> str:
        host = self._host(name)
        return baseline_steps(host.deploy_to.rstrip("/"), release, host.python,
                              self._ctl(host), self._programs(host),
                              health_poll(self.health_url(host), host.python, curl=None))

    def describe(self) -> dict[str, Any]:
        """supervisord.conf (``supervisor.conf``) and the interpreter, read on each host;
        what cannot be read is None (n/a), not a failure."""
        mark = "--deploytools-bench--"
        remotes = {}
        for host in self.hosts:
            conf = host.get("supervisor.conf")
            cat = f"cat -- {shlex.quote(conf)} 2>/dev/null; " if conf else ""
            remotes[host.name] = (f"{cat}echo {mark}; "
                                  f"{_probe_python_version(host.python)} 2>/dev/null || true")
        facts = {}
        for name, text in self._checked(remotes, "reading settings").items():
            host = self._host(name)
            conf_text, _, version = text.rpartition(mark)
            facts[name] = {"startsecs": startsecs(conf_text, self._programs(host))
                           if host.get("supervisor.conf") else None,
                           "python": host.python, "python_version": version.strip() or None}
        return fleet_settings(facts)
