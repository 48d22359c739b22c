"""The API server itself refuses bad ModelRollouts, with a message that names the field."""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.reach import short_service_refusal
from controller.api.spec import SpecError, parse_spec
from tests.conftest import run_kubectl

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "modelrollout.io_modelrollouts.yaml"
SAMPLE = REPO / "examples" / "nsfw-classifier.yaml"

Spec = dict[str, Any]


def sample() -> dict[str, Any]:
    return yaml.safe_load(SAMPLE.read_text())


def _set(path: str, value: Any) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        *parents, leaf = path.split(".")
        node: Any = spec
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(leaf)] = value
        else:
            node[leaf] = value
    return mutate


def _delete(path: str) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        *parents, leaf = path.split(".")
        node: Any = spec
        for key in parents:
            node = node[key]
        del node[leaf]
    return mutate


def _both(*mutations: Callable[[Spec], None]) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        for mutation in mutations:
            mutation(spec)
    return mutate


PROPORTION = {"events": "sum(x{ {{selector}} })", "total": "sum(y{ {{selector}} })"}

INVALID: list[tuple[str, Callable[[Spec], None], str]] = [
    ("version-and-alias", _set("model.alias", "challenger"), "spec.model"),
    ("neither-version-nor-alias", _delete("model.version"), "spec.model"),
    ("version-not-a-number", _set("model.version", "seven"), "spec.model.version"),
    ("alias-latest", _both(_delete("model.version"), _set("model.alias", "latest")), "spec.model.alias"),
    ("stable-alias-reserved", _set("model.stableAlias", "v3"), "spec.model.stableAlias"),
    ("alias-equals-stable-alias", _both(_delete("model.version"), _set("model.alias", "production")),
     "spec.model.alias"),
    ("alias-equals-default-previous", _both(_delete("model.version"), _set("model.alias", "production-previous")),
     "spec.model.alias"),
    ("alias-equals-previous-alias", _both(_delete("model.version"), _set("model.stableAlias", "champion"),
                                          _set("model.alias", "champion-previous")), "spec.model.alias"),
    ("model-name-missing", _delete("model.name"), "spec.model.name"),
    ("two-targets", _set("target.seldonExperiment", {"name": "nsfw"}), "spec.target"),
    ("no-target-kind", _set("target", {}), "spec.target"),
    ("target-namespace", _set("target.kserve.namespace", "other"), "spec.target.kserve"),
    ("seldon-same-predictors",
     _set("target", {"seldonDeployment": {"name": "nsfw", "stablePredictor": "main", "canaryPredictor": "main"}}),
     "spec.target.seldonDeployment.canaryPredictor"),
    ("bad-inference-service-name", _set("target.kserve.inferenceService", "Bad_Name"),
     "spec.target.kserve.inferenceService"),
    ("sha256-too-short", _set("goldenDataset.sha256", "3f7c"), "spec.goldenDataset.sha256"),
    ("sha256-not-hex", _set("goldenDataset.sha256", "z" * 64), "spec.goldenDataset.sha256"),
    ("sha256-missing", _delete("goldenDataset.sha256"), "spec.goldenDataset.sha256"),
    ("dataset-plain-http", _set("goldenDataset.uri", "http://example.com/golden.jsonl"), "spec.goldenDataset.uri"),
    ("min-accuracy-above-one", _set("goldenDataset.thresholds.minAccuracy", 1.5),
     "spec.goldenDataset.thresholds.minAccuracy"),
    ("class-recall-negative", _set("goldenDataset.thresholds.classes.nsfw.minRecall", -0.1),
     "spec.goldenDataset.thresholds.classes.nsfw.minRecall"),
    ("weight-above-100", _set("canary.steps.0", {"setWeight": 150}), "spec.canary.steps[0].setWeight"),
    ("weights-decrease", _set("canary.steps.2", {"setWeight": 0}), "spec.canary.steps"),
    ("step-two-kinds", _set("canary.steps.0", {"setWeight": 1, "pause": {}}), "spec.canary.steps[0]"),
    ("duration-unparsable", _set("canary.steps.1", {"analysis": {"duration": "10 minutes"}}),
     "spec.canary.steps[1].analysis.duration"),
    ("no-steps", _set("canary.steps", []), "spec.canary.steps"),
    ("only-zero-weights", _set("canary.steps", [{"setWeight": 0}, {"pause": {}}]), "spec.canary.steps"),
    ("analysis-step-without-metrics", _delete("analysis.metrics"), "spec.analysis"),
    ("metric-two-judges", _set("analysis.metrics.0.threshold", {"query": "up", "max": 1}),
     "spec.analysis.metrics[0]"),
    ("threshold-without-bounds", _set("analysis.metrics", [{"name": "errors", "threshold": {"query": "up"}}]),
     "spec.analysis.metrics[0].threshold"),
    ("threshold-min-above-max",
     _set("analysis.metrics", [{"name": "errors", "threshold": {"query": "up", "min": 2, "max": 1}}]),
     "spec.analysis.metrics[0].threshold"),
    ("threshold-failure-limit-negative",
     _set("analysis.metrics", [{"name": "errors", "threshold": {"query": "up", "max": 1, "failureLimit": -1}}]),
     "spec.analysis.metrics[0].threshold.failureLimit"),
    ("unknown-template-variable",
     _set("analysis.metrics.0.proportion.events", 'sum(x{class="{{ evil }}"})'),
     "spec.analysis.metrics[0].proportion.events"),
    ("duplicate-metric-names",
     _set("analysis.metrics", [{"name": "a", "proportion": PROPORTION}, {"name": "a", "proportion": PROPORTION}]),
     "spec.analysis.metrics[1]"),
    ("confidence-above-one", _set("analysis.metrics.0.proportion.confidence", 1.5),
     "spec.analysis.metrics[0].proportion.confidence"),
    ("min-samples-zero", _set("analysis.metrics.0.proportion.minSamples", 0),
     "spec.analysis.metrics[0].proportion.minSamples"),
    ("on-inconclusive-unknown", _set("analysis.onInconclusive", "ignore"), "spec.analysis.onInconclusive"),
    ("prometheus-without-address", _set("analysis.prometheus", {}), "spec.analysis.prometheus.address"),
    ("secret-ref-namespace", _set("registry", {"credentialsSecretRef": {"name": "tok", "namespace": "kube-system"}}),
     "spec.registry.credentialsSecretRef"),
    ("tracking-uri-not-http", _set("registry", {"trackingUri": "ftp://mlflow"}), "spec.registry.trackingUri"),
    # Hosts urlsplit refuses (an IPv4 address in brackets, a fullwidth slash): refused here, not at run time.
    ("tracking-uri-bracketed-ipv4", _set("registry", {"trackingUri": "http://[1.2.3.4]/"}),
     "spec.registry.trackingUri"),
    ("golden-uri-bracketed-ipv4", _set("goldenDataset.uri", "https://[1.2.3.4]/golden.jsonl"),
     "spec.goldenDataset.uri"),
    ("prometheus-fullwidth-slash", _set("analysis.prometheus", {"address": "http://a\uff0fb/"}),
     "spec.analysis.prometheus.address"),
    ("progress-deadline-unparsable", _set("progressDeadline", "soon"), "spec.progressDeadline"),
    ("bake-baseline-in-hours", _set("bake.baseline", "72h"), "spec.bake.baseline"),
    ("bake-baseline-too-short", _set("bake.baseline", "2d"), "spec.bake.baseline"),
    ("bake-without-metrics", _both(_set("canary.steps", [{"setWeight": 10}]), _delete("analysis")), "spec.bake"),
    ("unknown-field", _set("rollbackk", {"automatic": True}), "spec.rollbackk"),
    ("revert-on-deletion-not-boolean", _set("rollback", {"revertOnDeletion": "yes"}), "spec.rollback.revertOnDeletion"),
    ("golden-dataset-missing", _delete("goldenDataset"), "spec.goldenDataset"),
    # Zero durations match the duration syntax but mean nothing: refused here, not Failed at run time.
    ("analysis-interval-zero", _set("analysis.interval", "0s"), "spec.analysis.interval"),
    ("progress-deadline-zero", _set("progressDeadline", "0m"), "spec.progressDeadline"),
    ("analysis-duration-zero", _set("canary.steps.1", {"analysis": {"duration": "0s"}}),
     "spec.canary.steps[1].analysis.duration"),
    ("bake-duration-zero", _set("bake.duration", "0h"), "spec.bake.duration"),
    ("bake-without-duration", _set("bake", {"baseline": "7d"}), "spec.bake.duration"),
    # A rate of 0 or 1 cannot be exceeded credibly: the judge could never fail.
    ("max-rate-zero", _set("analysis.metrics.0.proportion.maxRate", 0), "spec.analysis.metrics[0].proportion.maxRate"),
    ("max-rate-one", _set("analysis.metrics.0.proportion.maxRate", 1), "spec.analysis.metrics[0].proportion.maxRate"),
    ("limit-beside-and-inside", _set("analysis.metrics.0.maxRate", 0.1), "spec.analysis.metrics[0].maxRate"),
    ("limit-on-a-threshold",
     _set("analysis.metrics", [{"name": "errors", "threshold": {"query": "up", "max": 1}, "minSamples": 5}]),
     "spec.analysis.metrics[0]"),
    ("gate-url-with-credentials", _set("target.kserve.candidateUrl", "http://gate:s3cret@gate.example:8080"),
     "spec.target.kserve.candidateUrl"),
    # Without {{selector}} the canary and stable queries are the same text: the canary is judged against itself.
    ("proportion-without-selector", _set("analysis.metrics.0.proportion.events", 'sum(x{class="nsfw"})'),
     "spec.analysis.metrics[0].proportion.events"),
    ("analysis-interval-sub-second", _set("analysis.interval", "500ms"), "spec.analysis.interval"),
    # Past the operator's 3650d ceiling: refused here, not Failed (or a rollout held) at run time.
    ("progress-deadline-over-ceiling", _set("progressDeadline", "3651d"), "spec.progressDeadline"),
    ("bake-duration-over-ceiling", _set("bake.duration", "99999d"), "spec.bake.duration"),
    ("pause-duration-over-ceiling", _set("canary.steps.1", {"pause": {"duration": "87601h"}}),
     "spec.canary.steps[].pause.duration"),
    ("analysis-duration-over-ceiling", _set("canary.steps.1", {"analysis": {"duration": "3650d1ms"}}),
     "spec.canary.steps[].analysis.duration"),
    ("analysis-interval-over-ceiling", _set("analysis.interval", "99999999999999999999999999999d"),
     "spec.analysis.interval"),
    # URLs the operator could not parse (a reconcile error loop with no status) or would record with a secret.
    ("tracking-uri-broken-ipv6", _set("registry", {"trackingUri": "http://[::1"}), "spec.registry.trackingUri"),
    ("tracking-uri-with-credentials", _set("registry", {"trackingUri": "http://bob:s3cret@mlflow:5000"}),
     "spec.registry.trackingUri"),
    ("prometheus-address-with-query", _set("analysis.prometheus.address", "http://prom:9090/?token=s3cret"),
     "spec.analysis.prometheus.address"),
    ("gate-url-port-not-a-number", _set("target.kserve.stableUrl", "http://gate:abc/v2"),
     "spec.target.kserve.stableUrl"),
    ("dataset-presigned-url", _set("goldenDataset.uri", "https://bucket.example/golden.jsonl?X-Amz-Signature=s3cret"),
     "spec.goldenDataset.uri"),
    ("dataset-port-not-a-number", _set("goldenDataset.uri", "https://data.example:abc/golden.jsonl"),
     "spec.goldenDataset.uri"),
    ("dataset-port-out-of-range", _set("goldenDataset.uri", "https://data.example:99999/golden.jsonl"),
     "spec.goldenDataset.uri"),
    # Port 0: nothing ever answers there, so the rollout waited in Pending for ever (review s40crd F1).
    ("tracking-uri-port-zero", _set("registry", {"trackingUri": "http://mlflow.ml.svc.cluster.local:0"}),
     "spec.registry.trackingUri"),
    ("prometheus-port-zero", _set("analysis.prometheus.address", "http://prometheus.monitoring:0000"),
     "spec.analysis.prometheus.address"),
    ("gate-url-port-zero", _set("target.kserve.candidateUrl", "http://gate:0/v2"), "spec.target.kserve.candidateUrl"),
    ("dataset-https-port-zero", _set("goldenDataset.uri", "https://data.example:0/golden.jsonl"),
     "spec.goldenDataset.uri"),
    # Spaces are taken inside an MLflow path only (review s40crd F2).
    ("dataset-trailing-space", _set("goldenDataset.uri", "runs:/0123abcd/golden.jsonl "), "spec.goldenDataset.uri"),
    ("dataset-line-break-in-path", _set("goldenDataset.uri", "runs:/0123abcd/golden\n.jsonl"),
     "spec.goldenDataset.uri"),
    ("dataset-tab-in-path", _set("goldenDataset.uri", "models:/nsfw\t/3/golden.jsonl"), "spec.goldenDataset.uri"),
    ("dataset-broken-ipv6", _set("goldenDataset.uri", "https://[::1/golden.jsonl"), "spec.goldenDataset.uri"),
    # MLflow reserves "latest" in any case: the registry would refuse it for ever, with the rollout Pending.
    ("alias-latest-capitalised", _both(_delete("model.version"), _set("model.alias", "Latest")), "spec.model.alias"),
    ("stable-alias-latest-upper-case", _set("model.stableAlias", "LATEST"), "spec.model.stableAlias"),
    ("bake-with-an-empty-metric-list", _both(_set("canary.steps", [{"setWeight": 10}]), _set("analysis.metrics", [])),
     "spec.bake"),
    # Names MLflow refuses for a registered model (mlflow.utils.validation._validate_model_name): such a rollout
    # could never find its model and waited in Pending for ever.
    ("model-name-with-slash", _set("model.name", "team/nsfw"), "spec.model.name"),
    ("model-name-with-colon", _set("model.name", "nsfw:7"), "spec.model.name"),
    ("model-name-dot", _set("model.name", "."), "spec.model.name"),
    ("model-name-dot-dot", _set("model.name", ".."), "spec.model.name"),
    ("model-name-starting-with-dot-dot", _set("model.name", "..nsfw"), "spec.model.name"),
    ("model-name-blank", _set("model.name", " \t"), "spec.model.name"),
    ("model-name-ideographic-space", _set("model.name", "\u3000"), "spec.model.name"),
    ("model-name-file-separator", _set("model.name", "\x1c"), "spec.model.name"),
    # A whole number was checked against the bounds cut to integers (0.5 and 0.9999 read as 0): 0 was taken.
    ("confidence-zero", _set("analysis.metrics.0.proportion.confidence", 0),
     "spec.analysis.metrics[0].proportion.confidence"),
    ("confidence-zero-beside-proportion",
     _set("analysis.metrics", [{"name": "nsfw", "confidence": 0, "proportion": PROPORTION}]),
     "spec.analysis.metrics[0].confidence"),
    # Hosts urlsplit refuses in any scheme (a port out of range, brackets without an IPv6 address in them).
    ("dataset-mlflow-artifacts-port-out-of-range", _set("goldenDataset.uri", "mlflow-artifacts://mlflow:99999/g.jsonl"),
     "spec.goldenDataset.uri"),
    ("dataset-mlflow-artifacts-broken-ipv6", _set("goldenDataset.uri", "mlflow-artifacts://[zz/golden.jsonl"),
     "spec.goldenDataset.uri"),
    ("dataset-runs-unclosed-bracket", _set("goldenDataset.uri", "runs://[::1/golden.jsonl"), "spec.goldenDataset.uri"),
    ("dataset-https-not-an-ipv6-address", _set("goldenDataset.uri", "https://[:]/golden.jsonl"),
     "spec.goldenDataset.uri"),
    ("dataset-fullwidth-slash-in-host", _set("goldenDataset.uri", "mlflow-artifacts://a\uff0fb/golden.jsonl"),
     "spec.goldenDataset.uri"),
    ("tracking-uri-not-an-ipv6-address", _set("registry", {"trackingUri": "http://[:]/"}), "spec.registry.trackingUri"),
    ("tracking-uri-ipv6-trailing-colon", _set("registry", {"trackingUri": "http://[fe80::1:]/"}),
     "spec.registry.trackingUri"),
    ("gate-url-not-an-ipv6-address", _set("target.kserve.candidateUrl", "http://[1:]"),
     "spec.target.kserve.candidateUrl"),
    ("stable-url-two-double-colons", _set("target.kserve.stableUrl", "http://[1::2::3]/v2"),
     "spec.target.kserve.stableUrl"),
    ("prometheus-not-an-ipv6-address", _set("analysis.prometheus.address", "http://[1:]"),
     "spec.analysis.prometheus.address"),
    # {{selector}} only in a PromQL comment: the operator's parse_spec refused it after it was stored.
    ("proportion-selector-only-in-a-comment",
     _set("analysis.metrics.0.proportion.events", 'sum(x{class="nsfw"}[{{window}}])  # per {{selector}}'),
     "spec.analysis.metrics[0].proportion.events"),
    # Thresholds that judge nothing: a gate that could never pass.
    ("thresholds-empty", _set("goldenDataset.thresholds", {}), "spec.goldenDataset.thresholds"),
    ("thresholds-empty-classes", _set("goldenDataset.thresholds", {"classes": {}}), "spec.goldenDataset.thresholds"),
    ("class-without-a-limit", _set("goldenDataset.thresholds.classes.nsfw", {}),
     "spec.goldenDataset.thresholds.classes[nsfw]"),
    # A class label of 254+ characters keys the gate's status maps: from 1023 on every status write is a 400.
    ("class-label-too-long", _set("goldenDataset.thresholds.classes", {"n" * 254: {"minRecall": 0.9}}),
     "spec.goldenDataset.thresholds.classes keys (class labels) must be at most 253 characters"),
    # A bare `pause:` (YAML null) is dropped before the step's rule runs.
    ("bare-pause", _set("canary.steps.5", {"pause": None}), "spec.canary.steps[5]"),
    # events the same query as total: canary and stable both read 100%, the metric could never fail (review s32crd).
    ("proportion-events-same-as-total",
     _set("analysis.metrics.0.proportion", dict(PROPORTION, events=PROPORTION["total"])),
     "spec.analysis.metrics[0].proportion.events"),
    ("proportion-events-same-as-total-but-whitespace",
     _set("analysis.metrics.0.proportion",
          {"events": "sum (y{\t{{selector}}\r\n})\n", "total": "sum(y{ {{selector}} })"}),
     "spec.analysis.metrics[0].proportion.events"),
    # Short Service names the operator refuses at run time whatever its settings (review s32crd).
    ("tracking-uri-short-service-name", _set("registry", {"trackingUri": "http://mlflow.mlflow.svc:5000"}),
     "spec.registry.trackingUri"),
    ("prometheus-short-service-name-upper-case-trailing-dot-path",
     _set("analysis.prometheus.address", "https://Prometheus.Monitoring.SVC./thanos"),
     "spec.analysis.prometheus.address"),
]


