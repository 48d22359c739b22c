"""Seldon Core v2 refuses some experiments (validate.go) and keeps serving the split it last started, Ready
unchanged: the router must not read such a spec as in effect (review s34seldon), nor write one."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_traffic_seldon_rules import CANDIDATE_7, experiment_router, offline_standin

from controller.traffic.base import TargetStateError
from controller.traffic.seldon import scheduler_refusal

Obj = dict[str, Any]

READY = [{"type": t, "status": "True", "reason": r} for t, r in
         (("Ready", ""), ("ExperimentReady", "experiment active"), ("CandidatesReady", "Candidates ready"),
          ("MirrorReady", "Mirror ready"))]
DUPLICATED = "each candidate and mirror must be unique but found resource nsfw duplicated in experiment nsfw"


def test_a_rollback_seldon_refuses_is_not_ready_and_says_why() -> None:
    """The reviewer's case: a mirror of stable added by hand mid-canary, then a rollback writes stable as the one
    candidate. Seldon refuses it and users stay on the 50/50 split: no canary weight must not read as users back."""
    router, fake = experiment_router([{"name": "nsfw", "weight": 100}])
    router.stage(CANDIDATE_7, "6")
    router.set_weight(50, "7")
    fake.obj["status"] = {"conditions": copy.deepcopy(READY)}
    fake.obj["spec"]["mirror"] = {"name": "nsfw", "percent": 10}
    router.rollback()
    assert fake.obj["spec"]["candidates"] == [{"name": "nsfw", "weight": 100}]  # rollback is never refused
    before_seldon = router.observe()  # Seldon's operator has not written its error yet: the spec alone tells
    fake.obj["status"]["conditions"].append({"type": "ModelReady", "status": "False", "reason": DUPLICATED})
    after_seldon = router.observe()
    for state in (before_seldon, after_seldon):
        assert not state.ready and not state.canary_ready
        assert "Seldon refuses the experiment as written (nsfw is named twice among its candidates and mirror) " \
               "and keeps serving the split it last started" in state.message
    assert f"(ModelReady: {DUPLICATED})" in after_seldon.message
    assert "ModelReady" not in before_seldon.message


@pytest.mark.parametrize(("spec", "refusal"), [
    ({"default": "nsfw", "candidates": [{"name": "nsfw-v7", "weight": 100}]},
     "its default model nsfw is not among its candidates"),
    ({"candidates": [{"name": "nsfw", "weight": 50}, {"name": "nsfw", "weight": 50}]},
     "nsfw is named twice among its candidates and mirror"),
    ({"candidates": [{"name": "nsfw", "weight": 100}, {"name": "nsfw-v7", "weight": 0}],
      "mirror": {"name": "nsfw-v7", "percent": 100}},
     "nsfw-v7 is named twice among its candidates and mirror"),
    ({"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}],
      "mirror": {"name": "nsfw-shadow", "percent": 10}}, ""),
    ({"candidates": [{"name": "nsfw", "weight": 100}]}, ""),
    ({"candidates": [], "mirror": {"name": "nsfw", "percent": 10}}, ""),
    ({"candidates": []}, "it has no candidates and no mirror"),
], ids=["default-elsewhere", "candidate-twice", "mirror-is-candidate", "other-mirror", "no-default", "mirror-only",
        "empty"])
def test_scheduler_refusal_follows_seldons_rules(spec: Obj, refusal: str) -> None:
    assert scheduler_refusal(spec) == refusal


def test_the_rules_refuse_what_the_standin_refuses() -> None:
    """Two readings of Seldon's validate.go, kept apart (the stand-in must not lean on the router's): they agree."""
    from controller.devstack.seldon_standin import experiment_refusal
    names = ("nsfw", "nsfw-v7", None)
    for default in names:
        for first in names:
            for second in names:
                for mirror in names:
                    spec: Obj = {"candidates": [{"name": n, "weight": 50} for n in (first, second) if n]}
                    if default:
                        spec["default"] = default
                    if mirror:
                        spec["mirror"] = {"name": mirror, "percent": 10}
                    assert bool(scheduler_refusal(spec)) == bool(experiment_refusal("nsfw", spec)), spec


def test_a_stale_model_ready_from_an_earlier_spec_is_said_but_does_not_hold_the_target() -> None:
    """Seldon's operator never clears ModelReady: an experiment refused once and fixed since keeps it False. With
    no rule broken by the spec now, it is quoted, and the target still reads ready."""
    router, fake = experiment_router([{"name": "nsfw", "weight": 100}])
    fake.obj["status"] = {"conditions": [*copy.deepcopy(READY),
                                         {"type": "ModelReady", "status": "False", "reason": DUPLICATED}]}
    state = router.observe()
    assert state.ready
    assert state.message == (f"Seldon's ModelReady condition is False ({DUPLICATED}), though the experiment as "
                             "written breaks none of the rules its scheduler checks")


def test_writes_seldon_would_refuse_are_refused_before_any_write() -> None:
    """A default edited to a model not among the candidates: stage and set_weight would write an experiment Seldon
    refuses, whose weights would then read as in effect."""
    router, fake = experiment_router([{"name": "nsfw", "weight": 100}])
    router.stage(CANDIDATE_7, "6")
    fake.obj["spec"]["default"] = "nsfw-old"
    before, writes = copy.deepcopy(fake.obj), len(fake.applies)
    for write in (lambda: router.set_weight(10, "7"), router.promote, lambda: router.stage(CANDIDATE_7, "6")):
        with pytest.raises(TargetStateError, match=r"Seldon would refuse it \(its default model nsfw-old is not "
                                                   r"among its candidates\)"):
            write()
    assert fake.obj == before and len(fake.applies) == writes


def test_the_standin_keeps_a_refusals_model_ready_after_a_later_spec_is_started() -> None:
    """As Seldon's operator does (its status updates keep the conditions they do not set)."""
    obj: Obj = {"metadata": {"name": "nsfw", "namespace": "ns"},
                "spec": {"default": "nsfw", "candidates": [{"name": "nsfw", "weight": 100}],
                         "mirror": {"name": "nsfw", "percent": 10}}}
    standin, mesh = offline_standin(obj)
    standin.reconcile("ns", "nsfw")
    assert "nsfw" not in mesh.experiments
    del obj["spec"]["mirror"]
    standin.reconcile("ns", "nsfw")
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    assert mesh.experiments["nsfw"].candidates == [("nsfw", 100)]
    assert conditions["Ready"]["status"] == "True"
    assert (conditions["ModelReady"]["status"], conditions["ModelReady"]["reason"]) == ("False", DUPLICATED)
