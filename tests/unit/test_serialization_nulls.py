"""None inside the status's free-form maps (verdict evidence, gate report, rollback evidence) is left out.

Argo CD drops nulls when it loads an object into an action's Lua, so a null in status made every action's result
differ from the live object there, and argocd-server patched /status with its copy (test_argocd_health.py has the
action test). A reader must then see a missing key as it saw the None; the one that did not (an abort's hold on
"whatever candidate waits") is tested here.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from test_engine_support import T0, World, spec_dict

from controller.analysis.judges import proportion_judge, threshold_judge
from controller.api import CommandAction
from controller.api.serialization import to_json
from controller.api.status import AnalysisMode, AnalysisStatus, ModelRolloutStatus, Phase
from controller.verdict import Verdict

NEW_SHA = "9a1e" + "0" * 60


def argocd_loaded(value: Any) -> Any:
    """What survives Argo CD's decodeValue (gopher-lua): null map values and null list items are dropped."""
    if isinstance(value, dict):
        return {key: argocd_loaded(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [argocd_loaded(item) for item in value if item is not None]
    return value


def real_verdicts() -> tuple[Verdict, ...]:
    """The judges' own verdicts: a proportion without maxRate, a threshold with only a maximum."""
    verdicts = (proportion_judge("nsfw-rate", 3, 1400, 280, 140000, queries={"canary": "q"},
                                 window={"start": "s", "end": "e"}),
                threshold_judge("p99-latency", 0.2, maximum=0.5, query="q2"))
    assert verdicts[0].evidence["max_rate"] is None and verdicts[1].evidence["min"] is None  # what is tested
    return verdicts


def test_to_json_leaves_none_out_of_maps_at_any_depth_and_keeps_list_positions() -> None:
    value = {"a": None, "b": {"c": None, "d": 0, "e": False, "f": ""}, "g": [None, 1, {"h": None, "i": 2}],
             "j": ({"k": None},)}
    assert to_json(value) == {"b": {"d": 0, "e": False, "f": ""}, "g": [None, 1, {"i": 2}], "j": [{}]}


def test_a_status_of_real_verdicts_holds_no_null_and_reads_back_as_the_none_did() -> None:
    verdicts = real_verdicts()
    status = ModelRolloutStatus(phase=Phase.PROGRESSING, analysis=AnalysisStatus(
        mode=AnalysisMode.CANARY, window_start=T0, runs=1, metrics=verdicts))
    written = status.to_dict()
    assert argocd_loaded(written) == written
    metrics = ModelRolloutStatus.from_dict(written).analysis.metrics  # type: ignore[union-attr]
    for before, after in zip(verdicts, metrics, strict=True):
        nulls = {key for key, item in before.evidence.items() if item is None}
        assert nulls and not nulls & set(after.evidence)  # a reader's .get finds None, as before
        assert dict(after.evidence) == to_json(dict(before.evidence))


def _aborted_while_rolling_back_to_gate_again() -> World:
    """An abort while a re-pinned dataset's rollback makes way for the same candidate, with the registry away: the
    engine cannot name the new candidate, so the abort holds back whatever waits."""
    spec = spec_dict(bake=None, model={"name": "nsfw-classifier", "alias": "challenger", "stableAlias": "production"})
    world = World(spec=spec)
    world.registry.versions["9"] = {}
    world.registry.aliases["challenger"] = "7"
    world.run_until(lambda w: w.status.phase is Phase.PROGRESSING and w.status.current_step == 1)
    world.target.frozen = True
    world.spec = {**world.spec, "goldenDataset": {**world.spec["goldenDataset"], "sha256": NEW_SHA}}
    world.generation += 1
    world.reconcile()
    assert world.status.rollback is not None and world.status.rollback.restart
    world.registry.down = True
    world.send(CommandAction.ABORT, command_id="abort-1")
    world.reconcile()
    assert world.status.history[-1].detail == "abort: the rollback goes on and the new candidate is not started"
    return world


def _finish_and_offer_another_version(world: World) -> None:
    world.registry.down = False
    world.target.frozen = False
    world.run_until(lambda w: w.status.phase is Phase.ROLLED_BACK)
    world.registry.aliases["challenger"] = "9"
    for _ in range(5):
        world.advance(timedelta(minutes=1))
        world.reconcile()


def test_an_abort_holding_back_whatever_waits_survives_a_status_without_nulls() -> None:
    world = _aborted_while_rolling_back_to_gate_again()
    # An Argo CD action clicked now (or any writer that drops nulls) writes the status back without them.
    world.status = ModelRolloutStatus.from_dict(argocd_loaded(world.status.to_dict()))
    _finish_and_offer_another_version(world)
    assert world.status.phase is Phase.ROLLED_BACK
    assert world.status.candidate is not None and world.status.candidate.version == "7"
    assert world.target.canary_version != "9"


def test_an_abort_hold_an_older_operator_wrote_as_null_is_kept_when_the_status_is_written_again() -> None:
    world = _aborted_while_rolling_back_to_gate_again()
    rollback = world.status.rollback
    assert rollback is not None
    older = dataclasses.replace(rollback, evidence={**rollback.evidence, "not_started": None})
    world.status = dataclasses.replace(world.status, rollback=older)
    world.reconcile()
    assert world.status.rollback is not None and world.status.rollback.evidence.get("not_started") == "*"
    _finish_and_offer_another_version(world)
    assert world.status.candidate is not None and world.status.candidate.version == "7"