def apply(kubeconfig: Path, namespace: str, manifest: dict[str, Any]) -> tuple[int, str]:
    result = run_kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", input_text=json.dumps(manifest))
    return result.returncode, result.stdout + result.stderr


def test_invalid_cases_are_distinct() -> None:
    names = [name for name, _, _ in INVALID]
    assert len(names) >= 20 and len(set(names)) == len(names)


@pytest.mark.integration
@pytest.mark.parametrize(("case", "mutate", "field"), INVALID, ids=[name for name, _, _ in INVALID])
def test_invalid_spec_is_refused_naming_the_field(kubeconfig: Path, namespace: str, case: str,
                                                  mutate: Callable[[Spec], None], field: str) -> None:
    manifest = sample()
    mutate(manifest["spec"])
    manifest["metadata"]["name"] = case
    code, output = apply(kubeconfig, namespace, manifest)
    assert code != 0, f"{case} was accepted:\n{output}"
    assert field in output, f"{case}: the message does not name {field}:\n{output}"


@pytest.mark.integration
def test_a_bare_pause_is_refused_saying_how_to_write_one(kubeconfig: Path, namespace: str) -> None:
    """has() is false for a null field (nullable or not), so the step's rule cannot take it: it says what to write."""
    manifest = sample()
    manifest["spec"]["canary"]["steps"][5] = {"pause": None}
    code, output = apply(kubeconfig, namespace, manifest)
    assert code != 0 and "write `pause: {}` for a pause until promoted" in output, output


