"""parse_spec refuses what the CRD refuses where it changes behaviour, so a spec written under an older CRD (or
one that skipped validation) cannot run differently from what the API server enforces; and a model name MLflow
refuses is refused by both, with a message naming spec.model.name."""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import _validate_model_name

from controller.analysis.queries import without_comments
from controller.api import SpecError, parse_spec

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "modelrollout.io_modelrollouts.yaml"
SAMPLE = REPO / "examples" / "nsfw-classifier.yaml"

Spec = dict[str, Any]


def sample() -> Spec:
    spec: Spec = yaml.safe_load(SAMPLE.read_text())["spec"]
    return spec


def _set(*path: str | int, value: Any) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        node: Any = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


def _delete(*path: str | int) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        node: Any = spec
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return mutate


PROPORTION = {"events": "e{{selector}}", "total": "t{{selector}}"}

REFUSED: list[tuple[str, Callable[[Spec], None], str]] = [
    # required: [model, target, goldenDataset, canary]; without goldenDataset the gate was skipped.
    ("golden-dataset-missing", _delete("goldenDataset"), "spec.goldenDataset"),
    ("canary-missing", _delete("canary"), "spec.canary"),
    ("canary-steps-missing", _set("canary", value={}), "spec.canary.steps"),
    # minItems 1, maxItems 50, and a setWeight above 0: else promoted without live traffic being judged.
    ("no-steps", _set("canary", "steps", value=[]), "spec.canary.steps"),
    ("only-zero-weights", _set("canary", "steps", value=[{"setWeight": 0}, {"pause": {}}]), "spec.canary.steps"),
    ("no-weight-at-all", _set("canary", "steps", value=[{"pause": {"duration": "5m"}}]), "spec.canary.steps"),
    ("fifty-one-steps", _set("canary", "steps", value=[{"setWeight": 1 + i // 2} for i in range(51)]),
     "spec.canary.steps"),
    # patterns on the candidate and the aliases: MLflow would refuse them on every call.
    ("version-not-a-number", _set("model", "version", value="seven"), "spec.model.version"),
    ("version-leading-zero", _set("model", "version", value="07"), "spec.model.version"),
    ("version-zero", _set("model", "version", value="0"), "spec.model.version"),
    ("alias-with-a-dot", _set("model", value={"name": "m", "alias": "champion.v2"}), "spec.model.alias"),
    ("alias-too-long", _set("model", value={"name": "m", "alias": "a" * 256}), "spec.model.alias"),
    ("alias-is-the-default-stable", _set("model", value={"name": "m", "alias": "production"}), "spec.model.alias"),
    ("alias-is-the-previous-alias", _set("model", value={"name": "m", "stableAlias": "gold",
                                                         "alias": "gold-previous"}), "spec.model.alias"),
    ("stable-alias-with-a-space", _set("model", "stableAlias", value="prod uction"), "spec.model.stableAlias"),
    # the target and the Secret are always in the rollout's namespace: a namespace would be ignored silently.
    ("target-namespace", _set("target", "kserve", "namespace", value="other"), "spec.target.kserve.namespace"),
    ("experiment-namespace", _set("target", value={"seldonExperiment": {"name": "e", "namespace": "other"}}),
     "spec.target.seldonExperiment.namespace"),
    ("secret-ref-namespace", _set("registry", value={"credentialsSecretRef": {"name": "t", "namespace": "x"}}),
     "spec.registry.credentialsSecretRef.namespace"),
    # URL patterns: http(s) only where the operator sends HTTP requests; the dataset's sources.
    ("tracking-uri-not-http", _set("registry", value={"trackingUri": "ftp://mlflow"}), "spec.registry.trackingUri"),
    ("tracking-uri-configmap", _set("registry", value={"trackingUri": "configmap://a/b"}),
     "spec.registry.trackingUri"),
    ("prometheus-not-http", _set("analysis", "prometheus", "address", value="prom:9090"),
     "spec.analysis.prometheus.address"),
    ("gate-url-not-http", _set("target", "kserve", "candidateUrl", value="grpc://gate:8081"),
     "spec.target.kserve.candidateUrl"),
    ("dataset-plain-http", _set("goldenDataset", "uri", value="http://example.com/golden.jsonl"),
     "spec.goldenDataset.uri"),
    ("dataset-s3", _set("goldenDataset", "uri", value="s3://bucket/golden.jsonl"), "spec.goldenDataset.uri"),
    # minimum/maximum of the judges' limits.
    ("confidence-above-crd-maximum", _set("analysis", "metrics", 0, "proportion", "confidence", value=0.99995),
     "spec.analysis.metrics[0].proportion.confidence"),
    ("min-samples-above-crd-maximum", _set("analysis", "metrics", 0, "proportion", "minSamples", value=10**8 + 1),
     "spec.analysis.metrics[0].proportion.minSamples"),
    ("twenty-one-metrics",
     _set("analysis", "metrics", value=[{"name": f"m{i}", "proportion": PROPORTION} for i in range(21)]),
     "spec.analysis.metrics"),
    # template variables: an unknown one would fail every analysis run.
    ("unknown-variable-in-events", _set("analysis", "metrics", 0, "proportion", "events",
                                        value='sum(x{ {{selector}}, class="{{ evil }}" })'),
     "spec.analysis.metrics[0].proportion.events"),
    ("unknown-variable-in-threshold",
     _set("analysis", "metrics", value=[{"name": "errors", "threshold": {"query": "up{{{job}}}", "max": 1}}]),
     "spec.analysis.metrics[0].threshold.query"),
    # {{selector}} only in a comment: the canary would be judged against itself.
    ("selector-only-in-a-comment", _set("analysis", "metrics", 0, "proportion", "events",
                                        value='sum(x{class="nsfw"}[{{window}}]) # {{selector}}'),
     "spec.analysis.metrics[0].proportion.events"),
    # Thresholds that judge nothing: the gate could never pass.
    ("thresholds-empty", _set("goldenDataset", "thresholds", value={}), "spec.goldenDataset.thresholds"),
    ("thresholds-no-class", _set("goldenDataset", "thresholds", value={"classes": {}}),
     "spec.goldenDataset.thresholds"),
    ("class-without-a-limit", _set("goldenDataset", "thresholds", "classes", "nsfw", value={}),
     "spec.goldenDataset.thresholds.classes[nsfw]"),
    # A bare `pause:` is null, which the API server drops before its rule: a step that sets nothing.
    ("bare-pause", _set("canary", "steps", 5, value={"pause": None}), "spec.canary.steps[5]"),
    # MLflow's rule for a registered model name: such a rollout waited in Pending for ever.
    ("model-name-with-slash", _set("model", "name", value="team/nsfw"), "spec.model.name"),
    ("model-name-with-colon", _set("model", "name", value="nsfw:7"), "spec.model.name"),
    ("model-name-dot", _set("model", "name", value="."), "spec.model.name"),
    ("model-name-dot-dot", _set("model", "name", value=".."), "spec.model.name"),
    ("model-name-starting-with-dot-dot", _set("model", "name", value="..nsfw"), "spec.model.name"),
    ("model-name-blank", _set("model", "name", value=" \t"), "spec.model.name"),
    ("model-name-too-long", _set("model", "name", value="m" * 257), "spec.model.name"),
    # Port 0: nothing ever answers there, so the rollout waited in Pending for ever (review s40crd F1).
    ("tracking-uri-port-zero", _set("registry", value={"trackingUri": "http://mlflow.ml.svc.cluster.local:0"}),
     "spec.registry.trackingUri"),
    ("prometheus-port-zero", _set("analysis", "prometheus", value={"address": "http://prometheus.monitoring:0"}),
     "spec.analysis.prometheus.address"),
    ("gate-url-port-zero", _set("target", "kserve", "candidateUrl", value="http://gate.team-a.svc.cluster.local:0/v2"),
     "spec.target.kserve.candidateUrl"),
    ("dataset-https-port-zero", _set("goldenDataset", "uri", value="https://data.example:00/golden.jsonl"),
     "spec.goldenDataset.uri"),
]


def test_the_sample_parses() -> None:
    spec = parse_spec(sample())
    assert spec.golden_dataset is not None and spec.canary.steps


@pytest.mark.parametrize(("case", "mutate", "field"), REFUSED, ids=[case for case, _, _ in REFUSED])
def test_what_the_crd_refuses_the_parser_refuses_naming_the_field(case: str, mutate: Callable[[Spec], None],
                                                                  field: str) -> None:
    raw = copy.deepcopy(sample())
    mutate(raw)
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    assert caught.value.path == field, f"{case}: {caught.value}"
    assert str(caught.value).startswith(field + ": ")


@pytest.mark.parametrize("mutate", [
    _set("canary", "steps", value=[{"setWeight": 0}, {"setWeight": 100}]),
    _set("canary", "steps", value=[{"setWeight": 1 + i // 2} for i in range(50)]),
    _set("model", value={"name": "m", "alias": "Challenger_2-b"}),
    _set("model", "version", value="1234567890"),
    _set("analysis", "metrics", 0, "proportion", "confidence", value=0.9999),
    _set("analysis", "metrics", 0, "proportion", "minSamples", value=10**8),
    _set("analysis", "metrics", 0, "proportion", "events", value="e{ {{selector}} }[{{window}}] {{namespace}} "
                                                                 "{{target}} {{variant}}"),
    _set("target", "kserve", "candidateUrl", value="https://gate.team-a.svc/v2"),
    _set("goldenDataset", "uri", value="runs:/abc/golden.jsonl"),
    _set("goldenDataset", "uri", value="models:/nsfw/3/golden.jsonl"),
    _set("goldenDataset", "uri", value="mlflow-artifacts:/golden/set.jsonl"),
    _set("goldenDataset", "uri", value="https://data.example/golden.jsonl"),
    _delete("goldenDataset", "thresholds"),
    _set("goldenDataset", "thresholds", value={"classes": {"nsfw": {"minPrecision": 0.9}}}),
    _set("canary", "steps", 5, value={"setWeight": 60, "pause": None}),  # stored without the null
])
def test_what_the_crd_accepts_still_parses(mutate: Callable[[Spec], None]) -> None:
    raw = copy.deepcopy(sample())
    mutate(raw)
    parse_spec(raw)


# --- the model name: MLflow's own rule, in the parser and in the CRD ---------------------------------------

# Names around each part of the rule. Whitespace-only is Python's str.strip() (the \x1c separators too).
NAMES = ["nsfw-classifier", "a.b", ".a", "a.", "a..", "...", "..", ".", "..a", "a/b", "/", "a:b", "models:/x",
         "", " ", "\t\n", "\x1c", "\u3000", "\u00a0 ", " a ", "my model", "café", "a%b", "a\\b", "a\x00b",
         "ümlaut_1", "x" * 256]


def _mlflow_refuses(name: str) -> bool:
    """The rule every registry store applies (the file store also refuses '%', a SQL store does not)."""
    try:
        _validate_model_name(name)
    except MlflowException:
        return True
    return False


def _parser_refuses(name: str) -> bool:
    raw = sample()
    raw["model"]["name"] = name
    try:
        parse_spec(raw)
    except SpecError as error:
        assert error.path == "spec.model.name", error
        return True
    return False


def _model_name_rule() -> tuple[str, str]:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    name = spec["properties"]["model"]["properties"]["name"]
    [rule] = name["x-kubernetes-validations"]
    return rule["rule"], rule["message"]


def _crd_refuses(name: str) -> bool:
    """Evaluate the CEL rule in Python. It uses only self.matches, self.startsWith, ==, !=, ! and && on
    single-quoted literals whose escapes (\\t, \\uXXXX) mean the same in Python; RE2 and `re` agree on it."""
    rule, _ = _model_name_rule()
    assert set(re.findall(r"self\.(\w+)", rule)) <= {"matches", "startsWith"}, rule
    expression = (rule.replace("!=", "\0").replace("!", " not ").replace("\0", "!=").replace("&&", " and ")
                  .replace("self.matches(", "_matches(self, ").replace("self.startsWith(", "self.startswith("))
    allowed = eval(expression, {"__builtins__": {}},  # noqa: S307 - the CRD's own text, translated above
                   {"self": name, "_matches": lambda text, pattern: re.search(pattern, text) is not None})
    return not allowed


@pytest.mark.parametrize("name", NAMES, ids=repr)
def test_model_names_are_refused_exactly_as_mlflow_refuses_them(name: str) -> None:
    refused = _mlflow_refuses(name)
    assert _parser_refuses(name) == refused
    assert _crd_refuses(name) == refused


def test_the_crd_rule_names_the_field_and_the_length_is_bounded_by_both() -> None:
    _, message = _model_name_rule()
    assert message.startswith("spec.model.name ")
    crd = yaml.safe_load(CRD.read_text())
    model = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["model"]
    assert model["properties"]["name"]["maxLength"] == 256
    assert _parser_refuses("x" * 257) and not _parser_refuses("x" * 256)


def test_the_chart_installs_the_same_crd() -> None:
    assert (REPO / "charts" / "modelrollout" / "crds" / CRD.name).read_bytes() == CRD.read_bytes()


# --- {{selector}} outside a comment: the CRD's regular expression and parse_spec's lexer -------------------------


def _proportion_rules() -> dict[str, str]:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    proportion = spec["properties"]["analysis"]["properties"]["metrics"]["items"]["properties"]["proportion"]
    found = {}
    for key in ("events", "total"):
        [rule] = [item for item in proportion["properties"][key]["x-kubernetes-validations"]
                  if "selector" in item["message"] and "must use" in item["message"]]
        found[key] = rule["rule"]
    return found


def _crd_selector_regex() -> str:
    """The pattern of the rule `self.matches(r'...')`; RE2 and Python's `re` read it alike (no flags; classes,
    alternation and \\x escapes only)."""
    rules = _proportion_rules()
    assert rules["events"] == rules["total"]
    match = re.fullmatch(r"self\.matches\(r'([^']*)'\)", rules["events"])
    assert match, rules["events"]
    return match.group(1)


def _parser_takes_the_selector(query: str) -> bool:
    raw = sample()
    raw["analysis"]["metrics"][0]["proportion"]["events"] = query
    try:
        parse_spec(raw)
    except SpecError as error:
        assert error.path == "spec.analysis.metrics[0].proportion.events", error
        return False
    return True


QUERIES = [
    'sum(x{ {{selector}} })', 'sum(x) # {{selector}}', '# note\nsum(x{ {{selector}} })',
    '# note\rsum(x{ {{variant}} })', 'sum(x{channel="#general", {{selector}}})', 'sum(x{a="#"}) # {{selector}}',
    "sum(x{a='it\\'s #', {{selector}}})", 'sum(x{a=`#`, {{variant}}})', 'label_replace(x, "a", "{{selector}}", "", "")',
    '"unclosed # {{selector}}', '# {{selector}}\n', "sum(x{a='#'}) # '{{selector}}'", 'sum(x{a="\\"#", {{selector}}})',
]


@pytest.mark.parametrize("query", QUERIES, ids=repr)
def test_the_crd_reads_a_selector_in_a_comment_as_parse_spec_does(query: str) -> None:
    assert (re.search(_crd_selector_regex(), query) is not None) == _parser_takes_the_selector(query)


def test_the_crd_selector_rule_agrees_with_the_lexer_on_random_queries() -> None:
    """Every arrangement of quotes, escapes, comments and line breaks around the placeholders."""
    pattern = re.compile(_crd_selector_regex())
    parts = ["#", '"', "'", "`", "\\", "\n", "\r", "a", "{{selector}}", "{{variant}}", "{", "}", "{{", "selector}}"]
    rng = random.Random(7)
    for _ in range(20000):
        query = "".join(rng.choice(parts) for _ in range(rng.randint(0, 10)))
        code = without_comments(query)
        assert (pattern.search(query) is not None) == ("{{selector}}" in code or "{{variant}}" in code), repr(query)


# --- thresholds that judge nothing ----------------------------------------------------------------------------


def test_the_crd_threshold_rules_name_every_limit_the_schema_declares() -> None:
    """A limit the rule leaves out would let a class (or thresholds) that sets only it be refused; one it names
    that the schema lacks could never be set."""
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    thresholds = spec["properties"]["goldenDataset"]["properties"]["thresholds"]
    one_class = thresholds["properties"]["classes"]["additionalProperties"]
    for schema in (thresholds, one_class):
        [rule] = schema["x-kubernetes-validations"]
        assert set(re.findall(r"has\(self\.(\w+)\)", rule["rule"])) == set(schema["properties"]), rule
    assert "size(self.classes) > 0" in thresholds["x-kubernetes-validations"][0]["rule"]
