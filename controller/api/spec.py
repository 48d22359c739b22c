"""Typed ModelRollout spec, parsed from the resource's `spec` dict.

Field names follow DESIGN.md section 3 (the contract), in snake_case here and camelCase in the resource.
The API server validates first (OpenAPI + CEL); parsing re-checks what the engine relies on so that a
spec that slipped past (an older CRD, a test) fails with a message naming the field, never deep inside
the engine. Unknown keys are ignored: fields may be added to the resource without breaking the parser.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from controller.analysis.queries import KNOWN_VARIABLES, TEMPLATE_VARIABLE, without_comments
from controller.api.durations import parse_duration
from controller.api.naming import serving_name_problem

DEFAULT_STABLE_ALIAS = "production"
# promote() points <stableAlias><suffix> at the version it replaces: a one-command way back.
PREVIOUS_ALIAS_SUFFIX = "-previous"
# Alias names MLflow keeps for itself: "latest" (in any case) and "v<number>" (a version by number).
RESERVED_ALIAS = re.compile(r"^(latest|[vV]\d+)$", re.IGNORECASE)
MIN_ANALYSIS_INTERVAL = timedelta(seconds=1)
DEFAULT_ANALYSIS_INTERVAL = timedelta(seconds=30)
DEFAULT_PROGRESS_DEADLINE = timedelta(minutes=30)
DEFAULT_BAKE_BASELINE = timedelta(days=7)
MIN_BAKE_BASELINE_DAYS = 3  # the baseline judge needs this many days of history (see analysis.judges)
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The CRD's patterns: a registry version number, and an alias MLflow takes (its own rule, ASCII only).
_VERSION = re.compile(r"[1-9][0-9]{0,9}")
_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
MAX_MODEL_NAME_LENGTH = 256  # the CRD's maxLength (MLflow's column)
_HTTP_SCHEMES = ("http://", "https://")
_DATASET_SCHEMES = ("mlflow-artifacts:/", "runs:/", "models:/", "https://", "configmap://")
MAX_STEPS = 50  # the CRD's maxItems
MAX_METRICS = 20
MAX_MIN_SAMPLES = 100_000_000
MAX_FAILURE_LIMIT = 1000
MAX_CONFIDENCE = 0.9999
_PROPORTION_LIMITS = ("maxRelativeIncrease", "maxRate", "confidence", "minSamples")
# Ten years: longer would only overflow the clock arithmetic (a bake's end, a deadline) later.
MAX_DURATION = timedelta(days=3650)


# maxRate's range (as the CRD says): the sequential test's null odds must stay finite and calibratable.
MAX_RATE_RANGE = (0.000001, 0.999999)
# A PromQL query read as its lexer reads it: string literals ("..." and '...' with backslash escapes, `...` raw), `#`
# comments to a line break, and single characters between them; whitespace outside them matches nothing. The CRD's
# rule on spec.analysis.metrics[].proportion holds this same expression (RE2 reads it as `re` does).
PROMQL_TOKEN = re.compile(r"\x22(?:[^\x22\\]|\\[\s\S])*\x22?|\x27(?:[^\x27\\]|\\[\s\S])*\x27?"
                          r"|\x60[^\x60]*\x60?|#[^\n\r]*|[^ \t\n\r\x22\x27\x60#]")


class SpecError(ValueError):
    """A spec the engine cannot run; `path` names the field, e.g. spec.canary.steps[2].setWeight."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# --- model and registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str | None  # exactly one of version | alias names the candidate
    alias: str | None
    stable_alias: str = DEFAULT_STABLE_ALIAS

    @property
    def candidate_ref(self) -> str:
        """How the spec names the candidate, for messages: "version 7" or "alias @challenger"."""
        return f"version {self.version}" if self.version is not None else f"alias @{self.alias}"


@dataclass(frozen=True)
class SecretRef:
    name: str