@pytest.mark.integration
def test_a_limit_set_twice_is_refused_with_the_reason_not_just_the_field(kubeconfig: Path, namespace: str) -> None:
    """A Duplicate-reason rule would print only 'Duplicate value: "object"'; the message must say what to do."""
    manifest = sample()
    manifest["spec"]["analysis"]["metrics"][0]["maxRate"] = 0.1
    code, output = apply(kubeconfig, namespace, manifest)
    assert code != 0 and "maxRate is set both beside and inside proportion; keep one" in output, output


@pytest.mark.integration
@pytest.mark.parametrize("beside", [False, True])
def test_a_whole_number_confidence_is_refused_with_its_range(kubeconfig: Path, namespace: str, beside: bool) -> None:
    """Not "should be less than or equal to 0": bounds cut to integers would say that of confidence: 1."""
    manifest = sample()
    metric = manifest["spec"]["analysis"]["metrics"][0]
    del metric["proportion"]["confidence"]
    (metric if beside else metric["proportion"])["confidence"] = 1
    code, output = apply(kubeconfig, namespace, manifest)
    assert code != 0 and "confidence must be from 0.5 to 0.9999" in output, output
    assert "less than or equal to 0" not in output, output


# The edges of what parse_spec takes: the API server takes them too.
ACCEPTED: list[tuple[str, Callable[[Spec], None]]] = [
    ("confidence-lowest", _set("analysis.metrics.0.proportion.confidence", 0.5)),
    ("confidence-highest", _set("analysis.metrics.0.proportion.confidence", 0.9999)),
    ("dataset-mlflow-artifacts-host-and-port", _set("goldenDataset.uri", "mlflow-artifacts://mlflow:5000/g.jsonl")),
    ("dataset-mlflow-artifacts-ipv6", _set("goldenDataset.uri", "mlflow-artifacts://[::1]:65535/g.jsonl")),
    ("dataset-https-ipv6", _set("goldenDataset.uri", "https://[2001:db8::7]:8443/golden.jsonl")),
    # MLflow takes spaces in a model name and an artifact path (review s40crd F2: refused at apply).
    ("dataset-runs-path-with-a-space", _set("goldenDataset.uri", "runs:/0123abcd/golden set/nsfw v3.jsonl")),
    ("dataset-models-name-with-a-space", _set("goldenDataset.uri", "models:/fraud detector/3/golden.jsonl")),
    ("dataset-mlflow-artifacts-path-with-a-space", _set("goldenDataset.uri", "mlflow-artifacts:/golden/nsfw v3.jsonl")),
    ("tracking-uri-ipv4-mapped-ipv6", _set("registry", {"trackingUri": "http://[::ffff:10.0.0.1]:5000"})),
    ("gate-url-full-ipv6", _set("target.kserve.candidateUrl", "http://[fd00:1:2:3:4:5:6:7]/v2")),
    ("prometheus-link-local-ipv6", _set("analysis.prometheus.address", "http://[FE80::1]:9090")),
    # A `#` in a label value or a comment that a line break (\n or \r) ends hides no selector.
    ("selector-after-a-hash-in-a-label", _set("analysis.metrics.0.proportion.events", 'sum(x{a="#", {{selector}}})')),
    ("selector-after-a-comment-line", _set("analysis.metrics.0.proportion.total", "# all\nsum(x{ {{selector}} })")),
    ("selector-after-a-comment-and-cr", _set("analysis.metrics.0.proportion.total", "# all\rsum(x{ {{variant}} })")),
    ("thresholds-one-class-limit", _set("goldenDataset.thresholds", {"classes": {"nsfw": {"minPrecision": 0.9}}})),
    ("thresholds-left-out", _delete("goldenDataset.thresholds")),
    ("class-label-longest", _set("goldenDataset.thresholds.classes", {"n" * 253: {"minRecall": 0.9}})),
    # Queries that differ only inside a string literal (whitespace there counts) or in a comment are two queries.
    ("proportion-differs-in-a-literal",
     _set("analysis.metrics.0.proportion", {"events": 'x{a="b c", {{selector}}}', "total": 'x{a="bc", {{selector}}}'})),
    ("proportion-differs-in-a-comment", _set("analysis.metrics.0.proportion",
                                              {"events": "x{ {{selector}} } # e", "total": "x{ {{selector}} } # t"})),
    ("prometheus-full-service-name", _set("analysis.prometheus.address", "http://prometheus.monitoring.svc.cluster.local:9090")),
    ("tracking-uri-full-service-name", _set("registry", {"trackingUri": "http://mlflow.mlflow.svc.cluster.local.:5000/"})),
]


