"""A name the gate's status keys a map by (a dataset class name: perClass; a slice tag: slices; a spec
thresholds.classes key: thresholds.classes) is never longer than 253 characters: the API server reads a server-side
apply as YAML, whose keys stop at 1024, so one longer key made every status write a 400 (review s25r2gate finding
3). A longer dataset class name or slice tag makes the gate inconclusive, saying which; a longer spec key (the CRD
refuses it now, one stored before still reaches the gate) too. The real gate runs against a loopback model server;
its result goes through the engine into the status the operator writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from test_gate_status_size import engine_status, labelling_model
from test_gate_support import endpoint, http_server, run

from controller.gate import GateOptions, GateReport, evaluate_dataset_file
from controller.gate.formats import write_jsonl_dataset
from controller.verdict import Outcome

MAX_KEY = 253


def keys(value: Any) -> list[str]:
    """Every map key anywhere in a JSON-like value."""
    if isinstance(value, dict):
        return [str(key) for key in value] + [key for item in value.values() for key in keys(item)]
    if isinstance(value, list):
        return [key for item in value for key in keys(item)]
    return []


def gate(tmp_path: Path, classes: tuple[str, ...], thresholds: dict[str, Any],
         slices: list[list[str]] | None = None) -> GateReport:
    index = np.repeat(np.arange(len(classes)), 25)
    path = tmp_path / "golden.jsonl"
    sha = write_jsonl_dataset(path, classes, index.reshape(-1, 1).astype(float), [classes[i] for i in index],
                              slices)

    async def scenario() -> GateReport:
        async with http_server(labelling_model(classes, False)) as url:
            return await evaluate_dataset_file(path, {"uri": "configmap://golden/data", "sha256": sha,
                                                      "thresholds": thresholds}, endpoint(url), endpoint(url),
                                               options=GateOptions(batch_size=100))

    return run(scenario())


def stored_status(report: GateReport, thresholds: dict[str, Any]) -> dict[str, Any]:
    status = engine_status(report, thresholds).status.to_dict()
    longest = max(keys(status), key=len)
    assert len(longest) <= MAX_KEY, f"a status key of {len(longest)} characters: {longest[:60]}..."
    return status


def test_a_dataset_class_name_too_long_for_a_status_key_makes_the_gate_inconclusive(tmp_path: Path) -> None:
    thresholds = {"minAccuracy": 0.5}
    for length in (254, 1023):
        report = gate(tmp_path, ("safe", "c" * length), thresholds)
        assert report.outcome is Outcome.INCONCLUSIVE, report.reason
        assert report.reason == (f"dataset: dataset unreadable: 1 class names are longer than 253 characters (the "
                                 f"first: '{'c' * 40}... ({length} characters)'): shorten them")
        stored_status(report, thresholds)
    report = gate(tmp_path, ("safe", "c" * 253), thresholds)  # the longest taken
    assert report.outcome is Outcome.PASS, report.reason
    assert "c" * 253 in stored_status(report, thresholds)["gate"]["report"]["candidate"]["metrics"]["perClass"]


def test_a_slice_tag_too_long_for_a_status_key_makes_the_gate_inconclusive(tmp_path: Path) -> None:
    thresholds = {"minAccuracy": 0.5}
    tag = "t" * 1024
    slices = [[tag] if i < 40 else ["ok"] for i in range(50)]
    report = gate(tmp_path, ("safe", "nsfw"), thresholds, slices)
    assert report.outcome is Outcome.INCONCLUSIVE, report.reason
    verdict = next(v for v in report.verdicts if v.name == "dataset.slices")
    assert verdict.reason == ("40 samples carry a slice tag longer than 253 characters (the first: "
                              f"'{'t' * 40}... (1024 characters)'), so those slices were not judged: shorten the "
                              "tags (status keys slices by tag, and the API server refuses keys that long)")
    status = stored_status(report, thresholds)
    assert set(status["gate"]["report"]["slices"]) == {"ok"}
    slices = [["t" * 253] if i < 40 else [] for i in range(50)]  # the longest taken
    assert gate(tmp_path, ("safe", "nsfw"), thresholds, slices).outcome is Outcome.PASS


def test_a_spec_class_key_too_long_for_a_status_key_is_inconclusive_and_left_out_of_status(tmp_path: Path) -> None:
    label = "n" * 1025
    thresholds = {"minAccuracy": 0.5, "classes": {label: {"minRecall": 0.5}, "nsfw": {"minRecall": 0.5}}}
    report = gate(tmp_path, ("safe", "nsfw"), thresholds)
    assert report.outcome is Outcome.INCONCLUSIVE, report.reason
    verdict = next(v for v in report.verdicts if v.name.endswith(".minRecall") and v.name != "nsfw.minRecall")
    assert verdict.name == f"{'n' * 40}... (1025 characters).minRecall"
    assert verdict.reason == ("thresholds name a class label of 1025 characters, over the 253 a class name may "
                              "have: shorten spec.goldenDataset.thresholds.classes")
    status = stored_status(report, thresholds)
    report_thresholds = status["gate"]["report"]["thresholds"]
    assert set(report_thresholds["classes"]) == {"nsfw"} and report_thresholds["classesTooLong"] == 1


def test_status_names_the_first_20_dataset_classes_and_counts_them(tmp_path: Path) -> None:
    classes = tuple(f"{'c' * 250}{i:03d}" for i in range(60))
    report = gate(tmp_path, classes, {"minAccuracy": 0.5})
    assert report.outcome is Outcome.PASS, report.reason
    dataset = report.status["dataset"]
    assert dataset["classes"] == list(classes[:20]) and dataset["classCount"] == 60
    assert report.evidence["dataset"]["classes"] == list(classes)  # the MLflow evidence keeps them all
    assert len(json.dumps(dataset)) < 10_000
