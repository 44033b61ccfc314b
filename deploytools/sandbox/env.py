"""Constants and environment of the simulated hosts: paths, timeouts, who we run as."""

from __future__ import annotations

import os
import pwd
import re
import sys
from pathlib import Path

SAMPLE_APP_PORT = 8000
KEEP_FLEET_ENV = "DEPLOYTOOLS_KEEP_FLEET"
MAX_HOSTS = 200

# What sshd gives a root session; daemons get it too, so a host never sees the
# controller's environment (PYTHONDONTWRITEBYTECODE, virtualenv, proxies, ...).
_HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Paths go unquoted into sshd_config and supervisord.conf ('%' is expanded by supervisor,
# whitespace splits sshd arguments), so only accept characters that need no quoting.
_SAFE_PATH_RE = re.compile(r"^[\w./@+=:,~-]+$")
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
_SSHD_READY_TIMEOUT = 10.0
_SUPERVISORD_READY_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0


def _host_python() -> str:
    """The interpreter hosts use: a login over SSH gets a clean PATH, so Debian's python3."""
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _is_root() -> bool:
    return os.geteuid() == 0


def _login_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _daemon_env(home: Path) -> dict[str, str]:
    """A minimal environment like init gives daemons, so hosts do not inherit ours."""
    entry = pwd.getpwuid(os.geteuid())
    return {
        "PATH": _HOST_PATH,
        "HOME": str(home),
        "USER": entry.pw_name,
        "LOGNAME": entry.pw_name,
        "LANG": "C.UTF-8",
    }




def _check_path(path: Path, what: str) -> None:
    if not _SAFE_PATH_RE.match(str(path)):
        raise ValueError(
            f"{what} {str(path)!r} contains characters that sshd_config/supervisord.conf "
            "would misread (allowed: letters, digits and ./_@+=:,~-); use another root"
        )
