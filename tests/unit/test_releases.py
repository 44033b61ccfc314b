"""The host's release layout: ids it accepts and what cleanup keeps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deploytools.remote.releases import Layout


def test_layout_refuses_odd_release_ids(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    for bad in ("../x", "", ".hidden", "a/b", ".."):
        with pytest.raises(ValueError):
            layout.release(bad)


def test_layout_cleanup_keeps_current_previous_and_skips_failed(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    layout.ensure()
    for name in ("r1", "r2", "r3", "r4", "r5", "r6"):
        os.makedirs(layout.release(name))
    layout.mark_failed("r2", "boom")
    layout.mark_failed("r6", "newer failure")
    layout.switch("r5")
    removed = layout.cleanup(keep=2)
    assert sorted(removed) == ["r1", "r2", "r3"]
    assert layout.release_ids() == ["r4", "r5", "r6"]  # newer failed kept for post-mortem
    assert os.readlink(layout.current) == "releases/r5"
    owner = {"token": "t1", "user": "me"}
    assert layout.acquire_lock(owner) is None
    assert layout.acquire_lock({"token": "t2"})["token"] == "t1"
    assert not layout.release_lock("t2") and layout.release_lock("t1")
