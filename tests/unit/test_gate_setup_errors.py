"""Gate outcomes that say nothing about the model must never reject it.

An endpoint the gate could not reach (a wrong model name or protocol, the gateway's auth, a redirect) is
inconclusive, not a failure; a golden dataset that is not the pinned one fails the gate loudly, but the engine
rolls back without tagging the candidate rejected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from test_engine_support import World, spec_dict, verdict
from test_gate_support import CLASSES, endpoint, http_server, run

from controller.api import Phase
from controller.engine import REJECTED_TAG, TagRejected
from controller.gate import GateOptions, GateReport, evaluate_dataset_file
from controller.gate.formats import write_jsonl_dataset
from controller.registry.types import REJECTED_REASON_TAG
from controller.verdict import DATASET_INTEGRITY, Outcome, Verdict

BODY = "model m not found; token=secret-xyz"


def golden(tmp_path: Path, count: int = 40) -> tuple[Path, dict[str, object]]:
    features = np.zeros((count, 4))
    features[np.arange(count), np.arange(count) % 3] = 1.0
    path = tmp_path / "golden.jsonl"
    sha = write_jsonl_dataset(path, CLASSES, features, [CLASSES[i % 3] for i in range(count)])
    return path, {"uri": "configmap://golden/data", "sha256": sha,
                  "thresholds": {"minAccuracy": 0.9, "maxDisagreement": 0.05}}


def gate_against_status(tmp_path: Path, status: int, with_stable: bool = True) -> GateReport:
    path, spec = golden(tmp_path)

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        headers = {"Location": "http://example.com/"} if 300 <= status < 400 else None
        return web.Response(status=status, text=BODY, headers=headers)

    async def scenario() -> GateReport:
        async with http_server(handler) as url:
            return await evaluate_dataset_file(
                path, spec, endpoint(url), endpoint(url) if with_stable else None,
                options=GateOptions(batch_size=8, concurrency=1, retries=1, max_consecutive_unavailable=3))

    return run(scenario())


@pytest.mark.parametrize("status", [404, 401, 403, 405, 307])
def test_a_candidate_the_gate_could_not_reach_is_inconclusive_never_failed(tmp_path: Path, status: int) -> None:
    report = gate_against_status(tmp_path, status)
    assert report.outcome is Outcome.INCONCLUSIVE, report.reason
    responses = next(v for v in report.verdicts if v.name == "candidate.responses")
    assert responses.outcome is Outcome.INCONCLUSIVE
    assert report.reason.startswith("candidate.responses: ") and f"HTTP {status} (" in report.reason
    assert "candidate was unreachable for 3 batches in a row" in report.reason  # stopped early, as for a 503
    assert "secret" not in str(report.status) and "not found;" not in str(report.evidence)


def test_a_candidate_refusing_the_golden_input_still_fails(tmp_path: Path) -> None:
    report = gate_against_status(tmp_path, 500, with_stable=False)
    assert report.outcome is Outcome.FAIL and report.reason.startswith("candidate.responses: ")


def test_the_integrity_verdict_uses_the_shared_name(tmp_path: Path) -> None:
    path, spec = golden(tmp_path)
    report = run(evaluate_dataset_file(path, {**spec, "sha256": "0" * 64}, endpoint("http://127.0.0.1:9"), None))
    assert report.outcome is Outcome.FAIL and [v.name for v in report.verdicts] == [DATASET_INTEGRITY]


def test_the_pinned_sha256_is_compared_in_full_down_to_its_last_hex_digit(tmp_path: Path) -> None:
    path, spec = golden(tmp_path)
    sha = str(spec["sha256"])
    near = sha[:-1] + ("1" if sha[-1] == "0" else "0")
    report = run(evaluate_dataset_file(path, {**spec, "sha256": near}, endpoint("http://127.0.0.1:9"), None))
    assert report.outcome is Outcome.FAIL and [v.name for v in report.verdicts] == [DATASET_INTEGRITY]


# --- the engine -----------------------------------------------------------------------------------------


def rolled_back(world: World) -> bool:
    return world.status.phase in (Phase.ROLLED_BACK, Phase.FAILED, Phase.SUCCEEDED)


def integrity_failure() -> Verdict:
    return Verdict(DATASET_INTEGRITY, Outcome.FAIL, f"dataset sha256 mismatch: pinned {'a' * 64}, fetched "
                                                    f"{'b' * 64}; the data were changed or the pin is wrong")


def test_a_dataset_sha256_mismatch_rolls_back_without_rejecting_the_candidate() -> None:
    world = World(gate_verdicts=[integrity_failure()])
    world.run_until(rolled_back)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.message.startswith("Rolled back: golden gate dataset.sha256: dataset sha256 mismatch")
    assert world.status.rollback is not None and not world.status.rollback.reject_candidate
    assert not [action for action in world.executed if isinstance(action, TagRejected)]
    assert REJECTED_TAG not in world.registry.versions["7"]


@pytest.mark.parametrize("verdicts", [
    [verdict(Outcome.PASS, DATASET_INTEGRITY, "matches"), verdict(Outcome.FAIL, "minAccuracy", "0.80 < 0.97")],
    [verdict(Outcome.FAIL, "candidate.responses", "HTTP 500 x40")],
])
def test_an_ordinary_gate_failure_still_rejects_the_candidate(verdicts: list[Verdict]) -> None:
    world = World(gate_verdicts=verdicts)
    world.run_until(rolled_back)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.rollback is not None and world.status.rollback.reject_candidate
    assert [action.version for action in world.executed if isinstance(action, TagRejected)] == ["7"]
    assert world.registry.versions["7"][REJECTED_REASON_TAG].startswith("golden gate ")


def test_an_inconclusive_gate_rolled_back_by_policy_does_not_reject_the_candidate() -> None:
    spec = spec_dict()
    spec["analysis"] = {**spec["analysis"], "onInconclusive": "rollback"}
    world = World(spec=spec, gate_verdicts=[verdict(Outcome.INCONCLUSIVE, "candidate.responses",
                                                    "unavailable: HTTP 404 x20")])
    world.run_until(rolled_back)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.rollback is not None and not world.status.rollback.reject_candidate
    assert not [action for action in world.executed if isinstance(action, TagRejected)]
    assert REJECTED_TAG not in world.registry.versions["7"]
