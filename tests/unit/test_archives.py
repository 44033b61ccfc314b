"""Archives for hosts: the fast ustar headers are the ones tarfile would write."""

from __future__ import annotations

import io
import tarfile

import pytest

from deploytools.archives import file_member, header, write_members


def member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, linkname: str = ""
           ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    info.mode, info.mtime = 0o644 if kind != tarfile.DIRTYPE else 0o755, 1_764_000_000
    info.uname = info.gname = ""
    return info


@pytest.mark.parametrize("info", [
    member("app/main.py", size=1234), member("app/pkg", tarfile.DIRTYPE),
    member("app/link.py", tarfile.SYMTYPE, linkname="main.py"), member("x" * 100, size=1),
], ids=["file", "dir", "symlink", "100-char name"])
def test_header_is_byte_for_byte_what_tarfile_writes(info: tarfile.TarInfo) -> None:
    assert header(info) == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def test_long_and_non_ascii_names_go_through_tarfile_and_read_back() -> None:
    names = ["d/" * 60 + "deep.py", "café/menu.py", "plain.py"]
    out = io.BytesIO()
    write_members(out, [file_member(name, name.encode()) for name in names])  # type: ignore[arg-type]
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:gz") as archive:
        read = {m.name: archive.extractfile(m).read() for m in archive}  # type: ignore[union-attr]
    assert read == {name: name.encode() for name in names}
