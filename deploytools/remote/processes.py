"""What the kernel says a process runs, and the one freshness rule (stdlib only).

A supervised process counts as started from a release only once it has *exec'd* there.
supervisord reports RUNNING right after fork() when ``startsecs=0``; until the child has
changed directory and exec'd, /proc shows supervisord's own cwd, exe and cmdline. So the
rule is: wait (bounded) until the process no longer looks like its parent, then judge
its working directory by the kernel's identity of the directory (device and inode), not
by path strings: ``deploy_to`` may be a symlink or a bind mount, and /proc/PID/cwd always
shows the resolved path. Deploy, rollback, clear-cache --restart and verify all use
:func:`judge`.

:func:`strays` finds processes supervisor does not know about that still run code from
another release under ``deploy_to`` (workers that outlived their master, a server
started by hand from an old release, a process using another release's virtualenv).
"""

from __future__ import annotations

import os
import pwd
import time
from typing import Any, Dict, List, Optional, Tuple

# Clock ticks make process start times exact to 10 ms; allow that much.
START_TOLERANCE = 0.05
SETTLE_POLL = 0.02
_MAX_DEPTH = 64
FIX_STRAY = ("end it (`kill PID`) or restart it from the current release; for workers that "
             "outlive their master set stopasgroup=true and killasgroup=true in supervisor")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def _link(path: str) -> Optional[str]:
    try:
        return os.readlink(path)
    except OSError:
        return None


def stat_fields(pid: int, task: Optional[int] = None) -> Optional[List[str]]:
    """/proc/PID/stat (or one thread's, /proc/PID/task/TASK/stat) after the command name
    (which may hold spaces and parentheses)."""
    raw = _read("/proc/%d/stat" % pid if task is None else "/proc/%d/task/%d/stat" % (pid, task))
    if raw is None:
        return None
    try:
        return raw.decode("ascii", "replace").rsplit(")", 1)[1].split()
    except IndexError:
        return None


def command_name(pid: int) -> str:
    """The process's comm (its executable's short name), "" if /proc hides it."""
    return (_read("/proc/%d/comm" % pid) or b"").decode("utf-8", "replace").strip()


def cpu_seconds(fields: Optional[List[str]]) -> Optional[float]:
    """User plus system CPU seconds from stat fields (utime, stime); None without them."""
    try:
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK if fields else None
    except (IndexError, ValueError):
        return None


def started_at(fields: List[str]) -> Optional[float]:
    """Epoch start time of a process, exact to a clock tick (unlike /proc/stat's btime)."""
    raw = _read("/proc/uptime")
    if raw is None:
        return None
    try:
        uptime = float(raw.split()[0])
        return time.time() - (uptime - int(fields[19]) / _CLK_TCK)
    except (ValueError, IndexError):
        return None


def facts(pid: int) -> Dict[str, Any]:
    """pid, ppid, uid, user, start time, cmdline, exe and cwd (None where /proc refuses:
    another user's cwd and exe need root)."""
    out: Dict[str, Any] = {"pid": pid, "ppid": None, "uid": None, "user": None,
                           "started_at": None, "cmdline": [], "exe": None, "cwd": None}
    if not pid:
        return out
    fields = stat_fields(pid)
    if fields:
        out["ppid"] = int(fields[1])
        out["started_at"] = started_at(fields)
    try:
        out["uid"] = os.stat("/proc/%d" % pid).st_uid
        out["user"] = pwd.getpwuid(out["uid"]).pw_name
    except (OSError, KeyError):
        pass
    cmdline = _read("/proc/%d/cmdline" % pid) or b""
    out["cmdline"] = [a.decode("utf-8", "replace") for a in cmdline.split(b"\0") if a]
    out["exe"] = _link("/proc/%d/exe" % pid)
    out["cwd"] = _link("/proc/%d/cwd" % pid)
    return out


def exec_done(pid: int, parent: Dict[str, Any]) -> bool:
    """Whether `pid` has exec'd its own program: a child of supervisord that has only
    forked still has its parent's command line and executable."""
    mine = facts(pid)
    if not mine["cmdline"] and mine["exe"] is None:
        return True  # gone or unreadable: nothing more will change by waiting
    return mine["cmdline"] != parent["cmdline"] or (
        mine["exe"] is not None and parent["exe"] is not None and mine["exe"] != parent["exe"])


