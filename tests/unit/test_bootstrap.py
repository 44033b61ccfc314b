"""The agent cache on a host keeps the agents in use and drops long-unused versions."""

from __future__ import annotations

import os
import time
from pathlib import Path

from deploytools.remote import bootstrap


def test_storing_an_agent_prunes_versions_unused_for_a_month(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fd = bootstrap.private_dir(str(cache), create=True)
    assert fd is not None
    try:
        old, recent, other = cache / "agent-old.cpython-311", cache / "agent-recent.pypy39", \
            cache / "intact"
        for path in (old, recent):
            path.write_bytes(b"x")
        other.mkdir()
        month = time.time() - (bootstrap.STALE_AGENT_DAYS + 1) * 86400
        os.utime(old, (month, month))
        os.utime(other, (month, month))
        bootstrap.store_cached(fd, "agent-new.cpython-311", [("m", None)])
        assert sorted(p.name for p in cache.iterdir()) == [
            "agent-new.cpython-311", "agent-recent.pypy39", "intact"]
        assert bootstrap.load_cached(fd, "agent-new.cpython-311") == [("m", None)]
    finally:
        os.close(fd)
