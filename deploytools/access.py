"""Where and as whom to connect: the inventory, ssh_config and OpenSSH's defaults, merged.

Most people reach their hosts through ``~/.ssh/config`` aliases, keys held by ssh-agent
and bastions, so a deploy must connect the way ``ssh HOST`` does. Fabric reads ssh_config
on its own, but half-way (its ``Port`` lost to our injected default, its ``ProxyJump``
hops opened with AutoAddPolicy, so never verified). Everything is resolved here instead,
and ssh.py opens every hop and target through one verifying factory.

Precedence, per value: the inventory's explicit setting > ssh_config > OpenSSH's default
(port 22, the local user name, ssh-agent plus ``~/.ssh/id_*``).

Authentication follows OpenSSH too: agent keys, then key files (the inventory's
``ssh.identity``, else ssh_config's ``IdentityFile``, else the default files); with
``IdentitiesOnly yes`` only the agent keys matching those files. Nothing ever prompts:
an encrypted key that ssh-agent does not hold is skipped and the failure says so.
"""

from __future__ import annotations

import base64
import getpass
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import paramiko
from paramiko.auth_strategy import AuthStrategy, InMemoryPrivateKey

from deploytools.errors import ConfigError

USER_CONFIG = "~/.ssh/config"
SYSTEM_CONFIG = "/etc/ssh/ssh_config"
# OpenSSH's default identities, in its order (ssh(1), -i)
DEFAULT_KEYS = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_dsa")
_HOP_RE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s]+)(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class Endpoint:
    """One SSH server to authenticate to: a target or a jump host."""

    name: str  # as the user wrote it (alias, address or hop spec), for messages
    hostname: str
    port: int
    user: str
    identities: tuple[str, ...]
    identities_only: bool = False
    jumps: tuple[Endpoint, ...] = ()  # hops in order, the first connected directly
    proxy_command: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def where(self) -> str:
        """user@host:port, naming the alias too when it differs."""
        written = re.sub(r":\d+$", "", self.name.rsplit("@", 1)[-1]).strip("[]")
        alias = f" ({written})" if written != self.hostname else ""
        return f"{self.user}@{self.hostname}:{self.port}{alias}"

    @property
    def spec(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def key(self) -> tuple[str, str, int]:
        """What makes two hops the same connection."""
        return (self.user, self.hostname, self.port)


# --------------------------------------------------------------------------- ssh_config


@lru_cache(maxsize=16)
def _parse_files(paths: tuple[str, ...], stamps: tuple[float, ...]) -> paramiko.SSHConfig:
    config = paramiko.SSHConfig()
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                config.parse(fh)
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError, paramiko.ssh_exception.ConfigParseError) as exc:
            raise ConfigError(f"cannot read ssh_config {path}: {exc}") from None
    return config


def load_ssh_config(setting: str | bool | None) -> paramiko.SSHConfig:
    """The ssh_config in force: `ssh.config: PATH` alone (like `ssh -F`), none for
    `false`, else the user's then the system's file (first value wins, as in OpenSSH)."""
    if setting is False:
        paths: tuple[str, ...] = ()
    elif isinstance(setting, str):
        paths = (os.path.expanduser(setting),)
    else:
        paths = (os.path.expanduser(USER_CONFIG), SYSTEM_CONFIG)
    stamps = tuple(os.stat(p).st_mtime if os.path.exists(p) else 0.0 for p in paths)
    return _parse_files(paths, stamps)


def _local_user() -> str:
    return getpass.getuser()


def _none(value: str | None) -> str | None:
    """ssh_config's `none` switches a setting off."""
    return None if value is None or value.strip().lower() == "none" else value


def resolve(address: str, port: int | None, user: str | None,
            ssh: Mapping[str, Any]) -> Endpoint:
    """The target endpoint of an inventory host, with its jump hosts resolved."""
    config = load_ssh_config(ssh.get("config"))
    options = config.lookup(address)
    inventory_keys = tuple(ssh.get("identity") or ())
    explicit_jumps = ssh.get("proxy_jump")
    if explicit_jumps is not None:
        jump_specs = tuple(explicit_jumps)
        proxy_command = None
    else:
        jump_value = _none(options.get("proxyjump"))
        jump_specs = tuple(h.strip() for h in jump_value.split(",")) if jump_value else ()
        proxy_command = None if jump_specs else _none(options.get("proxycommand"))
    jumps = tuple(_resolve_hop(spec, config, inventory_keys) for spec in jump_specs)
    return Endpoint(
        name=address,
        hostname=options.get("hostname", address),
        port=port or int(options.get("port", 22)),
        user=user or options.get("user") or _local_user(),
        identities=inventory_keys or tuple(options.get("identityfile", ())),
        identities_only=options.get("identitiesonly", "no").lower() == "yes",
        jumps=jumps,
        proxy_command=proxy_command,
        options=options,
    )


def _resolve_hop(spec: str, config: paramiko.SSHConfig,
                 inventory_keys: tuple[str, ...]) -> Endpoint:
    """A jump host "[user@]host[:port]": what the spec gives wins, then ssh_config for
    that host. Its keys are ssh_config's IdentityFile for it, then the inventory's."""
    match = _HOP_RE.match(spec)
    if not match:
        raise ConfigError(f"ProxyJump {spec!r}: expected [user@]host[:port]")
    host = match["host"].strip("[]")
    options = config.lookup(host)
    keys = tuple(options.get("identityfile", ()))
    keys += tuple(k for k in inventory_keys if k not in keys)
    return Endpoint(
        name=spec,
        hostname=options.get("hostname", host),
        port=int(match["port"] or options.get("port", 22)),
        user=match["user"] or options.get("user") or _local_user(),
        identities=keys,
        identities_only=options.get("identitiesonly", "no").lower() == "yes",
        options=options,
    )


# --------------------------------------------------------------------------- auth


class AccessDenied(paramiko.AuthenticationException):
    """Every offered key was refused: says which, for whom and where, in one line."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass
class _KeyFile:
    path: str
    pkey: paramiko.PKey | None = None
    public: paramiko.PKey | None = None  # from the .pub beside an encrypted key
    problem: str | None = None  # why it cannot be used on its own


def _load_key(path: str) -> _KeyFile:
    entry = _KeyFile(path)
    try:
        entry.pkey = paramiko.PKey.from_path(path)
        return entry
    except paramiko.PasswordRequiredException:
        entry.problem = "encrypted"
    except TypeError as exc:  # cryptography's word for an encrypted OpenSSH-format key
        if "password" not in str(exc).lower():
            raise
        entry.problem = "encrypted"
    except FileNotFoundError:
        entry.problem = "not found"
        return entry
    except (OSError, paramiko.SSHException, ValueError) as exc:
        entry.problem = f"unreadable ({exc})"
    entry.public = _public_key(path + ".pub")
    return entry


def _public_key(path: str) -> paramiko.PKey | None:
    """The key in an OpenSSH .pub file, to match an encrypted key with the agent's."""
    try:
        with open(path, encoding="ascii") as fh:
            keytype, blob = fh.read().split()[:2]
        return paramiko.PKey.from_type_string(keytype, base64.b64decode(blob))
    except (OSError, ValueError, paramiko.SSHException, UnicodeDecodeError):
        return None


def _same(a: paramiko.PKey | None, b: paramiko.PKey) -> bool:
    """Same public key (AgentKey and file keys do not compare with ==)."""
    return a is not None and a.asbytes() == b.asbytes()


def _held(key: paramiko.PKey | None, agent: list[paramiko.AgentKey]) -> bool:
    return any(_same(key, k) for k in agent)


def _label(key: paramiko.PKey) -> str:
    return f"{key.algorithm_name} {key.fingerprint}"


class KeyAuth(AuthStrategy):
    """OpenSSH's order: agent keys (those named by a key file first), then key files.
    Never a password or a prompt. Records what was tried for the failure message."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(ssh_config=endpoint.options)
        self.endpoint = endpoint
        self.tried: list[str] = []
        self.notes: list[str] = []
        self.allowed: list[str] | None = None

    def _files(self) -> list[_KeyFile]:
        paths = list(self.endpoint.identities)
        explicit = bool(paths)
        if not paths:
            paths = [os.path.expanduser(f"~/.ssh/{name}") for name in DEFAULT_KEYS]
        files = [_load_key(p) for p in paths]
        if not explicit:
            files = [f for f in files if f.problem != "not found"]
        return files

    def _agent_keys(self) -> list[paramiko.AgentKey]:
        if not os.environ.get("SSH_AUTH_SOCK"):
            self.notes.append("no ssh-agent (SSH_AUTH_SOCK unset)")
            return []
        try:
            self._agent = paramiko.Agent()
            keys = list(self._agent.get_keys())
        except (paramiko.SSHException, OSError) as exc:
            self.notes.append(f"ssh-agent unusable: {exc}")
            return []
        if not keys:
            self.notes.append("ssh-agent holds no keys")
        return keys

    def get_sources(self) -> Iterator[Any]:
        user = self.endpoint.user
        files = self._files()
        agent = self._agent_keys()
        publics = [f.pkey or f.public for f in files]
        named = [k for k in agent if any(_same(p, k) for p in publics)]
        others = [] if self.endpoint.identities_only else [k for k in agent if k not in named]
        for key in named + others:
            self.tried.append(f"ssh-agent key {_label(key)}")
            yield InMemoryPrivateKey(username=user, pkey=key)
        for entry in files:
            if entry.pkey is not None:
                if _held(entry.pkey, agent):
                    continue  # the same key, already offered through the agent
                self.tried.append(f"key file {entry.path} ({_label(entry.pkey)})")
                yield InMemoryPrivateKey(username=user, pkey=entry.pkey)
            elif entry.problem == "encrypted":
                if not _held(entry.public, agent):
                    self.notes.append(
                        f"key file {entry.path} is encrypted and ssh-agent does not hold it "
                        "(nothing prompts: ssh-add it first, or use an unencrypted deploy key)")
            else:
                self.notes.append(f"key file {entry.path} {entry.problem}")

    def authenticate(self, transport: paramiko.Transport) -> Any:
        try:
            transport.auth_none(self.endpoint.user)
            return []  # the server let us in without credentials
        except paramiko.BadAuthenticationType as exc:
            self.allowed = list(exc.allowed_types)
        except paramiko.AuthenticationException:
            pass
        if self.allowed is not None and "publickey" not in self.allowed:
            sources: list[Any] = []
        else:
            sources = list(self.get_sources())
        try:
            for source in sources:
                try:
                    return source.authenticate(transport)
                except paramiko.BadAuthenticationType as exc:
                    self.allowed = list(exc.allowed_types)
                except paramiko.AuthenticationException:
                    continue
                except paramiko.SSHException as exc:
                    self.notes.append(f"{source}: {exc}")
        finally:
            agent = getattr(self, "_agent", None)
            if agent is not None:
                agent.close()
        raise AccessDenied(self.describe())

    def describe(self) -> str:
        """authentication failed for user U at host:port: server accepts ...; tried ..."""
        parts = [f"authentication failed for user {self.endpoint.user} at "
                 f"{self.endpoint.hostname}:{self.endpoint.port}"]
        if self.allowed is not None:
            parts.append(f"server accepts: {', '.join(self.allowed) or 'nothing'}")
        if self.tried:
            parts.append(f"tried {', '.join(self.tried)} (all refused)")
        elif not self.endpoint.identities:
            parts.append("no key to offer (no ssh.identity, no ssh_config IdentityFile, "
                         "no ~/.ssh/id_* file)")
        else:
            parts.append("no usable key")
        parts.extend(self.notes)
        return "; ".join(parts)
