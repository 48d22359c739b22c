"""An adapter's words are cut before status copies them (review s40obs F1).

A webhook's long refusal or a proxy's HTML error page was kept whole and copied into status several times (message,
retry, the action's ledger, history, the rollback's reason): past etcd's 1.5 MiB the API server refused the status
with everything decided, so a rollback was never stored nor acted on, and traffic stayed on the canary.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from test_engine_support import World
from test_gate_runner import dataset, gate_with_servers, spec

from controller.api.status import Phase, RollbackCause
from controller.engine.actions import Action, SetCanaryWeight
from controller.engine.decide import _clean_verdict
from controller.engine.observations import (
    ActionFailure,
    AdapterError,
    AdapterErrorKind,
    JudgeResult,
    TargetObservation,
)
from controller.gate.errors import SourcePolicyError
from controller.operator import kubeapi
from controller.text_bounds import WORDS_MAX
from controller.verdict import Outcome, Verdict

ETCD_LIMIT = int(1.5 * 1024 * 1024)
REFUSAL = ('admission webhook "policy.example" denied the request: ' + "violation; " * 100_000)  # ~1.1 MB


class RefusingWorld(World):
    """The target refuses every new canary weight with REFUSAL once `refuse` is set."""

    refuse = False

    def execute(self, action: Action) -> tuple[JudgeResult | None, JudgeResult | None, ActionFailure | None]:
        if self.refuse and isinstance(action, SetCanaryWeight) and not action.withdraw:
            self.executed.append(action)
            return None, None, ActionFailure(action.id, AdapterError(AdapterErrorKind.INVALID, REFUSAL))
        return super().execute(action)


def test_a_megabyte_refusal_leaves_every_decided_status_small_and_the_rollback_stored() -> None:
    world = RefusingWorld()
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and (w.status.canary_weight or 0) > 0)
    world.refuse = True
    sizes: list[int] = []
    world.on_decision = lambda _status, _obs, decision: sizes.append(len(json.dumps(decision.status.to_dict())))
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK, step=timedelta(minutes=1))
    rollback = world.status.rollback
    assert rollback is not None and rollback.cause is RollbackCause.PROGRESS_DEADLINE_EXCEEDED
    assert "denied the request" in rollback.reason and "characters cut" in rollback.reason
    assert sizes and max(sizes) < 100 * 1024 < ETCD_LIMIT, max(sizes)


def test_adapter_words_are_cut_saying_how_much() -> None:
    error = AdapterError(AdapterErrorKind.INVALID, REFUSAL)
    assert len(error.message) < WORDS_MAX + 80
    assert error.message.startswith(REFUSAL[:WORDS_MAX])
    assert f"of {len(REFUSAL)} characters cut" in error.message
    assert AdapterError(AdapterErrorKind.INVALID, "refused").message == "refused"
    detail = TargetObservation(detail="<html>" + "x" * 10_000).detail
    assert len(detail) < WORDS_MAX + 80 and "characters cut" in detail


def test_an_api_servers_long_answer_is_cut_after_its_credentials_are_redacted() -> None:
    token = "operator-SA-TOKEN-xyz"
    configuration = client.Configuration()
    configuration.api_key = {"BearerToken": f"Bearer {token}"}
    page = f"<html><body>bad gateway for Bearer {token} " + "<p>padding</p>" * 50_000 + f" {token}</body></html>"
    refused = ApiException(status=502, reason="Bad Gateway")
    refused.body = page
    text = kubeapi.api_message(refused, configuration)
    assert len(text) < WORDS_MAX + 80 and "characters cut" in text
    assert token not in text and "bad gateway for" in text


def test_a_gate_refusing_a_huge_location_keeps_its_verdict_and_report_small(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """s40r3: the gate's dataset.source verdict quoted MLflow's download URI whole (any length), in the verdict and
    in the report status keeps: no AdapterError, so no cut, and status went past etcd's limit again."""
    from controller.gate import runner

    location = "s3://models-bucket/nsfw/" + "a/" * 300_000 + "model"

    async def refuse(*_args: object, **_kwargs: object) -> None:
        raise SourcePolicyError(f"{location}: not served by the tracking server's artifact proxy")

    monkeypatch.setattr(runner, "fetch_dataset", refuse)
    path, sha = dataset(tmp_path)
    report = gate_with_servers(path, spec(sha, uri="models:/golden/1/nsfw.jsonl"))
    assert report.outcome is Outcome.INCONCLUSIVE and report.verdicts[0].name == "dataset.source"
    assert len(report.verdicts[0].reason) < WORDS_MAX + 80 and "characters cut" in report.verdicts[0].reason
    assert len(json.dumps(report.status)) < 20_000


def test_the_engine_cuts_a_huge_verdict_reason_whoever_made_it() -> None:
    huge = Verdict("nsfw", Outcome.FAIL, "rate above the margin: " + "x" * 1_000_000, {"value": 1})
    kept = _clean_verdict(huge)
    assert len(kept.reason) < WORDS_MAX + 80 and kept.reason.startswith("rate above the margin: x")