@pytest.mark.integration
@pytest.mark.parametrize(("case", "mutate"), ACCEPTED, ids=[name for name, _ in ACCEPTED])
def test_edges_the_operator_takes_are_accepted(kubeconfig: Path, namespace: str, case: str,
                                               mutate: Callable[[Spec], None]) -> None:
    manifest = sample()
    mutate(manifest["spec"])
    manifest["metadata"]["name"] = case
    parse_spec(manifest["spec"])
    code, output = apply(kubeconfig, namespace, manifest)
    assert code == 0, f"{case} was refused:\n{output}"


# Every form of host api.reach.short_service_refusal reads (case, trailing dots, a port, a path) and hosts around it.
SHORT_SERVICE_URLS = [
    "http://prometheus.monitoring.svc", "http://prometheus.monitoring.svc:9090", "https://Prometheus.Monitoring.SVC",
    "http://prometheus.monitoring.svc.", "http://prometheus.monitoring.svc..:9090/", "http://p.m.Svc/api/v1",
    "http://p.m.svc:9090/prefix/x.svc", "http://.svc", "http://svc.svc", "http://a.svc.svc.", "http://a-b_c.d.svc:0",
    "http://prometheus.monitoring.svc.cluster.local", "http://prometheus.monitoring.svc.cluster.local.:9090/x",
    "http://svc", "http://svc.", "http://svc:9090", "http://mysvc.monitoring:9090", "http://a.svcx", "http://a.svc-1",
    "http://a.xsvc", "http://prom.example.com/x.svc", "http://10.0.0.1:9090/.svc", "http://[::1]:9090",
    "http://prometheus.monitoring:9090", "https://a.svc.example",
]