def settle(pid: int, parent_pid: Optional[int], timeout: float) -> bool:
    """Wait (at most `timeout`) until `pid` has exec'd; False if it never did."""
    if not parent_pid or not pid:
        return True
    parent = facts(parent_pid)
    deadline = time.time() + timeout
    while not exec_done(pid, parent):
        if time.time() >= deadline:
            return False
        time.sleep(SETTLE_POLL)
    return True


def dir_identity(path: str) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def cwd_inside(pid: int, directory: str) -> Optional[bool]:
    """Whether the process's working directory is `directory` or below it, judged by the
    kernel's device and inode of each ancestor (symlinks, bind mounts and mount
    namespaces change the path, not the directory). None when /proc refuses to say."""
    wanted = dir_identity(directory)
    here = dir_identity("/proc/%d/cwd" % pid)
    if wanted is None or here is None:
        return None
    path = "/proc/%d/cwd" % pid
    for _ in range(_MAX_DEPTH):
        if here == wanted:
            return True
        path += "/.."
        parent = dir_identity(path)
        if parent is None or parent == here:
            return False  # reached the root
        here = parent
    return False


def descendants(pid: int) -> List[int]:
    """Direct and indirect child pids (a gunicorn master's workers, for example)."""
    parents: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def judge(pid: int, release_dir: str, switched_at: float, parent_pid: Optional[int],
          settle_timeout: float) -> Dict[str, Any]:
    """The freshness rule for one supervised process: it has exec'd, its working
    directory is in `release_dir`, and it and all its descendants started after the
    switch. Returns the facts, the `problems` (empty when fresh) and what /proc would
    not show (`unseen`), so a report never claims more than was seen."""
    settled = settle(pid, parent_pid, settle_timeout)
    seen = facts(pid)
    problems: List[str] = []
    unseen: List[str] = []
    if not settled:
        problems.append("has not exec'd its program after %.0fs (still a fork of "
                        "supervisord)" % settle_timeout)
    inside = cwd_inside(pid, release_dir)
    if inside is None:
        unseen.append("working directory of pid %d (user %s) is not readable here; run as "
                      "root or that user to see it" % (pid, seen["user"] or seen["uid"]))
    elif not inside:
        problems.append("runs in %s, not in the current release (%s)"
                        % (seen["cwd"] or "?", os.path.realpath(release_dir)))
    started = seen["started_at"]
    if started is not None and started + START_TOLERANCE < switched_at:
        problems.append("started %s, before current was switched at %s"
                        % (stamp(started), stamp(switched_at)))
    old = []
    for child in descendants(pid):
        child_started = facts(child)["started_at"]
        if child_started is not None and child_started + START_TOLERANCE < switched_at:
            old.append(child)
    if old:
        problems.append("child processes %s started before the switch" % old)
    return {"pid": pid, "cwd": seen["cwd"], "started_at": started, "user": seen["user"],
            "problems": problems, "unseen": unseen}


def stamp(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch)) + ("%.2f" % (epoch % 1))[1:]


# ---------------------------------------------------------------- stray processes


def is_agent(cmdline: List[str]) -> bool:
    """A deploytools agent session (or its background housekeeping): `python -S -c
    BOOTSTRAP DIGEST cached|inline`, possibly under `timeout` and `sudo`."""
    return "-S" in cmdline and "-c" in cmdline and bool(cmdline) and \
        cmdline[-1] in ("cached", "inline")


def ancestors(pid: int) -> List[int]:
    """pid, its parent, and so on up to (not including) init."""
    out = []
    while pid > 1 and len(out) < _MAX_DEPTH:
        fields = stat_fields(pid)
        if not fields:
            break
        out.append(pid)
        pid = int(fields[1])
    return out


