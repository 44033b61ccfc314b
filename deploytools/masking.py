"""Secrets in URLs hidden before anything is printed, logged or stored on hosts."""

from __future__ import annotations

import re

_SECRET_QUERY = re.compile(r"(?i)([?&][^=&#\s]*(?:token|key|secret|password|passwd|auth|"
                           r"signature)[^=&#\s]*=)[^&#\s]*")
_URL_USERINFO = re.compile(r"(?i)(\w+://[^/:@\s]*:)[^@/\s]+@")  # user:pw@, :pw@
_URL_TOKEN_USER = re.compile(r"(?i)(https?://)[^/:@\s]+@")  # https://TOKEN@host
_WEBHOOK_PATH = re.compile(  # services that put the secret in the path
    r"(?i)((?:hooks\.slack\.com/(?:services|workflows|triggers)/|"
    r"discord(?:app)?\.com/api/webhooks/\d+/|/webhooks?/)[^\s\"'?#]*)")
_WEBHOOK_KEEP = re.compile(
    r"(?i)^(hooks\.slack\.com/(?:services|workflows|triggers)/|"
    r"discord(?:app)?\.com/api/webhooks/\d+/|/webhooks?/)")


def _mask_webhook(match: re.Match[str]) -> str:
    found = match.group(1)
    prefix = _WEBHOOK_KEEP.match(found)
    assert prefix is not None
    rest = found[prefix.end():]
    return prefix.group(1) + ("***" if rest else "")


def mask_secrets(text: str) -> str:
    """Hide passwords and tokens in URLs (userinfo, token-like query values, webhook
    paths that are themselves the secret): what is printed or logged may be shared."""
    text = _URL_TOKEN_USER.sub(r"\1***@", _URL_USERINFO.sub(r"\1***@", text))
    text = _WEBHOOK_PATH.sub(_mask_webhook, text)
    return _SECRET_QUERY.sub(r"\1***", text)


def strip_credentials(url: str) -> str:
    """`url` without its userinfo password or token (`https://user:token@h/x` ->
    `https://h/x`), so that what is stored on hosts never carries a credential. A plain
    user name (`ssh://git@h/x`, `git@h:x`) has no secret and is kept."""
    match = re.match(r"(?i)^(\w[\w+.-]*://)([^/@\s]*)@", url)
    if not match:
        return url
    userinfo = match.group(2)
    if ":" not in userinfo and not match.group(1).lower().startswith("http"):
        return url
    return match.group(1) + url[match.end():]


