"""The varied fleet: six hosts configured the way other teams configure theirs
(supervisord startsecs, health payloads, a symlinked deploy_to, PyPy, gunicorn with and
without process groups). tests/test_variants.py and benchmarks/proof.py run on it."""

from __future__ import annotations

from deploytools.sandbox import PYPY, Variant

VARIANTS = [
    Variant("s0", startsecs=0, health="revision"),
    Variant("s3", startsecs=3, health="text", worker_procs=2),
    Variant("link", symlinked_deploy_to=True, stopasgroup=False),
    Variant("pypy", python=PYPY),
    Variant("gu", app="gunicorn"),
    Variant("guoff", app="gunicorn", stopasgroup=False, stubborn_workers=True),
]