@pytest.mark.integration
@pytest.mark.parametrize("field", ["registry.trackingUri", "analysis.prometheus.address"])
def test_a_short_service_name_is_refused_at_apply_as_the_operator_refuses_it(kubeconfig: Path, namespace: str,
                                                                             field: str) -> None:
    """Refused exactly when the operator's run-time check refuses it, with its message (review s32crd)."""
    path = f"spec.{field}"
    wrong = []
    for index, url in enumerate(SHORT_SERVICE_URLS):
        manifest = sample()
        _set(field, url)(manifest["spec"])
        manifest["metadata"]["name"] = f"short-{index}"
        refusal = short_service_refusal(url)
        code, output = apply(kubeconfig, namespace, manifest)
        if refusal is None and code != 0:
            wrong.append(f"{url}: refused:\n{output}")
        elif refusal is not None and (code == 0 or f"{path}: Invalid value: \"string\": {refusal}" not in output):
            wrong.append(f"{url}: not refused with {refusal!r}:\n{output}")
    assert sum(short_service_refusal(url) is not None for url in SHORT_SERVICE_URLS) == 11
    assert wrong == []


# A URL with user:password@ is refused with a message of its own that names the field and says why, never quoting the
# value: the API server reports every failing rule, and an OpenAPI pattern's failure echoes the value (review s33conv).
CREDENTIAL_URLS = ["http://alice:pw-SECRET1@127.0.0.1:1", "https://alice:pw-SECRET1@mlflow.example/api",
                   "http://:pw-SECRET1@[::1]:9090", "http://alice:pw-SECRET1@bad host/"]
URL_FIELDS = ["registry.trackingUri", "analysis.prometheus.address", "target.kserve.candidateUrl",
              "target.kserve.stableUrl"]


@pytest.mark.integration
@pytest.mark.parametrize("field", URL_FIELDS)
def test_a_url_with_credentials_is_refused_without_quoting_them(kubeconfig: Path, namespace: str, field: str) -> None:
    refusal = f"spec.{field}: Invalid value: \"string\": spec.{field} must not carry user:password@"
    assert refused_without_quoting(kubeconfig, namespace, field, CREDENTIAL_URLS, (refusal,), ("pw-SECRET1",)) == []


def refused_without_quoting(kubeconfig: Path, namespace: str, field: str, urls: list[str], refusals: tuple[str, ...],
                            secrets: tuple[str, ...]) -> list[str]:
    """Each URL in `field` that is accepted, refused with none of `refusals`, or whose refusal quotes a secret."""
    wrong = []
    for index, url in enumerate(urls):
        manifest = sample()
        _set(field, url)(manifest["spec"])
        manifest["metadata"]["name"] = f"url-{index}"
        code, output = apply(kubeconfig, namespace, manifest)
        if code == 0 or not any(refusal in output for refusal in refusals) or any(s in output for s in secrets):
            wrong.append(f"{url}:\n{output}")
    return wrong


