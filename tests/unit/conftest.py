"""Fixtures for every fast test: none of them may write into the user's own cache."""

from __future__ import annotations

import pytest

from deploytools import artifact


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    """artifact.CACHE_DIR (git mirrors, digests, compiled pycs) in a temporary directory."""
    monkeypatch.setattr(artifact, "CACHE_DIR", tmp_path_factory.mktemp("cache") / "deploytools")
