"""Planting stale bytecode on purpose: what `verify` must catch and a deploy must never
leave (used by tests/test_variants.py and benchmarks/proof.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_COMPILE = ("import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], "
            "doraise=True, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)")


def write_timestamp_pyc(python: str, source_text: str, pyc: Path,
                        stamp_from: Path | None = None) -> None:
    """Write `pyc` with `python` in timestamp mode from `source_text`, stamped with
    `stamp_from`'s mtime: same size + same mtime + other code is the stale case that
    tar and rsync -t leave, which CPython's own timestamp check accepts."""
    pyc.parent.mkdir(exist_ok=True)
    scratch = pyc.parent / f".plant-{os.getpid()}-{pyc.stem}.py"
    scratch.write_text(source_text)
    if stamp_from is not None:
        stat = stamp_from.stat()
        os.utime(scratch, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    try:
        subprocess.run([python, "-c", _COMPILE, str(scratch), str(pyc)], check=True)
    finally:
        scratch.unlink()