# A password holding an unencoded / ? or # ends the authority early, so the URL is no user:password@ to the rule
# above and fails the shape, which is a rule quoting nothing (an OpenAPI pattern's refusal quoted it, review s33r4). A
# user name ending in .svc is no short Service name to quote.
SHAPELESS_CREDENTIAL_URLS = ["http://alice:pw/SECRET1@mlflow.example:5000", "https://alice:pw?SECRET1@127.0.0.1/",
                             "http://alice:pw#SECRET1@[::1]:9090", "http://alice-user.svc:pw/SECRET1@prom.example/",
                             "http://alice-user.svc:pw-SECRET1@prom.example/"]


@pytest.mark.integration
@pytest.mark.parametrize("field", URL_FIELDS)
def test_a_url_with_a_password_that_breaks_its_shape_is_refused_without_quoting_it(
        kubeconfig: Path, namespace: str, field: str) -> None:
    refusals = (f"spec.{field}: Invalid value: \"string\": spec.{field} must be http:// or https://host[:port][/path]",
                f"spec.{field}: Invalid value: \"string\": spec.{field} must not carry user:password@")
    assert refused_without_quoting(kubeconfig, namespace, field, SHAPELESS_CREDENTIAL_URLS, refusals,
                                   ("SECRET1", "alice")) == []

def _random_query(rng: random.Random) -> str:
    """A selector outside any literal or comment (the CRD's other rule), then quotes, escapes, comments, whitespace."""
    parts = ["#", '"', "'", "`", "\\", "\n", "\r", " ", "\t", "a", "b", "(", "{", ")"]
    return "x{{selector}}" + "".join(rng.choice(parts) for _ in range(rng.randint(0, 8)))


def _respaced(rng: random.Random, query: str) -> str:
    """`query` with whitespace added or removed at random places (inside literals and comments too), not inside its
    {{selector}}."""
    head = "x{{selector}}"
    chars = list(query.removeprefix(head))
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(chars) + 1)
        if rng.random() < 0.5 and at < len(chars) and chars[at] in " \t\n\r":
            del chars[at]
        else:
            chars.insert(at, rng.choice(" \t\n\r"))
    return rng.choice(["", " ", "\n"]) + head + "".join(chars)


@pytest.mark.integration
def test_the_api_server_and_parse_spec_agree_on_which_queries_are_the_same(kubeconfig: Path, namespace: str) -> None:
    """RE2 in the CRD's rule and `re` in parse_spec tokenize alike: 200 pairs, 20 metrics to a manifest."""
    rng = random.Random(32)
    disagreements, same = [], 0
    for batch in range(10):
        pairs = []
        for _ in range(20):
            events = _random_query(rng)
            pairs.append((events, _respaced(rng, events) if rng.random() < 0.7 else _random_query(rng)))
        manifest = sample()
        manifest["metadata"]["name"] = f"same-{batch}"
        manifest["spec"]["analysis"]["metrics"] = [{"name": f"m{i}", "proportion": {"events": e, "total": t}}
                                                   for i, (e, t) in enumerate(pairs)]
        _, output = apply(kubeconfig, namespace, manifest)
        for i, (events, total) in enumerate(pairs):
            crd_same = f"spec.analysis.metrics[{i}].proportion.events: Invalid value: \"object\"" in output
            raw = sample()["spec"]
            raw["analysis"]["metrics"] = [{"name": "m", "proportion": {"events": events, "total": total}}]
            try:
                parse_spec(raw)
                parser_same = False
            except SpecError as error:
                assert error.path == "spec.analysis.metrics[0].proportion.events", error
                parser_same = "another query than total" in error.problem
            same += parser_same
            if crd_same != parser_same:
                disagreements.append((events, total, crd_same))
    assert disagreements == []
    assert 40 < same < 160  # both answers are exercised


