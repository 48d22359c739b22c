"""A seldonExperiment rollout's candidate Seldon Model is named <spec.model.name in DNS-label form>-v<version>:
parse_spec refuses a spec.model.name that no Model can carry (a Kubernetes object name is at most 253
characters), naming the field, by the router's own naming rule, and only where it is certain: with an alias the
version is known only at run time, so only a name too long even for version 1 is refused here."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api import SpecError, parse_spec
from controller.traffic.base import CandidateModel
from controller.traffic.seldon import default_serving_name

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"
EXPERIMENT = {"seldonExperiment": {"name": "nsfw"}}
OBJECT_NAME_LIMIT = 253  # a Kubernetes object name's limit (test_traffic_seldon.py shows the API server's)


def spec(name: str, target: dict[str, Any], version: str | None = None, alias: str | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = copy.deepcopy(yaml.safe_load(SAMPLE.read_text())["spec"])
    raw["target"] = target
    raw["model"] = {"name": name, **({"version": version} if version else {}), **({"alias": alias} if alias else {})}
    return raw


def model_name(name: str, version: str) -> str:
    return default_serving_name(CandidateModel(name, version, ""))


@pytest.mark.parametrize("version", ["7", "1234567890"])
def test_the_longest_name_a_model_can_carry_parses_and_one_more_character_is_refused(version: str) -> None:
    longest = "x" * (OBJECT_NAME_LIMIT - len(f"-v{version}"))
    assert len(model_name(longest, version)) == OBJECT_NAME_LIMIT
    parse_spec(spec(longest, EXPERIMENT, version=version))
    with pytest.raises(SpecError) as refused:
        parse_spec(spec(longest + "x", EXPERIMENT, version=version))
    assert refused.value.path == "spec.model.name"
    assert f"version {version}" in str(refused.value) and "254 characters" in str(refused.value)


def test_the_rule_is_the_routers_naming_rule_after_dns_label_form() -> None:
    # Length as the router writes the name: a run of characters DNS-label form drops is one "-".
    folding = "a" + "." * 254 + "b"  # 256 characters (the most MLflow takes) -> "a-b"
    assert model_name(folding, "7") == "a-b-v7"
    parse_spec(spec(folding, EXPERIMENT, version="7"))
    kept = "Ab_" * 84  # 252 characters -> "ab-ab-...-ab" (251)
    assert len(model_name(kept, "7")) == 254
    with pytest.raises(SpecError, match=r"^spec\.model\.name: gives version 7 the Seldon Model name ab-ab-"):
        parse_spec(spec(kept, EXPERIMENT, version="7"))


def test_an_alias_is_refused_only_when_no_version_fits() -> None:
    fits_version_1 = "x" * (OBJECT_NAME_LIMIT - 3)  # "-v1"
    parse_spec(spec(fits_version_1, EXPERIMENT, alias="challenger"))  # version 7 fits; 12 would not: run time
    with pytest.raises(SpecError, match=r"^spec\.model\.name: gives even version 1 the Seldon Model name "):
        parse_spec(spec(fits_version_1 + "x", EXPERIMENT, alias="challenger"))


def test_other_targets_do_not_name_a_model_after_it() -> None:
    for target in ({"kserve": {"inferenceService": "nsfw"}},
                   {"seldonDeployment": {"name": "nsfw", "stablePredictor": "main", "canaryPredictor": "canary"}}):
        parse_spec(spec("x" * 256, target, version="7"))
