"""Taking secrets out of what servers send back, before it reaches a message, a status or an Event."""

from __future__ import annotations

import base64
import contextlib
import json
import re
from typing import Any

# What replaces a URL's query and fragment (a token, a presigned URL's signature): the reader sees something was cut.
REDACTED_QUERY = "?<redacted>"
# A URL with an authority inside free text: up to a space, a quote or an angle bracket.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]*")


def redact_credentials(text: str, *, token: str | None = None, username: str | None = None,
                       password: str | None = None) -> str:
    """text with the token, the password and the base64 basic-auth pair replaced by ***.

    For anything a server sends back (error messages echo the Authorization header, proxies echo the
    request): shared by the registry adapter and the gate's MLflow client. The username is not a secret.
    """
    secrets = [value for value in (token, password) if value]
    if username and password:
        # What a server echoing the Authorization header would show of a basic-auth password: requests encodes
        # the pair as Latin-1 when it can (requests.auth._basic_auth_str), other clients as UTF-8.
        pair = f"{username}:{password}"
        for encoding in ("utf-8", "latin-1"):
            with contextlib.suppress(UnicodeEncodeError):  # not Latin-1: requests cannot send it at all
                secrets.append(base64.standard_b64encode(pair.encode(encoding)).decode())
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: no partial leftovers
        text = text.replace(secret, "***")
    return text


def without_userinfo(address: str) -> str:
    """The address with any user:password@ removed, for messages (they reach statuses and Events).

    Everything up to the last "@" goes: a password holding "#", "/" or "?" unencoded ends the URL's
    authority early for urlsplit, which would leave it in place. An "@" in a path costs the message its host.
    """
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    if "@" not in rest:
        return address
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


def redacted_url(url: str) -> str:
    """A URL fit to record (status, Events): without user:password@, its query and fragment replaced by
    REDACTED_QUERY. A URI without "://" (models:/m@alias, runs:/...) has no user info to take out."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    cut = min((at for at in (rest.find("?"), rest.find("#")) if at >= 0), default=len(rest))
    head, tail = rest[:cut], rest[cut:]
    if sep and "@" in tail and "@" not in head:
        # "user:pa?ss@host" or "host/p?mail=a@b": which one cannot be told, so nothing after the scheme is kept.
        return f"{scheme}{sep}<redacted>"
    kept = without_userinfo(f"{scheme}{sep}{head}") if sep else head
    return kept + (REDACTED_QUERY if tail else "")


def redact_urls(text: str) -> str:
    """text with every scheme://... URL in it passed through redacted_url. A JSON object or array is read first
    (an escaped "\\u0026" or "\\/" would hide a URL's parts from a plain search) and written again if changed."""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            decoded = json.loads(stripped)
            redacted = _redact_urls_in(decoded)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's (or our) depth
            pass
        else:
            return text if redacted == decoded else json.dumps(redacted, ensure_ascii=False)
    return _URL_IN_TEXT.sub(lambda found: redacted_url(found.group()), text)


def _redact_urls_in(value: Any) -> Any:
    if isinstance(value, str):
        return redact_urls(value)
    if isinstance(value, list):
        return [_redact_urls_in(item) for item in value]
    if isinstance(value, dict):
        return {key: _redact_urls_in(item) for key, item in value.items()}
    return value
