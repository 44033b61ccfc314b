"""Inventory: YAML in, validated and typed `Host` objects out.

The inventory is the one file an operator edits, so every mistake in it must be
reported as a single line naming the file, the key path
(``groups.prod.hosts.web1.port``) and what was expected, before anything touches
a host. Settings merge host > group vars > defaults; maps merge key by key,
everything else is replaced.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploytools.errors import ConfigError, InventoryError

DEFAULT_INVENTORY = "inventory.yaml"
INVENTORY_ENV = "DEPLOYTOOLS_INVENTORY"

BYTECODE_MODES = ("precompile", "clear", "off")
PYC_INVALIDATION_MODES = ("checked-hash", "timestamp", "unchecked-hash")
SYSTEM_DIRS = frozenset([
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root",
    "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local",
    "/var", "/var/lib", "/var/www",
])
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- schema
# A validator takes (value, key path) and returns the cleaned value or raises
# _Invalid(expectation). The schema is data, so the example inventory, the
# validation and the error messages cannot drift apart.


class _Invalid(Exception):
    def __init__(self, expected: str, path: str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.path = path


Validator = Callable[[Any, str], Any]


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid(f"expected a non-empty string, got {_describe(value)}")
    return value


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_describe(value)}")
    return value


def _integer(low: int, high: int) -> Validator:
    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Invalid(f"expected an integer from {low} to {high}, got {_describe(value)}")
        return value

    return check


def _number(low: float, high: float) -> Validator:
    def check(value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            low <= value <= high
        ):
            raise _Invalid(f"expected a number from {low} to {high}, got {_describe(value)}")
        return float(value)

    return check


def _choice(*options: str) -> Validator:
    def check(value: Any, path: str) -> str:
        if value not in options:
            raise _Invalid(f"expected one of {', '.join(options)}, got {_describe(value)}")
        return value

    return check


def _list_of(item: Validator) -> Validator:
    def check(value: Any, path: str) -> tuple:
        if isinstance(value, str) or not isinstance(value, list):
            raise _Invalid(f"expected a list, got {_describe(value)}")
        return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))

    return check


def _identity(value: Any, path: str) -> tuple[str, ...]:
    """ssh.identity: one private key file or a list of them (tried in order)."""
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise _Invalid(f"expected a key file path or a list of them, got {_describe(value)}")


_JUMP_RE = re.compile(r"^(?:[A-Za-z0-9_.][A-Za-z0-9_.-]*@)?[A-Za-z0-9_.:\[\]-]+?(?::\d{1,5})?$")


def _ssh_config_setting(value: Any, path: str) -> str | bool:
    """ssh.config: a path to an ssh_config file (used alone, like `ssh -F`), or false to
    read none; unset reads ~/.ssh/config and /etc/ssh/ssh_config as OpenSSH does."""
    if value is False:
        return False
    if not isinstance(value, str) or not value:
        raise _Invalid(f"expected a path to an ssh_config file or false, got {_describe(value)}")
    return value


def _proxy_jump(value: Any, path: str) -> tuple[str, ...]:
    """ssh.proxy_jump: "[user@]host[:port]" or a list of them (first hop first); false or
    [] means a direct connection even if ssh_config names a ProxyJump."""
    if value is False:
        return ()
    hops = [value] if isinstance(value, str) else value
    if not isinstance(hops, list):
        raise _Invalid(f"expected \"[user@]host[:port]\" or a list of them, got {_describe(value)}")
    for index, hop in enumerate(hops):
        if not isinstance(hop, str) or not _JUMP_RE.match(hop):
            where = path if isinstance(value, str) else f"{path}[{index}]"
            raise _Invalid(f"expected \"[user@]host[:port]\", got {_describe(hop)}", where)
    return tuple(hops)


def _absolute_path(value: Any, path: str) -> str:
    text = _string(value, path)
    if not text.startswith("/"):
        raise _Invalid(f"expected an absolute path, got {_describe(value)}")
    if any(part == ".." for part in text.split("/")):
        raise _Invalid(f"expected a path without '..', got {_describe(value)}")
    if "\n" in text or "\0" in text:
        raise _Invalid("expected a path without newlines or NUL bytes")
    return text


def normalise_path(text: str) -> str:
    """An absolute path in one canonical spelling: `//etc`, `/./etc` and `/etc/.` are all
    `/etc` (normpath alone keeps a leading `//`, which POSIX leaves implementation-defined).
    Guards compare this, never the spelling a user typed."""
    return posixpath.normpath("/" + text.lstrip("/"))


def _deploy_to(value: Any, path: str) -> str:
    text = normalise_path(_absolute_path(value, path))
    if text in SYSTEM_DIRS:
        raise _Invalid(f"expected a dedicated directory, not the system directory {text!r}")
    return text


def _relative_path(value: Any, path: str) -> str:
    text = _string(value, path)
    parts = text.split("/")
    if text.startswith("/") or any(p in ("..", "") for p in parts) or "\0" in text:
        raise _Invalid(f"expected a relative path inside the release, got {_describe(value)}")
    return text


def _scalar_map(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise _Invalid(f"expected a mapping, got {_describe(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or isinstance(item, (dict, list)) or item is None:
            raise _Invalid(
                f"expected a mapping of names to strings/numbers, got {_describe({key: item})}",
                f"{path}.{key}",
            )
    return dict(value)


Schema = Mapping[str, Any]  # key -> Validator or nested Schema

SOURCE_SCHEMA: Schema = {
    "repo": _string,
    "ref": _string,
    "path": _string,
    "exclude": _list_of(_string),
}
SUPERVISOR_SCHEMA: Schema = {
    "programs": _list_of(_string),
    "sudo": _boolean,
    "conf": _absolute_path,
    "serverurl": _string,
    "supervisorctl": _string,
    "stop_timeout": _number(1, 3600),
    "start_timeout": _number(1, 3600),
}
HEALTH_SCHEMA: Schema = {
    "url": _string,
    "expect_status": _integer(100, 599),
    "expect_json": _scalar_map,
    "expect_text": _string,
    "timeout": _number(0.1, 3600),
    "interval": _number(0.01, 600),
    "request_timeout": _number(0.1, 600),
}
SSH_SCHEMA: Schema = {
    "user": _string,
    "port": _integer(1, 65535),
    "identity": _identity,
    "known_hosts": _string,
    "config": _ssh_config_setting,
    "proxy_jump": _proxy_jump,
    "connect_timeout": _number(0.1, 600),
    "command_timeout": _number(1, 86400),
    "host_timeout": _number(1, 7 * 86400),
    "accept_new_host_keys": _boolean,
}
HOOK_POINTS = ("after_prepare", "before_switch", "after_switch", "after_restart",
               "after_rollback", "after_failure", "before_restart")


def _hook(value: Any, path: str) -> Any:
    """A hook is a shell command, or {run, run_once, timeout}."""
    if isinstance(value, str) and value:
        return value
    hook = _validate(value, {"run": _string, "run_once": _boolean, "timeout": _number(1, 86400)},
                     path)
    if "run" not in hook:
        raise _Invalid("expected a shell command, or a mapping with 'run'", path)
    return hook


SHARED_SCHEMA: Schema = {"files": _list_of(_relative_path), "dirs": _list_of(_relative_path)}
HOOKS_SCHEMA: Schema = {point: _list_of(_hook) for point in HOOK_POINTS}
VENV_SCHEMA: Schema = {
    "requirements": _relative_path,
    "pip_args": _list_of(_string),
    "use_uv": _boolean,
}
BALANCER_SCHEMA: Schema = {  # the built-in HAProxy drain (deploytools/balancer.py)
    "haproxy": {"socket": _string, "via": _string, "backend": _string, "server": _string},
    "drain_timeout": _number(0, 86400),
    "ready_timeout": _number(0, 86400),
}
SETTINGS_SCHEMA: Schema = {
    "deploy_to": _deploy_to,
    "keep_releases": _integer(1, 1000),
    "python": _string,
    "bytecode": _choice(*BYTECODE_MODES),
    "pyc_invalidation": _choice(*PYC_INVALIDATION_MODES),
    "source": SOURCE_SCHEMA,
    "supervisor": SUPERVISOR_SCHEMA,
    "health": HEALTH_SCHEMA,
    "ssh": SSH_SCHEMA,
    "lock_expiry": _number(1, 7 * 86400),
    "shared": SHARED_SCHEMA,
    "hooks": HOOKS_SCHEMA,
    "venv": VENV_SCHEMA,
    "balancer": BALANCER_SCHEMA,
}
# Privilege: `become: true` runs the whole agent through `sudo -n` (as become_user).
BECOME_SCHEMA: Schema = {"become": _boolean, "become_user": _string}
SETTINGS_SCHEMA = {**SETTINGS_SCHEMA, **BECOME_SCHEMA}
_SUDO_DEPRECATED = ("warning: supervisor.sudo is deprecated: it runs the whole agent as root; "
                    "write `become: true` at the top of the inventory instead (or give the "
                    "deploy user the supervisor socket, or sudo for supervisorctl only)")
_warned_sudo = False
def _address(value: Any, path: str) -> str:
    """An address or DNS name alone: `10.0.0.1:2222` and `deploy@web1` would pass as
    strings and only fail at connect, so they are refused here with what to write."""
    text = _string(value, path)
    user, at, rest = text.rpartition("@")
    if at:
        raise _Invalid(f"expected an address without a user, got {text!r}: "
                       f"write host: {rest} and user: {user}")
    port = re.match(r"^\[?([^\[\]:]+|[0-9A-Fa-f:]+)\]?:(\d+)$", text)
    if port and (text.startswith("[") or text.count(":") == 1):
        raise _Invalid(f"expected an address without a port, got {text!r}: "
                       f"write host: {port.group(1)} and port: {port.group(2)}")
    return text


HOST_SCHEMA: Schema = {"host": _address, "port": _integer(1, 65535), "user": _string}
HOST_SCHEMA = {**HOST_SCHEMA, **SETTINGS_SCHEMA}

DEFAULT_SETTINGS: dict[str, Any] = {
    "keep_releases": 5,
    "python": "python3",
    "bytecode": "precompile",
    "pyc_invalidation": "checked-hash",
    "source": {"ref": "HEAD", "exclude": ()},
    "supervisor": {"programs": (), "sudo": False, "stop_timeout": 60, "start_timeout": 60},
    "health": {"expect_status": 200, "timeout": 30.0, "interval": 1.0, "request_timeout": 5.0},
    "ssh": {  # no port: one given nowhere is ssh_config's, else 22 (see deploytools/access.py)
        "connect_timeout": 10.0,
        "command_timeout": 900.0,
        "host_timeout": 3600.0,
        "accept_new_host_keys": False,
    },
    "lock_expiry": 3600.0,
    "shared": {"files": (), "dirs": ()},
    "hooks": {},
}


def _validate(data: Any, schema: Schema, path: str) -> dict:
    """Check a mapping against a schema; unknown keys are errors (typos must not pass)."""
    if not isinstance(data, dict):
        raise _Invalid(f"expected a mapping, got {_describe(data)}", path)
    clean: dict[str, Any] = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        rule = schema.get(key) if isinstance(key, str) else None
        if rule is None:
            known = ", ".join(sorted(schema))
            raise _Invalid(f"unknown key {key!r} (known keys: {known})", key_path)
        try:
            if isinstance(rule, Mapping):
                clean[key] = _validate(value, rule, key_path)
            else:
                clean[key] = rule(value, key_path)
        except _Invalid as exc:
            if exc.path is None:
                exc.path = key_path
            raise
    return clean


def merge_settings(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge settings: nested maps merge key by key, other values replace."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Host:
    """One host of the inventory with its fully merged settings."""

    name: str
    address: str  # as written in the inventory: an address, a DNS name or an ssh_config alias
    port: int | None  # None: not set in the inventory (ssh_config's Port, else 22)
    user: str | None
    groups: tuple[str, ...]
    settings: Mapping[str, Any] = field(repr=False)

    @property
    def deploy_to(self) -> str:
        return self.settings["deploy_to"]

    @property
    def python(self) -> str:
        return self.settings["python"]

    def get(self, dotted: str, default: Any = None) -> Any:
        """Read a setting by dotted path, e.g. ``host.get("health.url")``."""
        node: Any = self.settings
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node


@dataclass(frozen=True)
class Inventory:
    """The parsed inventory: every host by name, and group memberships in file order."""

    file: str
    hosts: dict[str, Host]
    groups: dict[str, tuple[str, ...]]

    def select(self, spec: str | None) -> list[Host]:
        """Resolve ``--hosts``: ``all``, a group name, host names, or a comma list of both."""
        if not spec:
            raise ConfigError(
                f"no hosts selected: pass --hosts with one of: all, {self._known_names()}"
            )
        chosen: dict[str, Host] = {}
        for token in (t.strip() for t in spec.split(",")):
            if not token:
                continue
            if token == "all":
                names: tuple[str, ...] = tuple(self.hosts)
            elif token in self.groups:
                names = self.groups[token]
            elif token in self.hosts:
                names = (token,)
            else:
                raise ConfigError(
                    f"{self.file}: unknown host or group {token!r} "
                    f"(known: all, {self._known_names()})"
                )
            for name in names:
                chosen[name] = self.hosts[name]
        if not chosen:
            raise ConfigError(f"--hosts {spec!r} selects no host")
        return list(chosen.values())

    def _known_names(self) -> str:
        groups = ", ".join(f"{g} (group)" for g in self.groups)
        return ", ".join(filter(None, [groups, ", ".join(self.hosts)]))


def inventory_path(path: str | os.PathLike[str] | None) -> Path:
    """The inventory to use: the flag, else $DEPLOYTOOLS_INVENTORY, else ./inventory.yaml."""
    return Path(path or os.environ.get(INVENTORY_ENV) or DEFAULT_INVENTORY)


# libyaml's safe loader where PyYAML has it: the pure-Python one took 1.1 CPU-s per pass
# over a 200-host inventory, and a run reads its inventory twice.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_inventory(path: str | os.PathLike[str] | None = None) -> Inventory:
    """Read, validate and merge an inventory file."""
    file = inventory_path(path)
    name = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError(
            name,
            "",
            "inventory file not found (pass --inventory PATH or set "
            f"{INVENTORY_ENV}; see inventory.example.yaml)",
        ) from None
    except OSError as exc:
        raise InventoryError(name, "", f"cannot read inventory: {exc.strerror}") from None
    try:
        _refuse_duplicate_keys(name, yaml.compose(text, Loader=YAML_LOADER))
        data = yaml.load(text, Loader=YAML_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise InventoryError(name, "", f"{where}{problem}") from None
    return parse_inventory(data, name, base_dir=file.resolve().parent)


def _refuse_duplicate_keys(file: str, node: Any, path: str = "") -> None:
    """YAML lets a later key silently win over an earlier one (a second `deploy_to:`
    deploys somewhere else than the reader sees); an inventory must say it once."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            where = f"{path}.{key}" if path else str(key)
            if key is not None and key != "<<":
                if key in seen:
                    raise InventoryError(file, where, f"duplicate key (line {line}; first "
                                         f"on line {seen[key]}): say it once")
                seen[key] = line
            _refuse_duplicate_keys(file, value_node, where)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(file, item, f"{path}[{index}]")


