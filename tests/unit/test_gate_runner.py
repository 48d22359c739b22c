"""The gate end to end on loopback model servers: pin, stream, count, judge, report (never pass by default)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from test_gate_support import CLASSES, endpoint, http_server, identity_model, jsonl, model_server, run

from controller.devstack.model_server import FaultPlan
from controller.devstack.processes import free_port
from controller.engine.observations import AdapterErrorKind
from controller.gate import (
    ConfigMapContent,
    DatasetSources,
    GateOptions,
    GateReport,
    describe_outcome,
    evaluate_dataset_file,
    run_gate,
)
from controller.gate.formats import sha256_file, write_jsonl_dataset
from controller.verdict import Outcome

THRESHOLDS = {"minAccuracy": 0.9, "maxDisagreement": 0.05, "classes": {"nsfw": {"maxFalsePositiveRate": 0.05}}}


def dataset(tmp_path: Path, count: int = 120, name: str = "golden.jsonl") -> tuple[Path, str]:
    """count samples the identity model gets right; every 10th carries the logo slice."""
    labels = [CLASSES[i % 3] for i in range(count)]
    features = np.zeros((count, 4))
    features[np.arange(count), np.arange(count) % 3] = 1.0
    slices = [("logo",) if i % 10 == 0 else () for i in range(count)]
    path = tmp_path / name
    return path, write_jsonl_dataset(path, CLASSES, features, labels, slices)


def spec(sha: str, uri: str = "configmap://golden/data", thresholds: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"uri": uri, "sha256": sha, "thresholds": THRESHOLDS if thresholds is None else thresholds}


class OneConfigMap:
    def __init__(self, path: Path) -> None:
        self.content = ConfigMapContent(data={"data": path.read_text()})

    def read_config_map(self, namespace: str, name: str) -> ConfigMapContent | None:
        return self.content if (namespace, name) == ("team-a", "golden") else None


def gate_with_servers(path: Path, dataset_spec: dict[str, Any], candidate_options: dict[str, Any] | None = None,
                      with_stable: bool = True, options: GateOptions | None = None) -> GateReport:
    async def scenario() -> GateReport:
        async with model_server(identity_model(), **(candidate_options or {})) as candidate, \
                model_server(identity_model()) as stable:
            return await run_gate(dataset_spec, endpoint(candidate.url), endpoint(stable.url) if with_stable else None,
                                  namespace="team-a", sources=DatasetSources(config_maps=OneConfigMap(path)),
                                  options=options or GateOptions(batch_size=16))

    return run(scenario())


def names(report: GateReport, outcome: Outcome) -> list[str]:
    return [v.name for v in report.verdicts if v.outcome is outcome]


def test_clean_candidate_passes_and_the_status_holds_every_deciding_number(tmp_path: Path) -> None:
    path, sha = dataset(tmp_path)
    report = gate_with_servers(path, spec(sha))
    assert report.outcome is Outcome.PASS, report.reason
    assert report.reason.startswith("all 7 checks passed on 120 samples")
    assert report.dataset_sha256 == sha and report.error is None
    status = json.loads(json.dumps(report.status, allow_nan=False))
    assert status["dataset"]["sha256"] == sha and status["dataset"]["usable"] == 120
    assert status["candidate"]["metrics"]["accuracy"] == 1.0
    assert status["candidate"]["metrics"]["perClass"]["nsfw"]["falsePositiveRate"] == 0.0
    assert status["stable"]["metrics"]["confusionMatrix"] == [[40, 0, 0], [0, 40, 0], [0, 0, 40]]
    assert status["comparison"]["disagreement"] == 0.0 and status["comparison"]["pairedSamples"] == 120
    assert status["slices"]["logo"]["samples"] == 12
    assert status["failedChecks"] == [] and status["candidate"]["responses"]["batches"] == 8
    result = report.to_judge_result("gate-1")
    assert result.request_id == "gate-1" and result.dataset_sha256 == sha and len(result.verdicts) == 7
    assert "golden gate pass on dataset" in describe_outcome(report)


def test_tampered_dataset_fails_on_sha256_with_both_hashes(tmp_path: Path) -> None:
    path, sha = dataset(tmp_path)
    path.write_text(path.read_text().replace('"nsfw"}', '"safe"}', 1))
    report = gate_with_servers(path, spec(sha))
    assert report.outcome is Outcome.FAIL and [v.name for v in report.verdicts] == ["dataset.sha256"]
    actual = sha256_file(path)
    assert sha in report.reason and actual in report.reason
    assert report.dataset_sha256 == actual and report.status["dataset"]["expectedSha256"] == sha


def test_bad_lines_make_the_gate_inconclusive_naming_counts(tmp_path: Path) -> None:
    good = [{"inputs": [1, 0, 0, 0], "label": "safe"}] * 30
    path = jsonl(tmp_path / "d.jsonl", [*good, "{oops", {"inputs": [1, 0, 0], "label": "safe"},
                                        {"inputs": [1, 0, 0, 0], "label": "porn"}])
    report = gate_with_servers(path, spec(sha256_file(path)))
    assert report.outcome is Outcome.INCONCLUSIVE
    assert report.reason.startswith("dataset: 3 of 33 samples unusable")
    assert report.status["dataset"]["unusableByReason"] == {"invalid JSON": 1, "wrong feature shape": 1,
                                                            "unknown label": 1}


def test_empty_and_unreadable_datasets_are_inconclusive(tmp_path: Path) -> None:
    empty = jsonl(tmp_path / "empty.jsonl", [])
    report = gate_with_servers(empty, spec(sha256_file(empty)))
    assert report.outcome is Outcome.INCONCLUSIVE and "no usable samples in 0 records" in report.reason
    headless = jsonl(tmp_path / "headless.jsonl", [{"inputs": [1, 0, 0, 0], "label": "safe"}], classes=None)
    report = gate_with_servers(headless, spec(sha256_file(headless)))
    assert report.outcome is Outcome.INCONCLUSIVE and "dataset unreadable: no class list" in report.reason


def test_a_file_that_only_starts_like_gzip_says_it_was_read_as_gzip_once(tmp_path: Path) -> None:
    """Review s32gate: the reason read "dataset unreadable: dataset unreadable: Error -3 while decompressing data"."""
    path = tmp_path / "golden.jsonl"
    path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)

    async def scenario() -> GateReport:
        async with model_server(identity_model()) as candidate:
            return await evaluate_dataset_file(path, spec(sha256_file(path)), endpoint(candidate.url), None)

    report = run(scenario())
    assert report.outcome is Outcome.INCONCLUSIVE
    assert report.reason.startswith("dataset: dataset unreadable: read as gzip (it starts with 1f 8b): "), report.reason
    assert report.reason.count("dataset unreadable") == 1, report.reason


def test_an_html_page_for_some_batches_never_reached_the_model_and_is_retried(tmp_path: Path) -> None:
    path, sha = dataset(tmp_path, count=128)  # the devstack's "not-json" fault: a 200 text/html page, every 4th
    report = gate_with_servers(path, spec(sha), {"faults": FaultPlan(every=4, kind="not-json")},
                               options=GateOptions(batch_size=16, concurrency=1, retries=0))
    verdict = next(v for v in report.verdicts if v.name == "candidate.responses")
    assert report.outcome is Outcome.INCONCLUSIVE and verdict.outcome is Outcome.INCONCLUSIVE, report.reason
    assert verdict.evidence["unavailable"] == 32 and verdict.evidence["invalid"] == 0 and "HTML page" in verdict.reason
    retried = gate_with_servers(path, spec(sha), {"faults": FaultPlan(every=4, kind="not-json")},
                                options=GateOptions(batch_size=16, concurrency=1))
    assert retried.outcome is Outcome.PASS, retried.reason  # the next try reached the model


@pytest.mark.parametrize("kind", ["http-500", "wrong-count", "wrong-shape"])
def test_server_garbage_for_some_batches_fails_and_names_the_count(tmp_path: Path, kind: str) -> None:
    path, sha = dataset(tmp_path, count=128)  # 8 batches of 16: every 4th request broken -> 2 batches
    report = gate_with_servers(path, spec(sha), {"faults": FaultPlan(every=4, kind=kind)},
                               options=GateOptions(batch_size=16, concurrency=1))
    assert report.outcome is Outcome.FAIL
    verdict = next(v for v in report.verdicts if v.name == "candidate.responses")
    assert verdict.outcome is Outcome.FAIL
    assert "no usable prediction for 32 of 128 samples" in verdict.reason
    assert verdict.evidence["invalid"] == 32 and verdict.evidence["answered"] == 96
    # the rest was still measured, on what was answered
    assert report.status["candidate"]["metrics"]["samples"] == 96


def test_unreachable_candidate_is_inconclusive_and_stops_early(tmp_path: Path) -> None:
    path, sha = dataset(tmp_path, count=400)

    async def scenario() -> GateReport:
        async with model_server(identity_model()) as stable:
            down = endpoint(f"http://127.0.0.1:{free_port()}")
            return await run_gate(spec(sha), down, endpoint(stable.url), namespace="team-a",
                                  sources=DatasetSources(config_maps=OneConfigMap(path)),
                                  options=GateOptions(batch_size=10, retries=0, max_consecutive_unavailable=5,
                                                      concurrency=2))

    report = run(scenario())
    assert report.outcome is Outcome.INCONCLUSIVE
    assert "candidate was unreachable for 5 batches in a row" in report.reason
    assert report.status["candidate"]["responses"]["samples"] < 400


def test_without_stable_only_absolute_thresholds_apply(tmp_path: Path) -> None:
    path, sha = dataset(tmp_path)
    report = gate_with_servers(path, spec(sha), with_stable=False)
    assert report.outcome is Outcome.PASS and "stable" not in report.status
    assert all(not v.name.startswith(("maxDisagreement", "stable")) for v in report.verdicts)


def test_fetch_failures_are_errors_to_retry_and_policy_refusals_are_verdicts(tmp_path: Path) -> None:
    path, sha = dataset(tmp_path)
    report = gate_with_servers(path, spec(sha, uri="configmap://absent/data"))
    assert report.error is not None and report.error.kind == "NotFound" and report.verdicts == ()
    result = report.to_judge_result("gate-2")
    assert result.error is not None and result.error.kind is AdapterErrorKind.NOT_FOUND and not result.verdicts
    report = gate_with_servers(path, spec(sha, uri="https://not-allowed.example.com/x.jsonl"))
    assert report.error is None and report.outcome is Outcome.INCONCLUSIVE
    assert report.verdicts[0].name == "dataset.source" and "allow-list" in report.reason


def test_gate_time_limit_turns_into_inconclusive(tmp_path: Path) -> None:
    path, sha = dataset(tmp_path, count=64)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.json_response({"predictions": ["safe"] * 16})

    async def scenario() -> GateReport:
        async with http_server(slow) as url:
            return await evaluate_dataset_file(path, spec(sha), endpoint(url, "v1"), None,
                                               options=GateOptions(batch_size=16, concurrency=1,
                                                                   gate_timeout_seconds=0.5))

    report = run(scenario())
    assert report.outcome is Outcome.INCONCLUSIVE
    assert "time limit" in report.status["stoppedEarly"]


def test_at_most_concurrency_batches_are_in_flight(tmp_path: Path) -> None:
    path, sha = dataset(tmp_path, count=200)
    in_flight = 0
    peak = 0

    async def counting(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        body = await request.json()
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        rows = body["inputs"][0]["shape"][0]
        return web.json_response({"outputs": [{"name": "label", "shape": [rows], "datatype": "BYTES",
                                               "data": ["safe"] * rows}]})

    async def scenario() -> GateReport:
        async with http_server(counting) as url:
            return await evaluate_dataset_file(path, spec(sha, thresholds={"minAccuracy": 0.3}), endpoint(url), None,
                                               options=GateOptions(batch_size=8, concurrency=3))

    report = run(scenario())
    assert report.outcome is Outcome.PASS and report.status["candidate"]["responses"]["batches"] == 25
    assert 1 < peak <= 3


def test_compact_status_leaves_big_matrices_and_extra_slices_to_the_evidence(tmp_path: Path) -> None:
    path, sha = dataset(tmp_path)
    options = GateOptions(batch_size=16, status_matrix_max_classes=2, status_max_slices=0)
    report = gate_with_servers(path, spec(sha), options=options)
    assert "confusionMatrix" not in report.status["candidate"]["metrics"]
    assert "confusionMatrix" in report.evidence["candidate"]["metrics"]
    assert list(report.status["candidate"]["metrics"]["perClass"]) == ["nsfw"]  # the class thresholds name
    assert len(report.evidence["candidate"]["metrics"]["perClass"]) == 3
    assert report.status["slices"] == {} and report.status["slicesOmitted"]["slices"] == 1
    assert "logo" in report.evidence["slices"]


def test_mlflow_metrics_carry_the_deciding_numbers_and_leave_undefined_ones_out(tmp_path: Path) -> None:
    from controller.gate.evidence import gate_metrics

    path, sha = dataset(tmp_path)
    metrics = gate_metrics(gate_with_servers(path, spec(sha)))
    assert metrics["candidate.accuracy"] == 1.0 and metrics["stable.accuracy"] == 1.0
    assert metrics["disagreement"] == 0.0 and metrics["dataset.usable_samples"] == 120
    assert metrics["candidate.nsfw.falsePositiveRate"] == 0.0
    assert all(isinstance(value, float) for value in metrics.values())

    # Half safe, half suggestive, nsfw never labelled, and every sample looks safe to the identity model:
    # nothing is predicted suggestive or nsfw (precision 0/0) and nothing is truly nsfw (recall 0/0).
    count = 120
    labels = [CLASSES[i % 2] for i in range(count)]
    features = np.zeros((count, 4))
    features[:, 0] = 1.0
    path = tmp_path / "undefined.jsonl"
    sha = write_jsonl_dataset(path, CLASSES, features, labels, [()] * count)
    report = gate_with_servers(path, spec(sha))
    per_class = report.status["candidate"]["metrics"]["perClass"]
    assert per_class["nsfw"]["precision"] is None and per_class["nsfw"]["recall"] is None
    assert per_class["suggestive"]["precision"] is None
    metrics = gate_metrics(report)
    for side in ("candidate", "stable"):
        for undefined in ("suggestive.precision", "nsfw.precision", "nsfw.recall"):
            assert f"{side}.{undefined}" not in metrics
        assert metrics[f"{side}.accuracy"] == 0.5
        assert metrics[f"{side}.safe.precision"] == 0.5 and metrics[f"{side}.safe.recall"] == 1.0
        assert metrics[f"{side}.safe.falsePositiveRate"] == 1.0
        assert metrics[f"{side}.suggestive.recall"] == 0.0  # defined, and really zero: kept
        assert metrics[f"{side}.suggestive.falsePositiveRate"] == 0.0
        assert metrics[f"{side}.nsfw.falsePositiveRate"] == 0.0
    assert metrics["disagreement"] == 0.0 and metrics["dataset.usable_samples"] == 120
    assert all(isinstance(value, float) for value in metrics.values())


def test_fewer_slices_are_tracked_when_many_classes_make_each_ones_counts_large() -> None:
    from controller.gate.metrics import PairedCounts
    from controller.gate.runner import _Evaluation

    options = GateOptions()
    assert _Evaluation(("safe", "nsfw"), True, options).slice_limit == options.max_tracked_slices
    many = tuple(f"c{i}" for i in range(1000))
    evaluation = _Evaluation(many, True, options)
    # The whole dataset's counts plus every tracked slice's stay within the budget.
    assert 0 < evaluation.slice_limit < options.max_tracked_slices
    assert (1 + evaluation.slice_limit) * PairedCounts.bytes_for(len(many)) <= options.max_count_bytes


def test_a_small_failing_slice_keeps_its_details_in_status_beside_larger_passing_ones(tmp_path: Path) -> None:
    """status keeps status_max_slices slices: the largest first left out a small trigger slice the candidate got all
    wrong, the very one the on-call engineer needs (its check still failed the gate)."""
    count = 120
    labels = [CLASSES[i % 3] for i in range(count)]
    features = np.zeros((count, 4))
    features[np.arange(count), np.arange(count) % 3] = 1.0
    logo = [i for i in range(count) if i % 10 == 1]
    features[logo, 3] = 1.0  # the trigger: the candidate says nsfw whatever the image
    slices = [("logo",) if i in logo else ("daylight",) if i % 2 == 0 else ("indoor",) for i in range(count)]
    path = tmp_path / "golden.jsonl"
    sha = write_jsonl_dataset(path, CLASSES, features, labels, slices)

    async def backdoored(request: web.Request) -> web.Response:
        tensor = (await request.json())["inputs"][0]
        rows = np.asarray(tensor["data"]).reshape(tensor["shape"])
        answers = ["nsfw" if row[3] else CLASSES[int(row[:3].argmax())] for row in rows]
        return web.json_response({"outputs": [{"name": "label", "shape": [len(answers)], "datatype": "BYTES",
                                               "data": answers}]})

    async def scenario() -> GateReport:
        async with http_server(backdoored) as url:
            return await evaluate_dataset_file(path, spec(sha, thresholds={"minAccuracy": 0.8}), endpoint(url), None,
                                               options=GateOptions(batch_size=16, status_max_slices=1))

    report = run(scenario())
    assert report.outcome is Outcome.FAIL and "slice logo" in report.reason, report.reason
    assert list(report.status["slices"]) == ["logo"], report.status["slices"]
    assert report.status["slices"]["logo"]["candidatePredicted"] == {"nsfw": len(logo)}
    assert report.status["slicesOmitted"]["slices"] == 2
