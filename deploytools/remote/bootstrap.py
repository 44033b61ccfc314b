"""The agent's bootstrap: the program `python3 -S -c` runs on the host (see transport.py).

argv: DIGEST MODE. "cached": load the agent's compiled modules from the host's cache
(per agent digest and interpreter), or exit 75 when it has none; "inline": read the
compressed sources from stdin, check their digest, compile them, and cache the code
objects for the next call.

Why the checks: the cache holds code that is executed. It is only ever read from
`~/.cache/deploytools` when that directory is a real directory (not a symlink) owned
by the SSH user with mode 0700, and the file in it a regular file owned by that user,
not writable by others. Both are checked on open file descriptors (O_NOFOLLOW, the file
opened relative to the checked directory), so nothing can be swapped in between check
and load. When no such directory can be had, the agent runs inline and uncached; there
is no fallback to a shared place such as /tmp, where anyone can plant a file by the
(public) digest. This file is sent as text, so it is stdlib-only and Python 3.8+.
"""

import contextlib
import hashlib
import json
import marshal
import os
import stat
import sys
import types
import zlib

CACHE_MISS = 75


def private_dir(path, create):
    """An fd on `path` if it is a directory of ours with mode 0700 (made so if missing
    and `create`), else None. The last component must not be a symlink; the parents
    need not be trusted, because the fd pins the directory that was checked."""
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError:
            return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    st = os.fstat(fd)
    if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
            or stat.S_IMODE(st.st_mode) != 0o700):
        os.close(fd)
        return None
    return fd


def load_cached(dir_fd, name):
    """The code objects cached as `name`, or None if absent or not trustworthy."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_mode & 0o022):
            return None
        try:
            return marshal.load(f)
        except (EOFError, ValueError, TypeError):
            return None


def store_cached(dir_fd, name, codes):
    """Write the code objects as `name`, atomically (a private temp file, renamed)."""
    tmp = f"{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as f:
            marshal.dump(codes, f)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        prune_cached(dir_fd, name)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)


STALE_AGENT_DAYS = 30


def prune_cached(dir_fd, keep):
    """Remove cached agents of other versions unused for STALE_AGENT_DAYS (each upgrade
    of the controller leaves one, ~300 KB); a loaded agent is touched, see main."""
    limit = STALE_AGENT_DAYS * 86400
    now = os.stat(keep, dir_fd=dir_fd).st_mtime
    for entry in os.listdir(dir_fd):
        if entry.startswith("agent-") and entry != keep:
            with contextlib.suppress(OSError):
                if now - os.stat(entry, dir_fd=dir_fd, follow_symlinks=False).st_mtime > limit:
                    os.unlink(entry, dir_fd=dir_fd)


def read_inline(digest):
    """The agent's modules from stdin, compiled, after checking them against `digest`."""
    r = sys.stdin.buffer
    data = r.read(int(r.readline()))
    if hashlib.sha256(data).hexdigest()[:32] != digest:
        sys.exit("deploytools agent: digest mismatch")
    return [(n, None if s is None else compile(s, "<deploytools " + n + ">", "exec"))
            for n, s in json.loads(zlib.decompress(data))]


def install(codes):
    """Execute the modules in order as real (sys.modules) modules."""
    for mod_name, code in codes:
        m = types.ModuleType(mod_name)
        sys.modules[mod_name] = m
        parent, _, child = mod_name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, m)
        if code is None:
            m.__path__ = []
        else:
            exec(code, m.__dict__)


def main():
    digest, mode = sys.argv[1], sys.argv[2]
    name = f"agent-{digest}.{sys.implementation.cache_tag}"
    cache = os.path.join(os.path.expanduser("~"), ".cache", "deploytools")
    dir_fd = private_dir(cache, create=mode != "cached")
    if mode == "cached":
        codes = None if dir_fd is None else load_cached(dir_fd, name)
        if codes is None:
            sys.exit(CACHE_MISS)
        with contextlib.suppress(OSError):  # in use: not stale (prune_cached)
            os.utime(name, dir_fd=dir_fd)
    else:
        codes = read_inline(digest)
        if dir_fd is not None:
            store_cached(dir_fd, name, codes)
    if dir_fd is not None:
        os.close(dir_fd)
    install(codes)
    sys.modules["deploytools.remote.agent"].main()


if __name__ == "__main__":
    main()