def parse_inventory(
    data: Any, file: str = "<inventory>", base_dir: Path | None = None
) -> Inventory:
    """Validate an already-loaded inventory document."""
    try:
        return _parse(data, file, base_dir or Path.cwd())
    except _Invalid as exc:
        raise InventoryError(file, exc.path or "", exc.expected) from None


def _parse(data: Any, file: str, base_dir: Path) -> Inventory:
    raw_groups, defaults = _top_level(data)
    listing = _Listing()
    for group_name, group in raw_groups.items():
        listing.add_group(group_name, group)
    hosts: dict[str, Host] = {}
    for host_name, (entry, group_vars) in listing.entries.items():
        groups = tuple(listing.host_groups[host_name])
        hpath = f"groups.{groups[0]}.hosts.{host_name}"
        if not entry:
            raise _Invalid("host is listed but never defined with at least 'host'", hpath)
        layers = [group_vars, *listing.listed_vars.get(host_name, ()),
                  {k: v for k, v in entry.items() if k not in ("host", "port", "user")}]
        settings = _host_settings(defaults, layers, base_dir, hpath)
        _check_host(entry, settings, hpath)
        hosts[host_name] = Host(
            name=host_name,
            address=entry["host"],
            port=entry.get("port", settings["ssh"].get("port")),
            user=entry.get("user", settings["ssh"].get("user")),
            groups=groups,
            settings=settings,
        )
    _warn_deprecated_sudo(hosts.values())
    return Inventory(file=file, hosts=hosts, groups=listing.groups)


