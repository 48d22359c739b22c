"""Taking secrets out of what servers send back, before it reaches a message, a status or an Event."""

from __future__ import annotations

import base64
import contextlib
import html
import json
import re
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

# What replaces a URL's query and fragment (a token, a presigned URL's signature): the reader sees something was cut.
REDACTED_QUERY = "?<redacted>"
# What replaces a text that still quotes a secret (or its start) once URL and HTML escapes are undone.
WITHHELD_MESSAGE = "<withheld: it quoted the credentials, escaped or in part>"
# A URL with an authority inside free text: up to a space, a quote or an angle bracket. Its scheme starts at the
# first letter of a run of scheme characters ("1https://" is "https://"); the run is tried from its start only
# (lookbehind), else every character of a long run is tried as a start: quadratic.
_URL_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+.-])(?P<lead>[0-9+.-]*)(?P<url>[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]*)")


# How much of a secret's start, quoted after a credential's scheme word, withholds a text: a gateway printing a
# header cut short shows its start.
_ECHOED_START = 8
_ECHOED_HEADER = r"(?i)(?:bearer|basic|token)[\s:=\"']+"


def _long_start(secret: str) -> str:
    """The start of a secret that, quoted anywhere, withholds a text: all but its last 3 characters, 12 to 16 of
    them (all of a shorter one). Shorter starts may be a word or the username that ordinary messages use."""
    return secret[:max(12, min(len(secret) - 3, 16))]


def redact_credentials(text: str, *, token: str | None = None, username: str | None = None,
                       password: str | None = None) -> str:
    """text with the token, the password and the base64 basic-auth pair replaced by ***, as they are or escaped
    (URL, HTML); a text still quoting one once its escapes are undone, most of its start (_long_start), or its
    first 8 characters after "Bearer", "Basic" or "token", is replaced whole (WITHHELD_MESSAGE).

    For anything a server sends back (error messages echo the Authorization header, proxies echo the
    request): shared by the registry adapter and the gate's MLflow client. The username is not a secret.
    """
    secrets = [value for value in (token, password) if value]
    if username and password:
        secrets.extend(basic_auth_pairs(username, password))
    forms = {form for secret in secrets for form in _escaped_forms(secret)}
    for form in sorted(forms, key=len, reverse=True):  # longest first: no partial leftovers
        text = text.replace(form, "***")
    # Escaped some other way (&#x2F; and %2b mixed), or cut short (a proxy printing a header's first characters):
    # no telling where it is. A short start counts only after a credential's scheme word: a password's first
    # characters may be a word (or the username) that ordinary messages use.
    echoed = [re.compile(_ECHOED_HEADER + re.escape(secret[:_ECHOED_START])) for secret in secrets]
    decoded_forms = _unescaped(text)
    if any(_long_start(secret) in decoded for decoded in decoded_forms for secret in secrets) or \
            any(header.search(decoded) for decoded in decoded_forms for header in echoed):
        return WITHHELD_MESSAGE
    return text


def _escaped_forms(secret: str) -> set[str]:
    """secret as a server echoing a header may show it: as it is, URL-encoded (with "/" kept or not, a space as
    %20 or "+", hex upper or lower case), HTML-escaped, and inside a JSON string (non-ASCII as \\uXXXX or not,
    "/" as "\\/" or not: PHP's json_encode escapes it)."""
    forms = {secret, html.escape(secret)}
    for ascii_only in (True, False):
        in_json = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        forms.update((in_json, in_json.replace("/", "\\/")))
    for safe in ("", "/"):
        for encoded in (quote(secret, safe=safe), quote_plus(secret, safe=safe)):
            forms.update((encoded, re.sub(r"%[0-9A-F]{2}", lambda found: found[0].lower(), encoded)))
    return forms


def _unescaped(text: str) -> set[str]:
    """text with URL, HTML and JSON string escapes undone, each way and in each order, two layers deep (a proxy's
    page quoting an encoded header is both); linear in the text, unlike a pattern allowing every escape of every
    character."""
    found = {text}
    layer = {text}
    for _ in range(2):
        layer = {undo(item) for item in layer
                 for undo in (unquote, unquote_plus, html.unescape, _json_unescaped)} - found
        found |= layer
    return found