@dataclass(frozen=True)
class RegistrySpec:
    tracking_uri: str | None = None
    credentials_secret_ref: SecretRef | None = None


# --- target ------------------------------------------------------------------------------------------


class TargetKind(StrEnum):
    KSERVE = "kserve"
    SELDON_DEPLOYMENT = "seldonDeployment"
    SELDON_EXPERIMENT = "seldonExperiment"


@dataclass(frozen=True)
class KServeTarget:
    inference_service: str
    candidate_url: str | None = None
    stable_url: str | None = None


@dataclass(frozen=True)
class SeldonDeploymentTarget:
    name: str
    stable_predictor: str
    canary_predictor: str


@dataclass(frozen=True)
class SeldonExperimentTarget:
    name: str


@dataclass(frozen=True)
class TargetSpec:
    """Exactly one of the three is set."""

    kserve: KServeTarget | None = None
    seldon_deployment: SeldonDeploymentTarget | None = None
    seldon_experiment: SeldonExperimentTarget | None = None

    @property
    def kind(self) -> TargetKind:
        if self.kserve is not None:
            return TargetKind.KSERVE
        if self.seldon_deployment is not None:
            return TargetKind.SELDON_DEPLOYMENT
        return TargetKind.SELDON_EXPERIMENT

    @property
    def name(self) -> str:
        if self.kserve is not None:
            return self.kserve.inference_service
        if self.seldon_deployment is not None:
            return self.seldon_deployment.name
        assert self.seldon_experiment is not None  # guaranteed by parse_spec
        return self.seldon_experiment.name

    @property
    def description(self) -> str:
        """For messages: "InferenceService nsfw-classifier"."""
        noun = {TargetKind.KSERVE: "InferenceService", TargetKind.SELDON_DEPLOYMENT: "SeldonDeployment",
                TargetKind.SELDON_EXPERIMENT: "Experiment"}[self.kind]
        return f"{noun} {self.name}"


# --- golden dataset ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassThresholds:
    max_false_positive_rate: float | None = None
    min_recall: float | None = None
    min_precision: float | None = None


@dataclass(frozen=True)
class GoldenThresholds:
    min_accuracy: float | None = None
    max_accuracy_drop: float | None = None
    max_disagreement: float | None = None
    classes: Mapping[str, ClassThresholds] = field(default_factory=dict)


@dataclass(frozen=True)
class GoldenDatasetSpec:
    uri: str
    sha256: str
    thresholds: GoldenThresholds = field(default_factory=GoldenThresholds)


# --- canary steps ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetWeightStep:
    weight: int


@dataclass(frozen=True)
class AnalysisStep:
    duration: timedelta


@dataclass(frozen=True)
class PauseStep:
    duration: timedelta | None = None  # None: wait for a human `promote`


Step = SetWeightStep | AnalysisStep | PauseStep


@dataclass(frozen=True)
class CanarySpec:
    steps: tuple[Step, ...] = ()


# --- analysis ----------------------------------------------------------------------------------------


class OnInconclusive(StrEnum):
    PAUSE = "pause"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class PrometheusSpec:
    address: str


@dataclass(frozen=True)
class ProportionMetric:
    events: str
    total: str
    max_relative_increase: float = 0.5
    max_rate: float | None = None
    confidence: float = 0.99
    min_samples: int = 200

    @property
    def reads_whole_window(self) -> bool:
        """Both counts read the window from its start ({{window}}): their totals only grow from run to run."""
        return all("window" in TEMPLATE_VARIABLE.findall(without_comments(query))
                   for query in (self.events, self.total))


@dataclass(frozen=True)
class ThresholdMetric:
    query: str
    min: float | None = None
    max: float | None = None
    failure_limit: int = 0  # failing runs of a step or bake tolerated before the metric fails it (Argo Rollouts)


@dataclass(frozen=True)
class MetricSpec:
    """Exactly one of proportion | threshold."""

    name: str
    proportion: ProportionMetric | None = None
    threshold: ThresholdMetric | None = None