def _top_level(data: Any) -> tuple[dict[Any, Any], dict[str, Any]]:
    """The file's groups, and the defaults every host starts from (built-in defaults,
    then top-level `ssh` and become settings, then `defaults`)."""
    if data is None:
        raise _Invalid("the inventory is empty: expected a mapping with 'groups'")
    top = _validate(
        data,
        {"defaults": SETTINGS_SCHEMA, "ssh": SSH_SCHEMA, "groups": lambda v, p: v,
         **BECOME_SCHEMA},
        "",
    )
    raw_groups = top.get("groups")
    if not isinstance(raw_groups, dict) or not raw_groups:
        raise _Invalid("expected a mapping of group names to {vars, hosts}", "groups")
    defaults = merge_settings(DEFAULT_SETTINGS, {"ssh": top.get("ssh", {})})
    defaults = merge_settings(defaults, {k: top[k] for k in BECOME_SCHEMA if k in top})
    defaults = merge_settings(defaults, top.get("defaults", {}))
    return raw_groups, defaults


@dataclass
class _Listing:
    """What the groups say about hosts, in file order, before any settings are merged:
    a host is defined (with its settings) in one group and may be listed by name in
    others."""

    entries: dict[str, tuple[dict, dict]] = field(default_factory=dict)  # (entry, its vars)
    host_groups: dict[str, list[str]] = field(default_factory=dict)
    listed_vars: dict[str, list[dict]] = field(default_factory=dict)  # of groups listing it
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def add_group(self, group_name: Any, group: Any) -> None:
        gpath = f"groups.{group_name}"
        if not isinstance(group_name, str) or not _NAME_RE.match(group_name) or group_name == "all":
            raise _Invalid("expected a group name of letters, digits, '_', '.', '-' (not 'all')",
                           gpath)
        group = _validate(group or {}, {"vars": SETTINGS_SCHEMA, "hosts": lambda v, p: v}, gpath)
        members = group.get("hosts") or {}
        if isinstance(members, list):  # a list of names of hosts defined in another group
            members = {m: None for m in members}
        if not isinstance(members, dict):
            raise _Invalid("expected a mapping of host names to host settings", f"{gpath}.hosts")
        for host_name, entry in members.items():
            self._add_host(group_name, group, host_name, entry, f"{gpath}.hosts.{host_name}")
        self.groups[group_name] = tuple(members)

    def _add_host(self, group_name: str, group: dict, host_name: Any, entry: Any,
                  hpath: str) -> None:
        if not isinstance(host_name, str) or not _NAME_RE.match(host_name):
            raise _Invalid("expected a host name of letters, digits, '_', '.', '-'", hpath)
        if entry is not None:
            entry = _validate(entry, HOST_SCHEMA, hpath)
            if host_name in self.entries and self.entries[host_name][0]:
                raise _Invalid("host is defined twice (list it by name in other groups)", hpath)
            self.entries[host_name] = (entry, group.get("vars", {}))
        else:
            self.entries.setdefault(host_name, ({}, {}))
            if group.get("vars"):  # listing a host by name still applies the vars
                self.listed_vars.setdefault(host_name, []).append(group["vars"])
        self.host_groups.setdefault(host_name, []).append(group_name)


