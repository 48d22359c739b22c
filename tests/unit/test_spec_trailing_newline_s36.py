"""parse_spec refuses a trailing newline the CRD refuses (review s36crd): Python's `$` also matches before a final
newline, so "10m\n" was a duration and a sha256 kept its newline (then failed as a changed dataset, not a bad spec)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from test_spec_crd_parity import SAMPLE, _set

from controller.api import SpecError, parse_spec
from controller.api.durations import parse_duration
from controller.gate.sources import SourcePolicyError, parse_config_map_uri
from controller.registry.base import RegistryConfigError, _check_alias

Spec = dict[str, Any]

CASES: list[tuple[str, Callable[[Spec], None], str]] = [
    ("interval", _set("analysis", "interval", value="30s\n"), "spec.analysis.interval"),
    ("deadline", _set("progressDeadline", value="30m\n"), "spec.progressDeadline"),
    ("pause", _set("canary", "steps", 1, value={"pause": {"duration": "10m\n"}}), "spec.canary.steps[1]"),
    ("sha256", _set("goldenDataset", "sha256", value="ab" * 32 + "\n"), "spec.goldenDataset.sha256"),
]


@pytest.mark.parametrize(("case", "mutate", "field"), CASES, ids=[case for case, _, _ in CASES])
def test_a_trailing_newline_is_refused_naming_the_field(case: str, mutate: Callable[[Spec], None], field: str) -> None:
    spec: Spec = yaml.safe_load(SAMPLE.read_text())["spec"]
    parse_spec(spec)  # the sample parses
    mutate(spec)
    with pytest.raises(SpecError) as refused:
        parse_spec(spec)
    assert refused.value.path.startswith(field), refused.value


def test_a_duration_with_a_trailing_newline_is_not_a_duration() -> None:
    with pytest.raises(ValueError):
        parse_duration("10m\n")
    assert parse_duration("10m").total_seconds() == 600


def test_a_config_map_uri_with_a_trailing_newline_is_refused() -> None:
    assert parse_config_map_uri("configmap://golden/set.jsonl") == ("golden", "set.jsonl")
    with pytest.raises(SourcePolicyError):
        parse_config_map_uri("configmap://golden/set.jsonl\n")


def test_an_alias_with_a_trailing_newline_is_refused_before_mlflow_is_called() -> None:
    _check_alias("production")
    with pytest.raises(RegistryConfigError):
        _check_alias("production\n")