@dataclass(frozen=True)
class AnalysisSpec:
    prometheus: PrometheusSpec | None = None
    interval: timedelta = DEFAULT_ANALYSIS_INTERVAL
    metrics: tuple[MetricSpec, ...] = ()
    on_inconclusive: OnInconclusive = OnInconclusive.PAUSE


@dataclass(frozen=True)
class RollbackSpec:
    automatic: bool = True
    # Deleting the ModelRollout before it ends rolls it back first (a finalizer holds the delete), as Flagger's
    # revertOnDeletion. Off by default: a stuck operator must not block deletes unless a team asks for it.
    revert_on_deletion: bool = False


@dataclass(frozen=True)
class BakeSpec:
    duration: timedelta
    baseline: timedelta = DEFAULT_BAKE_BASELINE


@dataclass(frozen=True)
class ModelRolloutSpec:
    model: ModelSpec
    target: TargetSpec
    canary: CanarySpec = field(default_factory=CanarySpec)
    golden_dataset: GoldenDatasetSpec | None = None
    registry: RegistrySpec = field(default_factory=RegistrySpec)
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    rollback: RollbackSpec = field(default_factory=RollbackSpec)
    bake: BakeSpec | None = None  # None: Succeeded right after promotion
    progress_deadline: timedelta = DEFAULT_PROGRESS_DEADLINE


# --- parsing -----------------------------------------------------------------------------------------


def parse_spec(raw: Mapping[str, Any]) -> ModelRolloutSpec:
    """Parse `.spec` of a ModelRollout; raise SpecError naming the first bad field."""
    spec = _mapping(raw, "spec")
    model = _parse_model(_required_mapping(spec, "model", "spec"))
    parsed = ModelRolloutSpec(
        model=model,
        target=_parse_target(_required_mapping(spec, "target", "spec")),
        canary=_parse_canary(_required_mapping(spec, "canary", "spec")),
        # Required, as in the CRD: without it the engine skips the gate.
        golden_dataset=_parse_golden(_required_mapping(spec, "goldenDataset", "spec")),
        registry=_parse_registry(_optional_mapping(spec, "registry", "spec")),
        analysis=_parse_analysis(_optional_mapping(spec, "analysis", "spec")),
        rollback=_parse_rollback(_optional_mapping(spec, "rollback", "spec")),
        bake=_parse_bake(_optional_mapping(spec, "bake", "spec")),
        progress_deadline=_duration(spec.get("progressDeadline"), "spec.progressDeadline",
                                    DEFAULT_PROGRESS_DEADLINE),
    )
    if parsed.progress_deadline <= timedelta(0):
        raise SpecError("spec.progressDeadline", "must be longer than 0s")
    if parsed.target.seldon_experiment is not None:
        _seldon_model_name(model)
    needs_metrics = parsed.bake is not None or any(isinstance(s, AnalysisStep) for s in parsed.canary.steps)
    if needs_metrics and not parsed.analysis.metrics:
        raise SpecError("spec.analysis.metrics",
                        "must name at least one metric when an analysis step or bake is configured")
    return parsed


def _parse_model(raw: Mapping[str, Any]) -> ModelSpec:
    path = "spec.model"
    version = _optional_str(raw, "version", path)
    alias = _optional_str(raw, "alias", path)
    if (version is None) == (alias is None):
        raise SpecError(path, "exactly one of version or alias must be set")
    if version is not None and not _VERSION.fullmatch(version):
        raise SpecError(f"{path}.version", "must be a registry version number (1 to 10 digits, no leading 0)")
    stable_alias = _optional_str(raw, "stableAlias", path) or DEFAULT_STABLE_ALIAS
    for key, value in (("alias", alias), ("stableAlias", stable_alias)):
        if value is not None and not _ALIAS.fullmatch(value):
            raise SpecError(f"{path}.{key}", "must be 1 to 255 letters, digits, '_' or '-' (MLflow refuses others)")
        if value is not None and RESERVED_ALIAS.match(value):
            raise SpecError(f"{path}.{key}", f"{value!r} is reserved by MLflow ('latest' in any case, v<number>)")
    if alias is not None and alias == stable_alias:
        raise SpecError(f"{path}.alias", "must differ from stableAlias, or the candidate would be the stable version")
    if alias is not None and alias == stable_alias + PREVIOUS_ALIAS_SUFFIX:
        raise SpecError(f"{path}.alias", f"must differ from {alias!r}: promotion points that alias at the version "
                        "it replaces, which would undo the promotion")
    return ModelSpec(name=_model_name(raw, path), version=version, alias=alias, stable_alias=stable_alias)


