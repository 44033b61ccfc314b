"""The sample app the fleet serves, written into a source or release dir.

Its files live in ``sample_app/`` as real Python (linted, readable); they are package
data, copied as they are. Only ``sampleapp/views.py.tmpl`` is a template: VERSION and
HEALTH_STATUS are baked in with :meth:`str.format` when the app is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SAMPLE_APP_DIR = Path(__file__).resolve().parent / "sample_app"
_COPIED = ("app.py", "worker.py", "sampleapp/__init__.py")


def _filler_module(index: int) -> str:
    """Deterministic ballast module of roughly 1-10 KB (size varies with index)."""
    parts = [f'"""Filler module {index:04d} of the sample app: benchmark ballast."""\n']
    table = ", ".join(str((index * 7919 + k * 104729) % 1000003) for k in range(12))
    parts.append(f"\nTABLE = ({table})\n")
    for j in range(5 + (index * 37) % 40):
        parts.append(
            f"\n\ndef f{index:04d}_{j:02d}(x, scale={j + 1}):\n"
            f'    """Mix x with the table (filler {index}.{j})."""\n'
            f"    total = x * scale\n"
            f"    for k, value in enumerate(TABLE):\n"
            f"        total = (total * 31 + value + k + {index + j}) % 1000003\n"
            f"    return total\n"
        )
    return "".join(parts)


def write_sample_app(
    dest: Path,
    version: str = "v1",
    *,
    health_status: int = 200,
    extra_modules: int = 0,
    boot_delay: float = 0,
) -> None:
    """Write the stdlib-only sample app into ``dest`` (a source dir or a release dir).

    ``health_status`` makes /health fail (e.g. 500), to exercise health-check rollbacks
    (tests.support.faults writes apps that crash at import or answer malformed HTTP);
    ``extra_modules`` adds that many never-imported modules under ``sampleapp/mods`` to
    make it bigger; ``boot_delay`` makes the app take that many seconds to boot before it
    listens (as real apps do: what a balancer drain has to cover).
    Files are overwritten, nothing is deleted.
    """
    dest = Path(dest)
    pkg = dest / "sampleapp"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in _COPIED:
        shutil.copyfile(SAMPLE_APP_DIR / name, dest / name)
    template = (SAMPLE_APP_DIR / "sampleapp" / "views.py.tmpl").read_text(encoding="utf-8")
    views = template.format(version=version, health_status=int(health_status))
    if boot_delay > 0:
        views += f"\n\nimport time as _time\n\n_time.sleep({float(boot_delay)!r})  # boot delay\n"
    (pkg / "views.py").write_text(views, encoding="utf-8")
    if extra_modules > 0:
        mods = pkg / "mods"
        mods.mkdir(exist_ok=True)
        (mods / "__init__.py").write_text('"""Ballast modules (never imported)."""\n')
        for index in range(extra_modules):
            (mods / f"m{index:04d}.py").write_text(_filler_module(index), encoding="utf-8")


