"""The gate's MLflow evidence (gate-report.json) for a 1000-class golden set (the most a spec may have) with a stable
and several slices stays small, and building it stays cheap: it was 195 MiB of indented JSON holding a dozen dense
million-cell matrices, and serializing it took the operator past its 1Gi memory limit (review s29gate finding 1).
The gate runs for real against a loopback model server."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import numpy as np
import pytest
from test_gate_status_size import labelling_model
from test_gate_support import endpoint, http_server, run

from controller.gate import GateOptions, GateReport, evaluate_dataset_file
from controller.gate.formats import write_jsonl_dataset
from controller.gate.mlflow_access import json_bytes

K = 1000
PER_CLASS = 4
SLICES = 5
CLASSES = tuple(f"imagenet_class_{i:04d}" for i in range(K))
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> GateReport:
    """Candidate answers the next class (every answer wrong, a flip from stable's), stable answers right."""
    index = np.repeat(np.arange(K), PER_CLASS)
    path = tmp_path_factory.mktemp("golden") / "golden.jsonl"
    sha = write_jsonl_dataset(path, CLASSES, index.reshape(-1, 1).astype(float), [CLASSES[i] for i in index],
                              slices=[[f"slice{row % SLICES}"] for row in range(len(index))])

    async def scenario() -> GateReport:
        async with http_server(labelling_model(CLASSES, wrong=True)) as candidate, \
                http_server(labelling_model(CLASSES, wrong=False)) as stable:
            return await evaluate_dataset_file(path, {"uri": "configmap://golden/data", "sha256": sha,
                                                      "thresholds": {"minAccuracy": 0.5}},
                                               endpoint(candidate), endpoint(stable),
                                               options=GateOptions(batch_size=1000, concurrency=2))

    return run(scenario())


def artifact(report: GateReport) -> bytes:
    """The bytes record_gate_evidence uploads as gate-report.json."""
    return json_bytes({"verdicts": [v.to_dict() for v in report.verdicts], "gate": report.evidence})


def dense(matrix: dict[str, Any]) -> np.ndarray:
    """A sparse evidence matrix read back as its artifact says (matrixFormat)."""
    result = np.zeros(matrix["shape"], dtype=np.int64)
    for row, column, count in matrix["cells"]:
        result[row, column] = count
    return result


def test_a_1000_class_report_with_slices_is_small_and_reads_back(report: GateReport) -> None:
    assert len(report.evidence["slices"]) == SLICES and report.evidence["dataset"]["classCount"] == K
    body = artifact(report)
    # Old: 195 MiB indented, 25 MiB compact but dense (13 matrices of a million cells).
    assert len(body) < 4 * MiB, f"gate-report.json is {len(body) / MiB:.1f} MiB"
    gate = json.loads(body)["gate"]
    assert "non-zero" in gate["matrixFormat"] and "dataset.classes" in gate["matrixFormat"]
    shifted = np.roll(np.eye(K, dtype=np.int64), 1, axis=1) * PER_CLASS  # true i -> predicted i + 1
    assert (dense(gate["candidate"]["metrics"]["confusionMatrix"]) == shifted).all()
    assert (dense(gate["stable"]["metrics"]["confusionMatrix"]) == np.eye(K, dtype=np.int64) * PER_CLASS).all()
    assert (dense(gate["comparison"]["flipMatrix"]) == shifted).all()  # stable's i -> candidate's i + 1
    one_slice = gate["slices"]["slice0"]
    assert dense(one_slice["candidateConfusionMatrix"]).sum() == one_slice["samples"] == K * PER_CLASS // SLICES
    assert dense(one_slice["comparison"]["flipMatrix"]).sum() == one_slice["samples"]
    # status (etcd) keeps no matrix for this many classes, and rows of every cell for a few.
    assert "confusionMatrix" not in report.status["candidate"]["metrics"]


def test_building_the_report_takes_little_memory(report: GateReport) -> None:
    tracemalloc.start()
    try:
        body = artifact(report)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Generous: old, the indented dense report peaked at well over 1 GiB of RSS; the body itself is a few MiB.
    assert peak < 64 * MiB, f"building gate-report.json ({len(body) / MiB:.1f} MiB) peaked at {peak / MiB:.0f} MiB"
