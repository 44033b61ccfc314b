"""What `prepare` does to a fresh release besides unpacking it (stdlib only).

* Shared paths: `.env`, uploaded media, logs live in `{deploy_to}/shared/` and are
  symlinked into every release (relative links, so they survive the partial -> final
  rename); whatever the artifact carried at those paths is replaced by the link.
* Virtualenvs: one per (requirements file, interpreter, pip args), in
  `shared/venvs/<hash>`, built once and reused by every release with the same hash,
  linked as `.venv`. Cleanup removes the ones no kept release links to.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from typing import Any, Callable, Dict, List

COMPLETE_MARK = ".deploytools-complete"


class BuildError(Exception):
    """A release could not be completed (missing shared file, venv install failure)."""


def missing_shared_files(shared_root: str, shared: Dict[str, Any]) -> List[str]:
    """Shared files that must exist before a deploy (Capistrano's check:linked_files)."""
    return [os.path.join(shared_root, rel) for rel in shared.get("files") or []
            if not os.path.exists(os.path.join(shared_root, rel))]


def link_shared(release_dir: str, shared_root: str, shared: Dict[str, Any]) -> List[str]:
    """Replace each shared path in the release by a relative link into shared/.

    The release side is walked one component at a time on directory fds, never
    following a symlink: a repository may hold `public -> /srv/outside`, and then
    `shared.dirs: [public/uploads]` must not delete or replace anything out there.
    A symlinked parent is refused, naming the path."""
    linked = []
    for kind in ("dirs", "files"):
        for rel in shared.get(kind) or []:
            target = os.path.join(shared_root, rel)
            if kind == "dirs":
                os.makedirs(target, exist_ok=True)
            elif not os.path.exists(target):
                raise BuildError("shared file %s is missing (create it on the host)" % target)
            link = os.path.join(release_dir, rel)
            parent_fd, name = _release_parent(release_dir, rel)
            try:
                _remove_at(parent_fd, name)
                os.symlink(os.path.relpath(target, os.path.dirname(link)), name,
                           dir_fd=parent_fd)
            finally:
                os.close(parent_fd)
            linked.append(rel)
    return linked


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _release_parent(release_dir: str, rel: str) -> "tuple[int, str]":
    """An fd on the directory holding `rel` inside the release (made where missing) and
    rel's last name, reached without following any symlink."""
    parts = rel.strip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BuildError("shared path %r must be a plain relative path" % rel)
    fd = os.open(release_dir, _DIR_FLAGS)
    try:
        for depth, part in enumerate(parts[:-1]):
            try:
                info = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                info = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode):
                what = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a directory"
                raise BuildError(
                    "shared path %s: %s in the release is %s; refusing to link through it "
                    "(nothing outside the release is touched)"
                    % (rel, "/".join(parts[:depth + 1]), what))
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def _remove_at(dir_fd: int, name: str) -> None:
    """Remove `name` (a tree, a file or a link, never what a link points to) from the
    directory open as `dir_fd`; nothing there is fine."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as entries:
            names = [entry.name for entry in entries]
        for child in names:
            _remove_at(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def venv_key(requirements: bytes, pip_args: List[str], use_uv: bool) -> str:
    """Same requirements, interpreter and install options -> same venv."""
    digest = hashlib.sha256()
    for part in (requirements, sys.version.encode(), sys.executable.encode(),
                 "\0".join(pip_args).encode(), b"uv" if use_uv else b"pip"):
        digest.update(part + b"\0")
    return digest.hexdigest()[:16]


def ensure_venv(release_dir: str, shared_root: str, spec: Dict[str, Any],
                event: Callable[[str], None]) -> Dict[str, Any]:
    """Link the release's `.venv` to a venv for its requirements, building it if new."""
    requirements = os.path.join(release_dir, spec["requirements"])
    if not os.path.isfile(requirements):
        raise BuildError("venv.requirements %s is not in the release" % spec["requirements"])
    with open(requirements, "rb") as fh:
        content = fh.read()
    pip_args = list(spec.get("pip_args") or [])
    use_uv = bool(spec.get("use_uv")) and shutil.which("uv") is not None
    key = venv_key(content, pip_args, use_uv)
    venvs = os.path.join(shared_root, "venvs")
    venv = os.path.join(venvs, key)
    reused = os.path.exists(os.path.join(venv, COMPLETE_MARK))
    if reused:
        event("reusing venv %s (requirements unchanged)" % key)
    else:
        shutil.rmtree(venv, ignore_errors=True)  # an interrupted build: start over
        os.makedirs(venvs, exist_ok=True)
        event("creating venv %s" % key)
        _run([sys.executable, "-m", "venv", venv], "create the venv")
        python = os.path.join(venv, "bin", "python")
        if use_uv:
            command = ["uv", "pip", "install", "--python", python, "-r", requirements]
        else:
            command = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q",
                       "-r", requirements]
        _run(command + pip_args, "install requirements")
        with open(os.path.join(venv, COMPLETE_MARK), "w") as fh:
            fh.write(spec["requirements"] + "\n")
    link = os.path.join(release_dir, ".venv")
    if os.path.lexists(link):
        shutil.rmtree(link) if os.path.isdir(link) and not os.path.islink(link) else \
            os.unlink(link)
    os.symlink(os.path.relpath(venv, release_dir), link)
    return {"key": key, "reused": reused, "path": venv}


def _run(command: List[str], what: str) -> None:
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL)
    if done.returncode:
        tail = done.stdout.decode("utf-8", "replace").strip()[-2000:]
        raise BuildError("could not %s (%s exited %d): %s"
                           % (what, os.path.basename(command[0]), done.returncode, tail))


def unused_venvs(shared_root: str, release_dirs: List[str]) -> List[str]:
    """Venvs under shared/venvs that no remaining release links to."""
    venvs = os.path.join(shared_root, "venvs")
    if not os.path.isdir(venvs):
        return []
    used = set()
    for release in release_dirs:
        link = os.path.join(release, ".venv")
        if os.path.islink(link):
            used.add(os.path.basename(os.path.realpath(link)))
    return sorted(os.path.join(venvs, name) for name in os.listdir(venvs) if name not in used)