def _host_settings(defaults: dict[str, Any], layers: list[Mapping[str, Any]], base_dir: Path,
                   hpath: str) -> dict[str, Any]:
    """`defaults` merged with each layer in turn (the defining group's vars, those of
    groups listing the host, the host's own settings), paths resolved against the
    inventory's directory."""
    settings = dict(defaults)  # its maps are replaced, never changed in place
    for layer in layers:
        settings = merge_settings(settings, layer)
    settings["ssh"] = _resolve_paths(settings["ssh"], ("identity", "known_hosts", "config"),
                                     base_dir)
    _check_ssh_config_file(settings["ssh"], f"{hpath}.ssh.config")
    settings["source"] = _resolve_paths(settings["source"], ("path", "repo"), base_dir)
    return settings


def _check_host(entry: dict, settings: dict[str, Any], hpath: str) -> None:
    """What a host cannot be deployed without, checked once its settings are merged."""
    for required in ("deploy_to",):
        if required not in settings:
            raise _Invalid(f"missing required setting {required!r} "
                           "(set it in defaults, group vars or the host)", hpath)
    if "host" not in entry:
        raise _Invalid("missing required key 'host' (address or DNS name)", hpath)
    if not settings["supervisor"].get("programs"):
        raise _Invalid("missing supervisor.programs (the programs to restart)",
                       f"{hpath}.supervisor.programs")
    if "venv" in settings and not settings["venv"].get("requirements"):
        raise _Invalid("missing venv.requirements (the requirements file in the release)",
                       f"{hpath}.venv")
    source = settings["source"]
    if bool(source.get("repo")) == bool(source.get("path")):
        raise _Invalid("expected exactly one of source.repo (git) or source.path (directory)",
                       f"{hpath}.source")


