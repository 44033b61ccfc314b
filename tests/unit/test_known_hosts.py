"""known_hosts as the controller loads it for each connection."""

from __future__ import annotations

import subprocess
from pathlib import Path


def test_known_hosts_is_parsed_once_and_only_this_hosts_entries_are_loaded(
        tmp_path: Path) -> None:
    import paramiko

    from deploytools import ssh

    keys = {name: paramiko.Ed25519Key.from_private_key_file(str(_keypair(tmp_path, name)))
            for name in ("a", "b")}
    hashed = paramiko.HostKeys.hash_host("[127.0.0.9]:2222")
    path = tmp_path / "known_hosts"
    path.write_text(f"127.0.0.1 ssh-ed25519 {keys['a'].get_base64()}\n"
                    f"127.0.0.2 ssh-ed25519 {keys['b'].get_base64()}\n"
                    f"{hashed} ssh-ed25519 {keys['b'].get_base64()}\n"
                    f"@revoked * ssh-ed25519 {keys['a'].get_base64()}\n")
    loaded = paramiko.HostKeys()
    revoked = ssh.load_known_hosts(loaded, str(path), {"127.0.0.2", "[127.0.0.2]:22"})
    assert revoked == {("ssh-ed25519", keys["a"].get_base64())}
    assert loaded.lookup("127.0.0.2") is not None and loaded.lookup("127.0.0.1") is None
    assert loaded.lookup("[127.0.0.9]:2222") is not None  # hashed entries always come along
    assert len(ssh._parsed_known_hosts) >= 1
    parsed = dict(ssh._parsed_known_hosts)
    ssh.load_known_hosts(paramiko.HostKeys(), str(path), {"127.0.0.2"})
    assert ssh._parsed_known_hosts == parsed  # the same version: not parsed again


def _keypair(tmp_path: Path, name: str) -> Path:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key
