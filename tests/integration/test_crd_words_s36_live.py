"""The commonest mistakes are refused at apply in words, not with a regex (review s36crd), and a Seldon Core v2
rollout whose candidate's Model name cannot exist is refused at apply, as parse_spec refuses it, not only once the
operator reads it (Ready False after the object is stored). One known exception (review s36r2): names with the Kelvin
sign or a dotted capital I, which Python's lower() turns into ASCII letters and CEL's lowerAscii() does not, may be
accepted at apply and refused by the operator (InvalidSpec)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.spec import SpecError, parse_spec
from tests.conftest import run_kubectl

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"

pytestmark = pytest.mark.integration


def apply(kubeconfig: Path, namespace: str, manifest: dict[str, Any]) -> tuple[int, str]:
    result = run_kubectl(kubeconfig, "apply", "--server-side", "--field-manager=test", "-n", namespace, "-f", "-",
                         input_text=json.dumps(manifest))
    return result.returncode, result.stdout + result.stderr


def sample(name: str) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    manifest["metadata"]["name"] = name
    return manifest


DURATION_WORDS = "must be a duration like 30s, 10m, 24h or 7d"
VERSION_WORDS = "spec.model.version must be a registry version number"
MISTAKES = [
    ("sha-upper", ("goldenDataset", "sha256"), "AB" * 32,
     "spec.goldenDataset.sha256 must be the dataset file's SHA-256 as 64 lowercase hex characters"),
    ("sha-prefixed", ("goldenDataset", "sha256"), "sha256:" + "ab" * 32,
     "spec.goldenDataset.sha256 must be the dataset file's SHA-256 as 64 lowercase hex characters"),
    ("sha-whole-sha256sum-line", ("goldenDataset", "sha256"), "ab" * 32 + "  golden.jsonl",
     "spec.goldenDataset.sha256 must be the dataset file's SHA-256 as 64 lowercase hex characters"),
    ("version-eleven-digits", ("model", "version"), "12345678901", VERSION_WORDS),
    ("version-leading-zero", ("model", "version"), "07", VERSION_WORDS),
    ("interval-bare-number", ("analysis", "interval"), "10", f"spec.analysis.interval {DURATION_WORDS}"),
    ("deadline-fraction", ("progressDeadline",), "1.5h", f"spec.progressDeadline {DURATION_WORDS}"),
    ("bake-weeks", ("bake", "duration"), "1w", f"spec.bake.duration {DURATION_WORDS}"),
    ("pause-negative", ("canary", "steps", 1, "pause"), {"duration": "-1m"},
     f"spec.canary.steps[].pause.duration {DURATION_WORDS}"),
    ("analysis-spelled", ("canary", "steps", 1, "analysis"), {"duration": "10 minutes"},
     f"spec.canary.steps[].analysis.duration {DURATION_WORDS}"),
]


@pytest.mark.parametrize(("case", "path", "value", "words"), MISTAKES, ids=[case for case, *_ in MISTAKES])
def test_a_common_mistake_is_refused_in_words(kubeconfig: Path, namespace: str, case: str,
                                             path: tuple[str | int, ...], value: Any, words: str) -> None:
    manifest = sample(case)
    node: Any = manifest["spec"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    code, output = apply(kubeconfig, namespace, manifest)
    assert code != 0, f"{case} was accepted:\n{output}"
    assert words in output, output
    assert "should match" not in output and "Too long" not in output, output  # the words, not a regex or a length


# Names around the limit, with characters the DNS-label form drops, lowers or joins (a run of them is one '-'); the
# Model is <label>-v<version> (an alias: version 1), at most 253 characters.
LONG_NAMES = [
    ("fits", "m" * 248, "7", False),  # 251
    ("just-fits", "m" * 250, "7", False),  # 253
    ("one-over", "m" * 251, "7", True),  # 254
    ("version-makes-it-over", "m" * 248, "12345", True),  # 255
    ("alias-fits", "m" * 250, None, False),  # 253
    ("alias-over", "m" * 251, None, True),
    ("upper-case-lowered", "M" * 250, "7", False),
    ("dots-joined-over", "a." * 126 + "b", "7", True),  # a-a-...-b: 253, then -v7
    ("runs-of-others-one-dash", "ab!!!" * 50 + "c", "1", False),  # 151 + 3
    ("runs-of-others-over", "ab!" * 84 + "cd", "1", True),  # 254 + 3
    ("trimmed-ends", "--" + "m" * 250 + "__", "7", False),  # trimmed to 250: 253
    ("trimmed-ends-over", "--" + "m" * 251 + "  ", "7", True),
    ("nothing-left", "!!!", "7", False),  # x-v7
]


@pytest.mark.parametrize(("case", "name", "version", "refused"), LONG_NAMES, ids=[case for case, *_ in LONG_NAMES])
def test_a_seldon_v2_model_name_is_refused_at_apply_exactly_when_parse_spec_refuses_it(
        kubeconfig: Path, namespace: str, case: str, name: str, version: str | None, refused: bool) -> None:
    manifest = sample(f"long-{case}")
    spec = manifest["spec"]
    spec["target"] = {"seldonExperiment": {"name": "nsfw"}}
    spec["model"] = {"name": name, **({"version": version} if version else {"alias": "challenger"})}
    try:
        parse_spec(copy.deepcopy(spec))
        parser_refuses = False
    except SpecError as exc:
        assert exc.path == "spec.model.name", exc
        parser_refuses = True
    assert parser_refuses == refused, case
    code, output = apply(kubeconfig, namespace, manifest)
    assert (code != 0) == refused, f"{case}: the API server {'refused' if code else 'accepted'} it:\n{output}"
    if refused:
        assert "spec.model.name is too long for a Seldon Core v2 target" in output, output


def test_a_long_model_name_is_accepted_for_kserve(kubeconfig: Path, namespace: str) -> None:
    """The rule is the Seldon v2 target's only: KServe serves any registered name."""
    manifest = sample("long-kserve")
    manifest["spec"]["model"]["name"] = "m" * 256
    code, output = apply(kubeconfig, namespace, manifest)
    assert code == 0, output