@pytest.mark.integration
def test_sample_is_accepted_with_defaults_and_printer_columns(kubeconfig: Path, namespace: str) -> None:
    manifest = sample()
    del manifest["spec"]["progressDeadline"]
    code, output = apply(kubeconfig, namespace, manifest)
    assert code == 0, output
    stored = json.loads(run_kubectl(kubeconfig, "get", "mro", "nsfw-classifier", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["progressDeadline"] == "30m"
    header = run_kubectl(kubeconfig, "get", "mro", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "STEP", "PAUSE", "CAUSE", "WEIGHT", "CANDIDATE", "STABLE", "READY",
                      "REASON", "AGE"]
    # A canary held after a failed analysis must not read like a planned pause.
    paused = {"phase": "Paused", "step": "2/6", "canaryWeight": 10,
              "pause": {"reason": "AnalysisFailed", "since": "2026-12-04T03:00:00Z"}}
    assert printed_columns(kubeconfig, namespace, paused) == ["Paused", "2/6", "AnalysisFailed", "", "10", "", ""]
    # A rolled-back rollout says why without -o yaml.
    rolled_back = {"phase": "RolledBack", "step": None, "canaryWeight": 0, "pause": None,
                   "rollback": {"cause": "AnalysisFailed", "reason": "nsfw rate 3x stable",
                                "verdictAt": "2026-12-04T03:01:00Z"}}
    assert printed_columns(kubeconfig, namespace, rolled_back) == ["RolledBack", "", "", "AnalysisFailed", "0", "",
                                                                   ""]
    # A success that left a version a verdict rejected serving is not read as a good one.
    ready = {"type": "Ready", "status": "False", "reason": "PreviouslyRejected", "message": "Version 7 serves ...",
             "lastTransitionTime": "2026-12-04T03:02:00Z"}
    succeeded = {"phase": "Succeeded", "rollback": None, "conditions": [
        {**ready, "type": "GatePassed", "status": "True", "reason": "Passed"}, ready]}
    assert printed_columns(kubeconfig, namespace, succeeded) == ["Succeeded", "", "", "", "0", "False",
                                                                 "PreviouslyRejected"]


def printed_columns(kubeconfig: Path, namespace: str, status: dict[str, Any]) -> list[str]:
    """PHASE, STEP, PAUSE, CAUSE, WEIGHT, READY and REASON as `kubectl get mro` prints them once `status` is merged
    in (a blank cell stays blank)."""
    result = run_kubectl(kubeconfig, "patch", "mro", "nsfw-classifier", "-n", namespace, "--subresource=status",
                         "--type=merge", "-p", json.dumps({"status": status}))
    assert result.returncode == 0, result.stderr
    header, row = run_kubectl(kubeconfig, "get", "mro", "-n", namespace).stdout.splitlines()[:2]
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    cells = {header[start:end].strip(): row[start:end].strip() for start, end in zip(starts, ends, strict=True)}
    return [cells[key] for key in ("PHASE", "STEP", "PAUSE", "CAUSE", "WEIGHT", "READY", "REASON")]


def apply_in_phase(kubeconfig: Path, namespace: str, name: str, phase: str, manifest: Spec) -> tuple[int, str]:
    """Write status.phase (with a candidate) as the operator would, then apply `manifest` over it."""
    patch = json.dumps({"status": {"phase": phase, "candidate": {"version": "7"}}})
    result = run_kubectl(kubeconfig, "patch", "mro", name, "-n", namespace, "--subresource=status", "--type=merge",
                         "-p", patch)
    assert result.returncode == 0, result.stderr
    return apply(kubeconfig, namespace, manifest)


@pytest.mark.integration
def test_the_target_cannot_change_while_a_rollout_is_in_flight(kubeconfig: Path, namespace: str) -> None:
    manifest = sample()
    manifest["metadata"]["name"] = "target-change"
    assert apply(kubeconfig, namespace, manifest)[0] == 0
    moved = copy.deepcopy(manifest)
    moved["spec"]["target"] = {"kserve": {"inferenceService": "nsfw-classifier-v2"}}
    for phase, allowed in (("Progressing", False), ("RollingBack", False), ("Succeeded", True)):
        code, output = apply_in_phase(kubeconfig, namespace, "target-change", phase, moved)
        assert (code == 0) == allowed, f"{phase}: {output}"
        if not allowed:
            assert "spec.target" in output and "in flight" in output, output
    # Other fields may change mid-rollout, the gate's URLs in the target too (a typo must be fixable).
    patch = json.dumps({"status": {"phase": "Progressing"}})
    run_kubectl(kubeconfig, "patch", "mro", "target-change", "-n", namespace, "--subresource=status", "--type=merge",
                "-p", patch)
    moved["spec"]["progressDeadline"] = "45m"
    moved["spec"]["target"]["kserve"]["candidateUrl"] = f"http://nsfw-classifier-v2-canary.{namespace}.svc"
    code, output = apply(kubeconfig, namespace, moved)
    assert code == 0, output
    # Staging happens in Pending once the candidate is resolved: from then on the target is held as well.
    run_kubectl(kubeconfig, "patch", "mro", "target-change", "-n", namespace, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"phase": "Pending"}}))
    moved["spec"]["target"] = {"seldonDeployment": {"name": "nsfw", "stablePredictor": "main", "canaryPredictor": "c"}}
    code, output = apply(kubeconfig, namespace, moved)
    assert code != 0 and "spec.target" in output, output


@pytest.mark.integration
def test_the_model_its_stable_alias_and_registry_cannot_change_while_a_rollout_is_in_flight(kubeconfig: Path,
                                                                                   namespace: str) -> None:
    manifest = sample()
    manifest["metadata"]["name"] = "model-change"
    assert apply(kubeconfig, namespace, manifest)[0] == 0
    for change in ({"name": "other-model"}, {"stableAlias": "gold"}):
        moved = copy.deepcopy(manifest)
        moved["spec"]["model"].update(change)
        for phase, allowed in (("Progressing", False), ("Baking", False), ("RolledBack", True)):
            code, output = apply_in_phase(kubeconfig, namespace, "model-change", phase, moved)
            assert (code == 0) == allowed, f"{change} in {phase}: {output}"
            if not allowed:
                assert "spec.model.name and spec.model.stableAlias" in output, output
        assert apply(kubeconfig, namespace, manifest)[0] == 0  # back, while the phase allows it
    # Nor the registry the versions in status belong to (set, changed or removed).
    for registry in ({"trackingUri": "http://mlflow-2:5000"}, None):
        first = copy.deepcopy(manifest)
        if registry is None:
            first["spec"]["registry"] = {"trackingUri": "http://mlflow:5000"}
        assert apply(kubeconfig, namespace, first)[0] == 0
        moved = copy.deepcopy(first)
        if registry is None:
            del moved["spec"]["registry"]
        else:
            moved["spec"]["registry"] = registry
        for phase, allowed in (("Progressing", False), ("RollingBack", False), ("Failed", True)):
            code, output = apply_in_phase(kubeconfig, namespace, "model-change", phase, moved)
            assert (code == 0) == allowed, f"{registry} in {phase}: {output}"
            if not allowed:
                assert "spec.registry.trackingUri cannot change" in output, output
        assert apply(kubeconfig, namespace, manifest)[0] == 0
    # A new version is a new candidate, not another model: allowed mid-rollout.
    bumped = copy.deepcopy(manifest)
    bumped["spec"]["model"]["version"] = "8"
    assert apply_in_phase(kubeconfig, namespace, "model-change", "Progressing", bumped)[0] == 0


@pytest.mark.integration
def test_a_threshold_failure_limit_is_accepted_and_read_and_defaults_to_zero(kubeconfig: Path, namespace: str) -> None:
    manifest = sample()
    manifest["metadata"]["name"] = "failure-limit"
    manifest["spec"]["analysis"]["metrics"] += [
        {"name": "error-rate", "threshold": {"query": "e{{selector}}", "max": 0.01, "failureLimit": 3}},
        {"name": "latency", "threshold": {"query": "l{{selector}}", "max": 0.5}}]
    code, output = apply(kubeconfig, namespace, manifest)
    assert code == 0, output
    stored = json.loads(run_kubectl(kubeconfig, "get", "mro", "failure-limit", "-n", namespace, "-o", "json").stdout)
    limits = [metric.threshold.failure_limit for metric in parse_spec(stored["spec"]).analysis.metrics
              if metric.threshold is not None]
    assert limits == [3, 0]