def _model_name(raw: Mapping[str, Any], path: str) -> str:
    """A name MLflow can register, or the registry refuses every call and the rollout waits in Pending."""
    name = _required_str(raw, "name", path)
    # mlflow.utils.validation._validate_model_name (every store): not blank, no '/' or ':', and not a path that
    # resolves to another ('.', '..' and anything starting with '..'). The CRD's rule on spec.model.name is the same.
    if (not name.strip() or "/" in name or ":" in name or name == "." or name.startswith("..")
            or len(name) > MAX_MODEL_NAME_LENGTH):
        raise SpecError(f"{path}.name", f"must be a registered model name MLflow accepts: not blank, at most "
                        f"{MAX_MODEL_NAME_LENGTH} characters, no '/' or ':', not '.' and not starting with '..'")
    return name


def _seldon_model_name(model: ModelSpec) -> None:
    """The candidate's Seldon Model is named after spec.model.name: refused when no Model can have that name. An
    alias's version is known only at run time: refused here only when even version 1's name is too long (the
    router's stage refuses the rest, naming spec.model.name too)."""
    version = model.version or "1"
    problem = serving_name_problem(model.name, version, "" if model.version else "even version 1")
    if problem is not None:
        raise SpecError("spec.model.name", problem)


def _parse_registry(raw: Mapping[str, Any] | None) -> RegistrySpec:
    if raw is None:
        return RegistrySpec()
    path = "spec.registry"
    secret = _optional_mapping(raw, "credentialsSecretRef", path)
    if secret is not None:
        _no_namespace(secret, f"{path}.credentialsSecretRef", "Secrets are read only from the rollout's own namespace")
    return RegistrySpec(
        tracking_uri=_http_url(_optional_str(raw, "trackingUri", path), f"{path}.trackingUri"),
        credentials_secret_ref=None if secret is None else SecretRef(
            _required_str(secret, "name", f"{path}.credentialsSecretRef")),
    )


def _parse_target(raw: Mapping[str, Any]) -> TargetSpec:
    path = "spec.target"
    present = [key for key in ("kserve", "seldonDeployment", "seldonExperiment") if key in raw]
    if len(present) != 1:
        raise SpecError(path, "exactly one of kserve, seldonDeployment or seldonExperiment must be set")
    key = present[0]
    body = _required_mapping(raw, key, path)
    where = f"{path}.{key}"
    # Ignored, it would aim the rollout at the same name in the rollout's namespace: refused, as the CRD does.
    _no_namespace(body, where, "the target is always in the rollout's namespace")
    if key == "kserve":
        return TargetSpec(kserve=KServeTarget(
            inference_service=_required_str(body, "inferenceService", where),
            candidate_url=_gate_url(body, "candidateUrl", where), stable_url=_gate_url(body, "stableUrl", where)))
    if key == "seldonDeployment":
        stable = _required_str(body, "stablePredictor", where)
        canary = _required_str(body, "canaryPredictor", where)
        if stable == canary:
            raise SpecError(f"{where}.canaryPredictor", "must differ from stablePredictor")
        return TargetSpec(seldon_deployment=SeldonDeploymentTarget(
            name=_required_str(body, "name", where), stable_predictor=stable, canary_predictor=canary))
    return TargetSpec(seldon_experiment=SeldonExperimentTarget(name=_required_str(body, "name", where)))


