"""A realistic privilege setup on top of the simulated fleet (root only).

Production hosts do not let the deploy tool be root: a real Unix user owns `deploy_to`,
supervisord runs as root and runs the program as that user (`user=`), and the deploy
user reaches supervisord in one of three ways. :func:`set_mode` turns every host of a
started fleet into that shape:

* ``group``: the socket is ``chown=root:USER`` and ``chmod=0770`` (XML-RPC as usual);
* ``ctl``: the socket is root-only (Debian's ``chmod=0700``) and sudoers allows USER
  only ``supervisorctl -c <that host's conf> ...`` (NOPASSWD, exact binary path);
* ``become``: the socket is root-only and USER may run anything as root through sudo.

Every sudo call is logged to ``<fleet root>/sudo.log`` (sudoers ``logfile``), so tests
can prove what ran as root. The user is created once and left (no password, no
login without the fleet's key); the sudoers file is removed by :func:`cleanup`.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path

from deploytools.sandbox import Fleet, SimHost

USER = "dtdeploy"
SUDOERS = Path("/etc/sudoers.d")
MODES = ("group", "ctl", "become")


def ensure_user(name: str = USER) -> pwd.struct_passwd:
    """Create the deploy user if needed; `*` as password (not `!`), because sshd with
    UsePAM no refuses accounts whose password is locked."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
        entry = pwd.getpwnam(name)
    subprocess.run(["usermod", "-p", "*", name], check=True)
    return entry


def supervisorctl_path(fleet: Fleet) -> Path:
    """A root-owned supervisorctl at a fixed path: the exact binary the sudo rule names
    (the controller's supervisor lives under /root, which the deploy user cannot read)."""
    path = fleet.root / "bin" / "supervisorctl"
    if not path.exists():
        path.parent.mkdir(mode=0o755, exist_ok=True)
        path.write_text(f'#!/bin/sh\nexec {sys.executable} -m supervisor.supervisorctl "$@"\n')
        path.chmod(0o755)
    return path


def sudo_log(fleet: Fleet) -> Path:
    return fleet.root / "sudo.log"


def sudoers_file(fleet: Fleet) -> Path:
    return SUDOERS / f"deploytools-{fleet.root.name.replace('.', '_')}"


def sudo_commands(fleet: Fleet) -> list[str]:
    """The COMMAND= of every logged sudo use (`list` is `sudo -l`: it runs nothing)."""
    try:
        text = sudo_log(fleet).read_text()
    except FileNotFoundError:
        return []
    text = re.sub(r"\n\s+", " ", text)  # sudo wraps long log lines
    return [m.strip() for m in re.findall(r"COMMAND=(.*)", text)]


def set_mode(fleet: Fleet, mode: str, user: str = USER, program_user: str | None = None) -> None:
    """Reshape every host for one access mode and restart its supervisord (the socket's
    owner and mode are set only at supervisord start). The programs run as
    `program_user` (default: the deploy user; another one hides their /proc cwd)."""
    assert mode in MODES, mode
    shape = (mode, user, program_user)
    if getattr(fleet, "privilege_shape", None) == shape:
        return  # already so: supervisord need not restart
    entry = ensure_user(user)
    fleet.user = user
    for path in (fleet.root, *(s.root for s in fleet.hosts),
                 *(s.root / "srv" for s in fleet.hosts)):
        path.chmod(0o711)  # traversable: deploy_to, keys and config live below
    ctl = supervisorctl_path(fleet)
    for sim in fleet.hosts:
        sim.authorized_keys.chmod(0o644)  # sshd reads it as the user
        _own(sim.deploy_to, entry)
        os.chown(sim.home, entry.pw_uid, entry.pw_gid)
        sim.supervisor_conf.write_text(_conf(sim, mode, user, program_user or user))
        sim.supervisor_conf.chmod(0o644)
    _write_sudoers(fleet, mode, user, ctl)
    deadline = time.monotonic() + 20
    for sim in fleet.hosts:
        sim._signal_supervisord_stop()
    for sim in fleet.hosts:
        sim._reap_supervisord(deadline)
        sim._launch_supervisord()
    for sim in fleet.hosts:
        sim._wait_supervisord(deadline)
    fleet.privilege_shape = shape  # type: ignore[attr-defined]


def _own(top: Path, entry: pwd.struct_passwd) -> None:
    for base, dirs, files in os.walk(top):
        for name in [base, *(os.path.join(base, n) for n in dirs + files)]:
            os.lchown(name, entry.pw_uid, entry.pw_gid)


def _conf(sim: SimHost, mode: str, user: str, program_user: str) -> str:
    """The fleet's supervisord.conf with this mode's socket rights and `user=` programs."""
    text = sim.supervisor_conf.read_text()
    text = re.sub(r"(?m)^(chown=.*\n)?chmod=.*$",
                  f"chown=root:{user}\nchmod=0770" if mode == "group" else "chmod=0700", text)
    text = re.sub(r"(?m)^(\[program:[^\]]+\]\n)user=.*\n", r"\1", text)
    return re.sub(r"(?m)^(\[program:[^\]]+\]\n)", rf"\1user={program_user}\n", text)


def _write_sudoers(fleet: Fleet, mode: str, user: str, ctl: Path) -> None:
    lines = [f"Defaults:{user} logfile={sudo_log(fleet)}, !lecture, !syslog"]
    if mode == "ctl":
        lines += [f"{user} ALL=(root) NOPASSWD: {ctl} -c {s.supervisor_conf} *"
                  for s in fleet.hosts]
    elif mode == "become":
        lines.append(f"{user} ALL=(ALL) NOPASSWD: ALL")
    path = sudoers_file(fleet)
    tmp = path.with_name(path.name + ".new")  # sudo ignores names with a dot
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o440)
    subprocess.run(["visudo", "-cqf", str(tmp)], check=True)
    os.replace(tmp, path)


def cleanup(fleet: Fleet) -> None:
    """Remove this fleet's sudoers rule (the user stays: harmless and reused)."""
    sudoers_file(fleet).unlink(missing_ok=True)
