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
])
def test_apply_body_writes_only_astral_characters_raw(value: str, written: str) -> None:
    text = apply_body({"k": value})
    assert text == '{"k": ' + written + "}"
    assert json.loads(text) == {"k": value}