_JSON_ESCAPE = re.compile(r'\\(?:u([0-9A-Fa-f]{4})|(["\\/bfnrt]))')
_JSON_SHORT_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _json_unescaped(text: str) -> str:
    """text with JSON string escapes undone wherever they are (an error body quoted whole, or in part), a
    surrogate pair (\\ud83d\\ude00) as its one character."""
    undone = _JSON_ESCAPE.sub(lambda found: chr(int(found[1], 16)) if found[1] else _JSON_SHORT_ESCAPES[found[2]],
                              text)
    return undone.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def basic_auth_pairs(username: str, password: str) -> list[str]:
    """What a server echoing the Authorization header would show of a basic-auth password: requests encodes
    the pair as Latin-1 when it can (requests.auth._basic_auth_str), other clients as UTF-8."""
    pairs = []
    for encoding in ("utf-8", "latin-1"):
        with contextlib.suppress(UnicodeEncodeError):  # not Latin-1: requests cannot send it at all
            pairs.append(base64.standard_b64encode(f"{username}:{password}".encode(encoding)).decode())
    return pairs


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
    REDACTED_QUERY. A URI without "://" (models:/m@alias, runs:/...) has no user info to take out.

    Only an "@" before the first "/" after "://" ends user info: one later is the path's (git+https://host/r.git@rev,
    hf://datasets/o/d@v2/f, s3://b/owner=a@b.com/k)."""
    scheme, sep, rest = url.partition("://")
    if sep:
        authority = rest.partition("/")[0]
        if "@" in authority[_query_start(authority):]:
            # "user:pa?ss@host" or "host?mail=a@b": which one cannot be told, so nothing after the scheme is kept.
            return f"{scheme}{sep}<redacted>"
        userinfo, at, host = authority.rpartition("@")
        rest = rest[len(userinfo) + len(at):]
        if not at and "@" in rest and not _plausible_host(host, scheme):
            # "user:pa/ss@host/x": a password with "/" reads as host "user" and port "pa" (or "2024", or "").
            return f"{scheme}{sep}<redacted>"
    else:
        scheme, rest = "", url
    cut = _query_start(rest)
    return f"{scheme}{sep}{rest[:cut]}" + (REDACTED_QUERY if cut < len(rest) else "")


def _plausible_host(authority: str, scheme: str) -> bool:
    """Whether an authority with no "@" reads as a host[:port]. For http(s) (git remotes carry user info) a host is
    dotted, bracketed IPv6 or localhost; other schemes name buckets and repos (s3://datalake/k@v) and take no user
    info, so only a non-numeric port is suspect there."""
    name, colon, port = authority.rpartition(":") if not authority.endswith("]") else (authority, "", "")
    if not colon:
        name, port = authority, ""
    if colon and not port.isdigit():
        return False
    if not scheme.lower().endswith(("http", "https")):
        return True
    return "." in name or name.startswith("[") or name.lower() == "localhost"


def _query_start(text: str) -> int:
    return min((at for at in (text.find("?"), text.find("#")) if at >= 0), default=len(text))


def redact_urls(text: str) -> str:
    """text with every scheme://... URL in it passed through redacted_url. A JSON object or array is read first
    (an escaped "\\u0026" or "\\/" would hide a URL's parts from a plain search) and written again if changed."""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        duplicated = False

        def as_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            # A duplicate key's earlier value is dropped by the decoder, unseen: the text is then written again.
            nonlocal duplicated
            kept = dict(pairs)
            duplicated = duplicated or len(kept) < len(pairs)
            return kept

        try:
            decoded = json.loads(stripped, object_pairs_hook=as_dict)
            redacted = _redact_urls_in(decoded)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's (or our) depth
            pass
        else:
            return text if redacted == decoded and not duplicated else json.dumps(redacted, ensure_ascii=False)
    return _URL_IN_TEXT.sub(lambda found: _redacted_in_text(found, text), text)


def _redacted_in_text(found: re.Match[str], text: str) -> str:
    redacted = redacted_url(found["url"])
    if found["url"].endswith("?") and text.startswith(REDACTED_QUERY[1:], found.end()):
        # Redacted already ("<" ends the match, leaving a bare "?"): the marker that follows is kept, not doubled.
        redacted = redacted.removesuffix(REDACTED_QUERY[1:])
    return found["lead"] + redacted


def _redact_urls_in(value: Any) -> Any:
    if isinstance(value, str):
        return redact_urls(value)
    if isinstance(value, list):
        return [_redact_urls_in(item) for item in value]
    if isinstance(value, dict):
        return {key: _redact_urls_in(item) for key, item in value.items()}
    return value