def _parse_golden(raw: Mapping[str, Any]) -> GoldenDatasetSpec:
    path = "spec.goldenDataset"
    sha256 = _required_str(raw, "sha256", path)
    if not _SHA256.fullmatch(sha256):
        raise SpecError(f"{path}.sha256", "must be 64 lowercase hex characters")
    written = _optional_mapping(raw, "thresholds", path)
    thresholds_raw = written or {}
    tpath = f"{path}.thresholds"
    classes_raw = _optional_mapping(thresholds_raw, "classes", tpath) or {}
    classes: dict[str, ClassThresholds] = {}
    for label, limits in classes_raw.items():
        cpath = f"{tpath}.classes[{label}]"
        limits = _mapping(limits, cpath)
        classes[str(label)] = ClassThresholds(
            max_false_positive_rate=_fraction(limits.get("maxFalsePositiveRate"), f"{cpath}.maxFalsePositiveRate"),
            min_recall=_fraction(limits.get("minRecall"), f"{cpath}.minRecall"),
            min_precision=_fraction(limits.get("minPrecision"), f"{cpath}.minPrecision"))
        if classes[str(label)] == ClassThresholds():
            raise SpecError(cpath, "must set maxFalsePositiveRate, minRecall or minPrecision, or it judges nothing")
    thresholds = GoldenThresholds(
        min_accuracy=_fraction(thresholds_raw.get("minAccuracy"), f"{tpath}.minAccuracy"),
        max_accuracy_drop=_fraction(thresholds_raw.get("maxAccuracyDrop"), f"{tpath}.maxAccuracyDrop"),
        max_disagreement=_fraction(thresholds_raw.get("maxDisagreement"), f"{tpath}.maxDisagreement"),
        classes=classes)
    # Left out, the gate judges nothing and ends inconclusive (its verdict says so); written, it must judge something.
    if written is not None and thresholds == GoldenThresholds():
        raise SpecError(tpath, "must set minAccuracy, maxAccuracyDrop, maxDisagreement or a class limit, or the gate "
                        "has nothing to judge the candidate by")
    uri = _required_str(raw, "uri", path)
    if not uri.startswith(_DATASET_SCHEMES):
        raise SpecError(f"{path}.uri", "must start with mlflow-artifacts:/, runs:/, models:/, https:// or "
                        "configmap://")
    _recorded_url(uri, f"{path}.uri")
    return GoldenDatasetSpec(uri=uri, sha256=sha256, thresholds=thresholds)


def _parse_canary(raw: Mapping[str, Any]) -> CanarySpec:
    path = "spec.canary.steps"
    steps_raw = raw.get("steps")
    if steps_raw is None:
        raise SpecError(path, "is required")
    if not isinstance(steps_raw, list):
        raise SpecError(path, "must be a list")
    if len(steps_raw) > MAX_STEPS:
        raise SpecError(path, f"must have at most {MAX_STEPS} steps")
    steps: list[Step] = []
    last_weight = 0
    for index, item in enumerate(steps_raw):
        where = f"{path}[{index}]"
        item = _mapping(item, where)
        # A null value is no value: the API server drops it before its own rule (a bare `pause:` included).
        kinds = [key for key in ("setWeight", "analysis", "pause") if item.get(key) is not None]
        if len(kinds) != 1:
            raise SpecError(where, "must set exactly one of setWeight, analysis or pause (write `pause: {}` for a "
                            "pause until promoted; a bare `pause:` is null and dropped)")
        kind = kinds[0]
        if kind == "setWeight":
            weight = item["setWeight"]
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise SpecError(f"{where}.setWeight", "must be an integer from 0 to 100")
            if weight < last_weight:
                raise SpecError(f"{where}.setWeight", "must not be lower than an earlier step's weight")
            last_weight = weight
            steps.append(SetWeightStep(weight))
        elif kind == "analysis":
            body = _mapping(item["analysis"], f"{where}.analysis")
            if "duration" not in body:
                raise SpecError(f"{where}.analysis.duration", "is required")
            duration = _duration(body["duration"], f"{where}.analysis.duration")
            if duration <= timedelta(0):
                raise SpecError(f"{where}.analysis.duration", "must be longer than zero")
            steps.append(AnalysisStep(duration))
        else:
            body = _mapping(item["pause"], f"{where}.pause")
            duration = body.get("duration")
            steps.append(PauseStep(None if duration is None else _duration(duration, f"{where}.pause.duration")))
    if last_weight == 0:
        # Weights never decrease, so the last is the highest: without one above 0 the candidate is promoted
        # without any live traffic having been judged.
        raise SpecError(path, "must contain at least one setWeight above 0")
    return CanarySpec(tuple(steps))


