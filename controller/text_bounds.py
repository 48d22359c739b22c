"""Text from outside (a dependency's words, a judge's reason) cut to a size status can hold: etcd refuses a status
over 1.5 MiB with everything decided in it, a rollback included. Pure: no I/O."""

from __future__ import annotations

import hashlib
import re

# Characters kept of one dependency's words (an adapter's error, a serving system's condition) or of a verdict's
# reason in status: status copies them several times (message, retry, the action's ledger, history, a rollback's
# reason), and a webhook's refusal or a proxy's HTML page may take megabytes.
WORDS_MAX = 2048

_TEXT_CUT = re.compile(r"\.\.\.\[\d+ of (\d+) characters cut; sha256 ([0-9a-f]{16})\]\Z")


def cut_text(text: str, chars: int) -> str:
    """`text` in at most `chars` characters and a marker saying how many were cut, with the whole one's sha256."""
    if len(text) <= chars:
        return text
    length, digest = len(text), ""
    if earlier := _TEXT_CUT.search(text):  # cut before: its marker counts the whole string
        text, length, digest = text[:earlier.start()], int(earlier.group(1)), earlier.group(2)
    digest = digest or hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:chars]}...[{length - min(chars, len(text))} of {length} characters cut; sha256 {digest}]"