def _warn_deprecated_sudo(hosts: Iterable[Host]) -> None:
    """`supervisor.sudo` still works (it means become), said once per process."""
    global _warned_sudo
    if not _warned_sudo and any(h.settings["supervisor"].get("sudo") for h in hosts):
        _warned_sudo = True
        sys.stderr.write(_SUDO_DEPRECATED + "\n")


def _resolve_paths(
    settings: Mapping[str, Any], keys: tuple[str, ...], base_dir: Path
) -> dict[str, Any]:
    """Make local paths absolute: relative to the inventory file, with ~ expanded.

    A git URL (``https://...``, ``git@host:repo``) is left alone.
    """
    resolved = dict(settings)
    for key in keys:
        value = resolved.get(key)
        if isinstance(value, tuple):  # a list of paths (ssh.identity)
            resolved[key] = tuple(_resolve_path(v, base_dir) for v in value)
        elif isinstance(value, str) and value:
            resolved[key] = _resolve_path(value, base_dir)
    return resolved


def _resolve_path(value: str, base_dir: Path) -> str:
    if "://" in value or re.match(r"^[\w.-]+@[\w.-]+:", value):
        return value
    path = Path(os.path.expanduser(value))
    return str(path if path.is_absolute() else base_dir / path)


def _check_ssh_config_file(ssh: Mapping[str, Any], path: str) -> None:
    """A named ssh_config must exist (OpenSSH refuses a missing -F file too)."""
    config = ssh.get("config")
    if isinstance(config, str) and not os.path.isfile(config):
        raise _Invalid(f"ssh_config file not found: {config}", path)