def _parse_analysis(raw: Mapping[str, Any] | None) -> AnalysisSpec:
    if raw is None:
        return AnalysisSpec()
    path = "spec.analysis"
    prometheus = _optional_mapping(raw, "prometheus", path)
    interval = _duration(raw.get("interval"), f"{path}.interval", DEFAULT_ANALYSIS_INTERVAL)
    if interval < MIN_ANALYSIS_INTERVAL:
        # Each interval runs every metric's queries and writes status.
        raise SpecError(f"{path}.interval", f"must be at least {MIN_ANALYSIS_INTERVAL.total_seconds():g}s")
    on_inconclusive_raw = raw.get("onInconclusive", OnInconclusive.PAUSE.value)
    try:
        on_inconclusive = OnInconclusive(on_inconclusive_raw)
    except ValueError:
        raise SpecError(f"{path}.onInconclusive", "must be pause or rollback") from None
    metrics_raw = raw.get("metrics", [])
    if not isinstance(metrics_raw, list):
        raise SpecError(f"{path}.metrics", "must be a list")
    if len(metrics_raw) > MAX_METRICS:
        raise SpecError(f"{path}.metrics", f"must have at most {MAX_METRICS} metrics")
    metrics: list[MetricSpec] = []
    for index, item in enumerate(metrics_raw):
        metrics.append(_parse_metric(_mapping(item, f"{path}.metrics[{index}]"), f"{path}.metrics[{index}]"))
    names = [metric.name for metric in metrics]
    if len(set(names)) != len(names):
        raise SpecError(f"{path}.metrics", "metric names must be unique")
    return AnalysisSpec(
        prometheus=None if prometheus is None else PrometheusSpec(
            _http_url(_required_str(prometheus, "address", f"{path}.prometheus"), f"{path}.prometheus.address")),
        interval=interval, metrics=tuple(metrics), on_inconclusive=on_inconclusive)


