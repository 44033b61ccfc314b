"""Read-only and locked fleet tasks: the guards they apply before touching a host."""

from __future__ import annotations

import io

import pytest

from deploytools.console import make_console
from deploytools.errors import ConfigError
from deploytools.inventory import parse_inventory
from deploytools.operations import clear_cache
from tests.support.inventories import one_host_inventory


def test_clear_cache_path_guard_sees_through_spellings() -> None:
    host = parse_inventory(one_host_inventory()).hosts["web1"]
    for path in ("/srv/app/../../etc", "/srv/app/./../x", "/srv/appx", "//srv/other"):
        with pytest.raises(ConfigError):
            clear_cache([host], make_console(io.StringIO()), path=path, dry_run=True)
