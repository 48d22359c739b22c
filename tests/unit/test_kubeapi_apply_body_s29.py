"""A server-side apply body keeps characters past U+FFFF as themselves (the API server's YAML reader refuses their
surrogate-pair escapes) and every other non-ASCII character escaped (raw, YAML folds U+2028 and refuses C1 controls);
an escaped backslash before `u` is never taken for an escape."""

from __future__ import annotations

import json

import pytest

from controller.operator.kubeapi import apply_body


@pytest.mark.parametrize(("value", "written"), [
    ("nsfw 😀", '"nsfw 😀"'),
    ("\u2028é\x85", '"\\u2028\\u00e9\\u0085"'),
    ("a\\ud83d\\ude00", '"a\\\\ud83d\\\\ude00"'),  # the text of an escape, not an escape
    ("\\😀", '"\\\\😀"'),
    ("\U000e0001", '"\U000e0001"'),
    ("a\ud83d b", '"a\\ufffd b"'),  # a lone surrogate (review s29r6): refused escaped or raw
    ("\ude00\ud83d", '"\\ufffd\\ufffd"'),  # the wrong order is no pair
    ("\\ud83d", '"\\\\ud83d"'),  # the text of an escape
])
def test_apply_body_writes_only_astral_characters_raw(value: str, written: str) -> None:
    text = apply_body({"k": value})
    assert text == '{"k": ' + written + "}"
    lone = any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    assert json.loads(text) == {"k": "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)} \
        if lone else json.loads(text) == {"k": value}