def _parse_metric(raw: Mapping[str, Any], path: str) -> MetricSpec:
    name = _required_str(raw, "name", path)
    if ("proportion" in raw) == ("threshold" in raw):
        raise SpecError(path, "must set exactly one of proportion or threshold")
    beside = {key: raw[key] for key in _PROPORTION_LIMITS if key in raw}
    if "proportion" in raw:
        where = f"{path}.proportion"
        # DESIGN.md's example writes the limits beside `proportion`; inside it is accepted too, not both.
        inside = _mapping(raw["proportion"], where)
        for key in beside:
            if key in inside:
                raise SpecError(f"{path}.{key}", "is set both beside and inside proportion; keep one")
        body = {**beside, **inside}
        confidence = _number(body.get("confidence", 0.99), f"{where}.confidence")
        if not 0.5 <= confidence <= MAX_CONFIDENCE:
            raise SpecError(f"{where}.confidence", f"must be from 0.5 to {MAX_CONFIDENCE}")
        min_samples = body.get("minSamples", 200)
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or not 1 <= min_samples <= MAX_MIN_SAMPLES:
            raise SpecError(f"{where}.minSamples", f"must be an integer from 1 to {MAX_MIN_SAMPLES}")
        increase = _number(body.get("maxRelativeIncrease", 0.5), f"{where}.maxRelativeIncrease")
        if not 0 <= increase <= 100:
            raise SpecError(f"{where}.maxRelativeIncrease", "must be from 0 to 100 (as the CRD says)")
        max_rate = _fraction(body.get("maxRate"), f"{where}.maxRate")
        if max_rate is not None and not MAX_RATE_RANGE[0] <= max_rate <= MAX_RATE_RANGE[1]:
            raise SpecError(f"{where}.maxRate", "must be from 0.000001 to 0.999999 (a rate of 0 or 1 cannot be "
                            "exceeded credibly, and the test cannot be calibrated closer to either)")
        events = _query(_required_str(body, "events", where), f"{where}.events")
        total = _query(_required_str(body, "total", where), f"{where}.total")
        for key, query in (("events", events), ("total", total)):
            code = without_comments(query)  # one used only in a comment is no selector
            if "{{selector}}" not in code and "{{variant}}" not in code:
                raise SpecError(f"{where}.{key}", "must use {{selector}} (or {{variant}}) outside a `#` comment, "
                                "or canary and stable would be the same query and the canary would be compared with "
                                "itself")
        if PROMQL_TOKEN.findall(events) == PROMQL_TOKEN.findall(total):
            raise SpecError(f"{where}.events", "must be another query than total (whitespace aside), or every sample "
                            "counts as an event: canary and stable both read 100% and the metric can never fail")
        return MetricSpec(name=name, proportion=ProportionMetric(
            events=events, total=total,
            max_relative_increase=increase, max_rate=max_rate, confidence=confidence, min_samples=min_samples))
    if beside:
        raise SpecError(f"{path}.{next(iter(beside))}", "belongs to a proportion metric, not a threshold")
    where = f"{path}.threshold"
    body = _mapping(raw["threshold"], where)
    low = None if body.get("min") is None else _number(body["min"], f"{where}.min")
    high = None if body.get("max") is None else _number(body["max"], f"{where}.max")
    if low is None and high is None:
        raise SpecError(where, "must set min, max or both")
    if low is not None and high is not None and low > high:
        raise SpecError(f"{where}.min", "must not exceed max")
    failure_limit = body.get("failureLimit", 0)
    if isinstance(failure_limit, bool) or not isinstance(failure_limit, int) \
            or not 0 <= failure_limit <= MAX_FAILURE_LIMIT:
        raise SpecError(f"{where}.failureLimit", f"must be an integer from 0 to {MAX_FAILURE_LIMIT}")
    return MetricSpec(name=name, threshold=ThresholdMetric(query=_query(_required_str(body, "query", where),
                                                                        f"{where}.query"), min=low, max=high,
                                                           failure_limit=failure_limit))


def _parse_rollback(raw: Mapping[str, Any] | None) -> RollbackSpec:
    if raw is None:
        return RollbackSpec()
    return RollbackSpec(automatic=_bool(raw.get("automatic", True), "spec.rollback.automatic"),
                        revert_on_deletion=_bool(raw.get("revertOnDeletion", False), "spec.rollback.revertOnDeletion"))


def _parse_bake(raw: Mapping[str, Any] | None) -> BakeSpec | None:
    if raw is None:
        return None
    duration = _duration(raw.get("duration"), "spec.bake.duration")
    if duration <= timedelta(0):
        raise SpecError("spec.bake.duration", "must be longer than zero")
    baseline = _duration(raw.get("baseline"), "spec.bake.baseline", DEFAULT_BAKE_BASELINE)
    if baseline % timedelta(days=1) or baseline < timedelta(days=MIN_BAKE_BASELINE_DAYS):
        raise SpecError("spec.bake.baseline", f"must be whole days, at least {MIN_BAKE_BASELINE_DAYS}d, so that the "
                        "bake knows the class's usual rate and its day-to-day spread")
    return BakeSpec(duration=duration, baseline=baseline)


