"""The deploy lock lives with the agent session that took it (stdlib only).

A lock must never need a human after a crash, and a live run's lock must never be
taken over. So the lock records the agent process holding it (pid and its start time,
which tell a reused pid apart), and:

* when the controller disappears (kill -9, OOM, lost network), its agent session sees
  stdin close: it finishes the step in flight (a switch ends healthy or rolled back),
  discards a prepared release that was never activated, writes a history line and
  unlocks. While it finishes, the lock says ``controller_gone_at``, so a new run waits
  for it instead of failing;
* a lock whose agent process is provably gone (killed with its host's session, host
  rebooted) is taken over by the next run, which says so in one line;
* a session that replaces another within the same run (see transport) adopts the
  lock when its requests show the run's token.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import threading
import time
from typing import Any, Callable, Dict, Optional

from deploytools.remote.processes import stat_fields
from deploytools.remote.releases import Layout

# deploy_to -> what this session did under the lock it holds there
HELD: Dict[str, Dict[str, Any]] = {}
_guard = threading.Lock()


def start_ticks(pid: int) -> Optional[str]:
    fields = stat_fields(pid)
    return fields[19] if fields else None


def owner_record(owner: Dict[str, Any]) -> Dict[str, Any]:
    """The controller's owner record plus the agent process that will hold the lock."""
    return dict(owner, acquired_at=time.time(), agent_pid=os.getpid(),
                agent_start=start_ticks(os.getpid()))


def holder_alive(holder: Dict[str, Any]) -> Optional[bool]:
    """Whether the agent holding a lock still runs: None for locks that do not say
    (taken by an older deploytools), which only `lock_expiry` can free."""
    pid = holder.get("agent_pid")
    if not pid or not holder.get("agent_start"):
        return None
    return start_ticks(int(pid)) == holder["agent_start"]


def took(layout: Layout, owner: Dict[str, Any]) -> None:
    with _guard:
        HELD[layout.deploy_to] = {"token": owner.get("token"), "release": owner.get("release"),
                                  "prepared": None, "activated": False,
                                  "action": owner.get("action")}


def note(deploy_to: str, **facts: Any) -> None:
    """Record what this session did under its lock (prepared, activated)."""
    with _guard:
        if deploy_to in HELD:
            HELD[deploy_to].update(facts)


def released(deploy_to: str) -> None:
    with _guard:
        HELD.pop(deploy_to, None)


def adopt(layout: Layout, token: str) -> bool:
    """A request of the run holding the lock: make this session its holder (a session
    may replace another within a run). False when the run no longer holds the lock."""
    owner = layout.lock_owner()
    if not owner or owner.get("token") != token:
        return False
    if owner.get("agent_pid") != os.getpid():
        layout.rewrite_lock_owner(token, agent_pid=os.getpid(),
                                  agent_start=start_ticks(os.getpid()))
        with _guard:
            HELD.setdefault(layout.deploy_to, {"token": token, "release": owner.get("release"),
                                               "prepared": None, "activated": False,
                                               "action": owner.get("action")})
    return True


def take_over(layout: Layout, holder: Dict[str, Any],
              say: Callable[[str], None]) -> None:
    """Free a lock whose agent is provably gone, and what it left half-done."""
    say("deploy lock of %s@%s (%s of %s) was left by a run that is gone (agent pid %s no "
        "longer runs): taking it over" % (holder.get("user", "?"), holder.get("controller", "?"),
                                          holder.get("action", "run"), holder.get("release"),
                                          holder.get("agent_pid")))
    discard_unactivated(layout, holder.get("release"))
    layout.release_lock(holder.get("token"))


def discard_unactivated(layout: Layout, release_id: Optional[str]) -> Optional[str]:
    """A release prepared by a run that never activated it has passed no health check:
    it must never become a rollback target. Remove it (and its partial build)."""
    if not release_id:
        return None
    with contextlib.suppress(ValueError):
        if release_id == layout.current_id() or layout.state(release_id).get("served_at"):
            return None
        with contextlib.suppress(OSError):
            shutil.rmtree(layout.partial(release_id))
        if os.path.isdir(layout.release(release_id)):
            layout.discard(layout.release(release_id))
            return release_id
    return None


def abandon_all(history: Callable[[Layout, Dict[str, Any]], None]) -> None:
    """The controller is gone: for every lock this session holds, discard the unused
    release, write a history line and unlock."""
    with _guard:
        held = dict(HELD)
        HELD.clear()
    for deploy_to, facts in held.items():
        layout = Layout(deploy_to)
        with contextlib.suppress(Exception):
            if not facts.get("activated"):
                discard_unactivated(layout, facts.get("prepared"))
            history(layout, facts)
            layout.release_lock(facts.get("token"))


def watch_controller(fd: int, gone: Callable[[], None]) -> None:
    """Notice at once when the controller's end of stdin closes, even mid-step (the
    session only reads stdin between requests), and mark the held locks so that a
    new run waits for this session to finish instead of failing."""
    def watch() -> None:
        poller = select.poll()
        poller.register(fd, getattr(select, "POLLRDHUP", 0))
        while True:
            events = poller.poll(500)
            if any(flags & (select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0))
                   for _, flags in events):
                gone()
                with _guard:
                    held = dict(HELD)
                for deploy_to, facts in held.items():
                    with contextlib.suppress(Exception):
                        Layout(deploy_to).rewrite_lock_owner(facts.get("token"),
                                                             controller_gone_at=time.time())
                return

    threading.Thread(target=watch, name="watch-controller", daemon=True).start()