@pytest.mark.integration
def test_design_md_layout_with_the_limits_beside_proportion_is_accepted_and_read(kubeconfig: Path,
                                                                                  namespace: str) -> None:
    manifest = sample()
    manifest["metadata"]["name"] = "design-layout"
    metric = manifest["spec"]["analysis"]["metrics"][0]
    for key in ("maxRelativeIncrease", "maxRate", "confidence", "minSamples"):
        metric[key] = metric["proportion"].pop(key)
    metric["maxRate"], metric["minSamples"] = 0.07, 300  # not the defaults: a default must not shadow them
    code, output = apply(kubeconfig, namespace, manifest)
    assert code == 0, output
    stored = json.loads(run_kubectl(kubeconfig, "get", "mro", "design-layout", "-n", namespace, "-o", "json").stdout)
    proportion = parse_spec(stored["spec"]).analysis.metrics[0].proportion
    assert proportion is not None
    assert (proportion.max_rate, proportion.min_samples, proportion.max_relative_increase) == (0.07, 300, 0.5)


@pytest.mark.integration
def test_durations_up_to_the_operators_ceiling_are_accepted_and_run(kubeconfig: Path, namespace: str) -> None:
    """The CRD's bounds are the operator's: what the API server takes, parse_spec takes (3650d at most, an
    interval of at least 1s however it is spelled)."""
    manifest = sample()
    manifest["metadata"]["name"] = "long-durations"
    spec = manifest["spec"]
    spec["progressDeadline"] = "3650d"
    spec["analysis"]["interval"] = "0d1000ms"
    spec["canary"]["steps"][1] = {"pause": {"duration": "87599h59m60s"}}
    spec["registry"] = {"trackingUri": "http://[::1]:5000"}
    code, output = apply(kubeconfig, namespace, manifest)
    assert code == 0, output
    stored = json.loads(run_kubectl(kubeconfig, "get", "mro", "long-durations", "-n", namespace, "-o", "json").stdout)
    parsed = parse_spec(stored["spec"])
    assert parsed.progress_deadline.days == 3650 and parsed.analysis.interval.total_seconds() == 1


@pytest.mark.integration
def test_metrics_without_a_prometheus_are_accepted_for_the_operators_default(kubeconfig: Path,
                                                                           namespace: str) -> None:
    manifest = sample()
    manifest["metadata"]["name"] = "operators-prometheus"
    del manifest["spec"]["analysis"]["prometheus"]
    code, output = apply(kubeconfig, namespace, manifest)
    assert code == 0, output


@pytest.mark.integration
def test_all_three_target_kinds_are_accepted(kubeconfig: Path, namespace: str) -> None:
    targets = {"kserve": {"kserve": {"inferenceService": "nsfw"}},
               "seldon-v1": {"seldonDeployment": {"name": "nsfw", "stablePredictor": "main",
                                                  "canaryPredictor": "canary"}},
               "seldon-v2": {"seldonExperiment": {"name": "nsfw"}}}
    for name, target in targets.items():
        manifest = copy.deepcopy(sample())
        manifest["metadata"]["name"] = name
        manifest["spec"]["target"] = target
        code, output = apply(kubeconfig, namespace, manifest)
        assert code == 0, output


@pytest.mark.integration
@pytest.mark.parametrize("name", ["a.b", ".a", "a..", "my model", "caf\u00e9", "a%b", " nsfw "])
def test_model_names_mlflow_accepts_are_accepted(kubeconfig: Path, namespace: str, name: str) -> None:
    manifest = sample()
    manifest["metadata"]["name"] = f"name-{sum(map(ord, name))}"
    manifest["spec"]["model"]["name"] = name
    code, output = apply(kubeconfig, namespace, manifest)
    assert code == 0, f"{name!r} was refused:\n{output}"


def _walk(schema: dict[str, Any], path: str) -> list[str]:
    missing = [] if "description" in schema or path.endswith(".metadata") else [path]
    for key, child in (schema.get("properties") or {}).items():
        missing += _walk(child, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        missing += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        missing += _walk(schema["additionalProperties"], f"{path}{{}}")
    return missing


def _fractional_bounds(schema: dict[str, Any], path: str) -> list[str]:
    found = [f"{path}.{key}" for key in ("minimum", "maximum") if schema.get(key, 0) != int(schema.get(key, 0))]
    for key, child in (schema.get("properties") or {}).items():
        found += _fractional_bounds(child, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += _fractional_bounds(schema[key], f"{path}[]")
    return found


def test_no_number_has_a_fractional_minimum_or_maximum() -> None:
    """The API server checks a whole number (confidence: 0) against the bounds cut to integers (0.5 -> 0): a bound
    that is not a whole number is written as a CEL rule instead."""
    crd = yaml.safe_load(CRD.read_text())
    assert _fractional_bounds(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "") == []


def test_every_field_has_a_description() -> None:
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema, "") == []


def test_every_printer_column_reads_a_declared_field() -> None:
    """`kubectl explain mro.status.pause.reason` must describe what the Pause column shows."""
    crd = yaml.safe_load(CRD.read_text())
    [version] = crd["spec"]["versions"]
    undeclared = []
    for column in version["additionalPrinterColumns"]:
        node = version["schema"]["openAPIV3Schema"]
        # A filter such as conditions[?(@.type=="Ready")] reads a list's items.
        for key in re.sub(r"\[\?\(.*?\)\]", "[]", column["jsonPath"]).lstrip(".").split("."):
            node = (node.get("properties") or {}).get(key.removesuffix("[]"))
            node = node.get("items") if node is not None and key.endswith("[]") else node
            if node is None:
                break
        if node is None and not column["jsonPath"].startswith(".metadata."):
            undeclared.append(column["jsonPath"])
    assert undeclared == []
