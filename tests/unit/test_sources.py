"""Which files a release ships."""

from __future__ import annotations

from deploytools.sources import excluded


def test_exclusion_rules() -> None:
    assert excluded(".git/config", ())
    assert excluded("pkg/__pycache__/m.cpython-311.pyc", ())
    assert excluded("legacy.pyc", ())
    assert excluded("logs/app.log", ("*.log",))
    assert excluded("tests/test_x.py", ("tests/",))
    assert excluded("docs/build/index.html", ("docs/build",))
    assert not excluded("pkg/module.py", ("*.log", "tests/"))
    assert not excluded("contests/x.py", ("tests/",))