def _evidence_paths(pid: int, cmdline: List[str], needles: Tuple[bytes, ...] = (b"/",)
                    ) -> List[Tuple[str, str]]:
    """(kind, path) pairs naming what a process runs: cwd, exe, path arguments, mapped
    files and open files. Mapped files are only listed when the map mentions one of
    `needles` (parsing every process's maps was most of a scan's CPU)."""
    out: List[Tuple[str, str]] = []
    for kind, link in (("cwd", "cwd"), ("exe", "exe")):
        target = _link("/proc/%d/%s" % (pid, link))
        if target:
            out.append((kind, target))
    for arg in cmdline[1:]:
        value = arg.split("=", 1)[-1]
        if value.startswith("/"):
            out.append(("argument", value))
    maps = _read("/proc/%d/maps" % pid)
    if maps and any(needle in maps for needle in needles):
        seen = set()
        for line in maps.decode("utf-8", "replace").splitlines():
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/") and parts[5] not in seen:
                seen.add(parts[5])
                out.append(("mapped", parts[5]))
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        fds = []
    for fd in fds:
        target = _link("/proc/%d/fd/%s" % (pid, fd))
        if target and target.startswith("/"):
            out.append(("open", target))
    return out


class Places:
    """Where code of a release lives under one deploy_to, by the paths a process may
    show (as configured and as resolved)."""

    def __init__(self, deploy_to: str, current_id: Optional[str]) -> None:
        roots = {deploy_to.rstrip("/"), os.path.realpath(deploy_to)}
        self.releases = sorted(r + "/releases/" for r in roots)
        self.venvs = sorted(r + "/shared/venvs/" for r in roots)
        self.current = current_id
        venv = os.path.realpath(os.path.join(deploy_to, "releases", current_id or ".", ".venv"))
        self.current_venv = os.path.basename(venv) if "/shared/venvs/" in venv else None
        # what a path of another release or venv must contain (a cheap first filter)
        self.needles = tuple(p.encode() for p in self.releases + self.venvs)

    def foreign(self, path: str) -> Optional[str]:
        """What `path` belongs to when it is code of another release: 'release ID' or
        'venv HASH'; None for the current release, shared files and everything else."""
        path = path[:-len(" (deleted)")] if path.endswith(" (deleted)") else path
        for prefix in self.releases:
            if path.startswith(prefix):
                name = path[len(prefix):].split("/", 1)[0]
                if name and name != self.current and not name.startswith("."):
                    return "release %s" % name
                return None
        for prefix in self.venvs:
            if path.startswith(prefix):
                name = path[len(prefix):].split("/", 1)[0]
                if name and name != self.current_venv:
                    return "venv %s" % name
                return None
        return None


def strays(deploy_to: str, current_id: Optional[str]) -> Dict[str, Any]:
    """Processes (supervised or not; never this agent) that run code from another
    release or venv under `deploy_to`, and how many processes /proc would not show."""
    places = Places(deploy_to, current_id)
    skip = set(ancestors(os.getpid()))
    found: List[Dict[str, Any]] = []
    unreadable = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        pid = int(entry)
        raw = _read("/proc/%d/cmdline" % pid)
        if not raw:
            continue  # kernel thread, or gone
        cmdline = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        if is_agent(cmdline):
            continue
        if _link("/proc/%d/cwd" % pid) is None and os.path.exists("/proc/%d" % pid):
            unreadable += 1
        hits: Dict[str, List[str]] = {}
        for kind, path in _evidence_paths(pid, cmdline, places.needles):
            owner = places.foreign(path)
            if owner:
                hits.setdefault(owner, []).append("%s %s" % (kind, path))
        if hits:
            seen = facts(pid)
            found.append({"pid": pid, "user": seen["user"] or seen["uid"],
                          "command": " ".join(cmdline)[:200], "runs": sorted(hits),
                          "evidence": [e for ev in hits.values() for e in ev][:5]})
    return {"strays": found, "unreadable": unreadable}


def describe_stray(stray: Dict[str, Any]) -> str:
    return "pid %d (%s: %s) runs from %s (%s)" % (
        stray["pid"], stray["user"], stray["command"][:80], ", ".join(stray["runs"]),
        stray["evidence"][0])