# --- small typed readers -----------------------------------------------------------------------------


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(path, "must be an object")
    return value


def _required_mapping(raw: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    if key not in raw:
        raise SpecError(f"{path}.{key}", "is required")
    return _mapping(raw[key], f"{path}.{key}")


def _optional_mapping(raw: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
    if raw.get(key) is None:
        return None
    return _mapping(raw[key], f"{path}.{key}")


def _required_str(raw: Mapping[str, Any], key: str, path: str) -> str:
    value = _optional_str(raw, key, path)
    if value is None:
        raise SpecError(f"{path}.{key}", "is required")
    return value


def _optional_str(raw: Mapping[str, Any], key: str, path: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SpecError(f"{path}.{key}", "must be a non-empty string")
    return value


def _recorded_url(url: str | None, path: str) -> str | None:
    """A URL the operator calls and records (status, Events, MLflow): well formed, and without a secret in it
    (user:password@, or a query that may hold a token or a signature; credentials belong in a Secret)."""
    if url is None or url.startswith("configmap://"):
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
    except ValueError as exc:
        # urlsplit quotes what it could not read as a port: with an "@" in the URL, part of a password that holds
        # a "/", "?" or "#" (review s33r4). Said without it then.
        raise SpecError(path, "is not a valid URL (it holds an '@': credentials belong in a Secret)" if "@" in url
                        else f"is not a valid URL: {exc}") from None
    if "@" in parts.netloc:
        raise SpecError(path, "must not carry user:password@ (it is recorded in status and in MLflow)")
    if parts.scheme in ("http", "https") and parts.port == 0:
        raise SpecError(path, "must have a port from 1 to 65535 (nothing answers on port 0)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise SpecError(path, "must not carry a query or a fragment (it is recorded in status and in MLflow, and a "
                        "query may hold a token; credentials belong in a Secret)")
    return url


def _http_url(url: str | None, path: str) -> str | None:
    """A recorded URL the operator sends HTTP requests to."""
    if url is not None and not url.startswith(_HTTP_SCHEMES):
        raise SpecError(path, "must be an http:// or https:// URL")
    return _recorded_url(url, path)


def _gate_url(raw: Mapping[str, Any], key: str, path: str) -> str | None:
    """An inference URL for the golden gate."""
    return _http_url(_optional_str(raw, key, path), f"{path}.{key}")


def _no_namespace(raw: Mapping[str, Any], path: str, why: str) -> None:
    if raw.get("namespace") is not None:
        raise SpecError(f"{path}.namespace", f"must not be set: {why}")


def _query(query: str, path: str) -> str:
    """A PromQL template using only the known variables, spelled exactly (as the CRD's rule); an unknown one
    would fail every analysis run instead."""
    for variable in TEMPLATE_VARIABLE.findall(query):
        if variable not in KNOWN_VARIABLES:
            raise SpecError(path, f"unknown template variable {{{{{variable}}}}}; allowed: "
                            + ", ".join(f"{{{{{known}}}}}" for known in KNOWN_VARIABLES))
    return query


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, "must be true or false")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(path, "must be a number")
    return float(value)


def _fraction(value: Any, path: str) -> float | None:
    if value is None:
        return None
    number = _number(value, path)
    if not 0 <= number <= 1:
        raise SpecError(path, "must be between 0 and 1")
    return number


def _duration(value: Any, path: str, default: timedelta | None = None) -> timedelta:
    if value is None:
        if default is None:
            raise SpecError(path, "is required")
        return default
    try:
        duration = parse_duration(value)
    except ValueError as exc:
        raise SpecError(path, str(exc)) from None
    if duration > MAX_DURATION:
        raise SpecError(path, f"must be at most {MAX_DURATION.days}d")
    return duration
