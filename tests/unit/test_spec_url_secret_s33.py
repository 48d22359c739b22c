"""Review s33r4: a URL whose password holds an unencoded "/", "?" or "#" is no user:password@ to urlsplit, which
then quoted what it could not read as a port (part of the password) in the InvalidSpec message (status)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api import SpecError, parse_spec

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"


@pytest.mark.parametrize("url", ["http://alice:pw/SECRETX@h.example", "http://alice:pw?SECRETX@h.example",
                                 "http://alice:pw#SECRETX@h.example"])
def test_a_url_with_a_password_is_refused_without_quoting_it(url: str) -> None:
    spec: dict[str, Any] = copy.deepcopy(yaml.safe_load(SAMPLE.read_text())["spec"])
    spec.setdefault("registry", {})["trackingUri"] = url
    with pytest.raises(SpecError) as refused:
        parse_spec(spec)
    assert "spec.registry.trackingUri" in str(refused.value)
    assert "pw" not in str(refused.value) and "SECRETX" not in str(refused.value), str(refused.value)


def test_a_bad_port_without_an_at_sign_is_still_named() -> None:
    spec: dict[str, Any] = copy.deepcopy(yaml.safe_load(SAMPLE.read_text())["spec"])
    spec.setdefault("registry", {})["trackingUri"] = "http://h.example:port/"
    with pytest.raises(SpecError, match=r"is not a valid URL: .*port"):
        parse_spec(spec)
