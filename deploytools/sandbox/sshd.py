"""The per-host OpenSSH server: which binary, its version, keys and config text."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from deploytools.sandbox.errors import FleetStartError

if TYPE_CHECKING:
    from deploytools.sandbox.host import SimHost


def sshd_path() -> str | None:
    """The sshd binary, by absolute path: sshd refuses to run (re-exec) from a relative one."""
    if os.access("/usr/sbin/sshd", os.X_OK):
        return "/usr/sbin/sshd"
    found = shutil.which("sshd")
    return os.path.abspath(found) if found else None




def _sshd_version(binary: str) -> tuple[int, int]:
    """OpenSSH version, to add options only newer servers understand (unknown = fatal)."""
    try:
        out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return (0, 0)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stdout + out.stderr)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)




def _run_keygens(jobs: list[tuple[Path, str]]) -> None:
    """Generate ed25519 keys concurrently (one ssh-keygen per key, all at once)."""
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise FleetStartError("ssh-keygen not found (install openssh-client)")
    procs = []
    for path, comment in jobs:
        for stale in (path, path.with_name(path.name + ".pub")):
            stale.unlink(missing_ok=True)  # ssh-keygen would ask before overwriting
        procs.append(
            (
                path,
                subprocess.Popen(
                    [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                ),
            )
        )
    failures = []
    for path, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"{path}: {out.decode(errors='replace').strip()}")
    if failures:
        raise FleetStartError("ssh-keygen failed:\n" + "\n".join(failures))


def _public_key(path: Path) -> str:
    """'ssh-ed25519 AAAA...' from a .pub file, without the comment."""
    keytype, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"{keytype} {blob}"


def _sshd_config_text(sim: SimHost, version: tuple[int, int]) -> str:
    lines = [
        f"ListenAddress {sim.address}",
        f"Port {sim.port}",
        f"HostKey {sim.host_key}",
        f"PidFile {sim.root / 'sshd.pid'}",
        f"AuthorizedKeysFile {sim.authorized_keys}",
        "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "UseDNS no",
        "MaxStartups 200",
        "MaxSessions 100",
        "PrintMotd no",
        "LogLevel ERROR",
        "Subsystem sftp internal-sftp",
    ]
    if version >= (7, 8):
        # A home of its own per host, as separate machines have. It also keeps the
        # controller's ~/.bashrc (which bash sources for every SSH command) out: here it
        # runs `pyenv init`, which put pyenv shims first on PATH and cost ~120 ms per
        # exec; with it, a warm exec takes ~4 ms. Sessions still start in the passwd
        # home directory (sshd chdirs there), only $HOME changes.
        lines.append(f"SetEnv HOME={sim.home}")
    if version >= (9, 8):
        # 9.8+ penalises sources with failed auths; every client here is 127.0.0.1, so
        # one test that expects a refusal could lock out the next one.
        lines.append("PerSourcePenalties no")
    return "\n".join(lines) + "\n"
