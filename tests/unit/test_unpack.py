"""The agent's unpacking: GNU tar and the tarfile fallback give the same release."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from deploytools.archives import file_member, write_members
from deploytools.remote import unpack


def archive(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    write_members(out, members)  # type: ignore[arg-type]
    return out.getvalue()


def sample() -> bytes:
    link = tarfile.TarInfo("app/link.py")
    link.type, link.linkname = tarfile.SYMTYPE, "main.py"
    script = file_member("bin/run", b"#!/bin/sh\n")
    script[0].mode = 0o4775  # set-uid and group write: neither reaches the host
    return archive([file_member("app/main.py", b"print('hi')\n"), script, (link, None),
                    file_member("app/pkg/__init__.py", b"")])


UNPACKERS = {"gnu_tar": lambda s, n, d: unpack._extract_with_gnu_tar(unpack.gnu_tar(), s, n, d),
             "tarfile": unpack._extract_with_tarfile}


@pytest.fixture(params=sorted(UNPACKERS))
def extract(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    if request.param == "gnu_tar" and unpack.gnu_tar() is None:
        pytest.skip("no GNU tar here")
    return UNPACKERS[request.param]


def test_unpacks_files_links_and_modes_and_stops_at_its_size(extract, tmp_path: Path) -> None:
    data = sample()
    stream = io.BufferedReader(io.BytesIO(data + b"NEXT REQUEST"))  # type: ignore[arg-type]
    assert extract(stream, len(data), str(tmp_path)) == (3, len(b"print('hi')\n") + 10)
    assert (tmp_path / "app/main.py").read_bytes() == b"print('hi')\n"
    assert os.readlink(tmp_path / "app/link.py") == "main.py"
    assert (tmp_path / "bin/run").stat().st_mode & 0o7777 == 0o755
    assert stream.read() == b"NEXT REQUEST"  # exactly its bytes were consumed


def test_a_short_stream_is_an_error(extract, tmp_path: Path) -> None:
    data = sample()
    with pytest.raises(unpack.UnpackError, match="ended early"):
        extract(io.BytesIO(data), len(data) + 100, str(tmp_path))


def test_a_name_with_dot_dot_is_refused(extract, tmp_path: Path) -> None:
    data = archive([file_member("ok.py", b""), file_member("../evil.py", b"x")])
    (tmp_path / "release").mkdir()
    with pytest.raises(unpack.UnpackError, match="unsafe path"):
        extract(io.BytesIO(data), len(data), str(tmp_path / "release"))
    assert not (tmp_path / "evil.py").exists()


def test_nothing_to_unpack(tmp_path: Path) -> None:
    assert unpack.extract(io.BytesIO(b""), 0, str(tmp_path)) == (0, 0)
