"""KServe: a status that is bad or stale never reads as a confirmation (review s33kserve).

"Back on stable" (synced, ready, no canary weight) confirms a withdrawal, and a ready candidate at 0% confirms a
staging: each needs KServe's own evidence, not the absence of it. Objects are shaped as the router reads them back.
"""

from __future__ import annotations

from typing import Any

from controller.traffic.kserve import (
    ANN_STABLE_REVISION,
    ANN_STABLE_URI,
    ANN_STABLE_VERSION,
    ANN_VERSION,
    ANN_VERSION_URI,
    ANN_WITHDRAWN_REVISION,
    FIELD_MANAGER,
    TAG_ROUTING,
    knative_state,
    knative_view,
    standard_state,
    standard_view,
)

Obj = dict[str, Any]
V6, V8 = "mlflow-artifacts:/1/m-6", "mlflow-artifacts:/1/m-8"
R1, R2, R3 = "isvc-predictor-00001", "isvc-predictor-00002", "isvc-predictor-00003"
OURS = [{"manager": FIELD_MANAGER, "operation": "Apply",
         "fieldsV1": {"f:spec": {"f:predictor": {"f:canaryTrafficPercent": {}}}}}]
ROLLED_BACK = {ANN_VERSION: "6", ANN_VERSION_URI: V6, ANN_STABLE_VERSION: "6", ANN_STABLE_URI: V6,
               ANN_STABLE_REVISION: R1, ANN_WITHDRAWN_REVISION: R2}
# After a rollback, pinned: stable R1 rolled out, the copy of stable R3 latest and ready.
COMPONENT = {"latestRolledoutRevision": R1, "latestCreatedRevision": R3, "latestReadyRevision": R3}
ROUTE = [{"type": "PredictorRouteReady", "status": "True"}, {"type": "IngressReady", "status": "True"}]
PINNED_TRAFFIC = [{"revisionName": R1, "percent": 100, "tag": "prev", "url": "http://prev"},
                  {"revisionName": R3, "percent": 0, "tag": "latest", "url": "http://latest"}]


def knative(uri: str, annotations: dict[str, str], component: Obj, conditions: list[Obj] | None = None) -> Obj:
    status: Obj = {"observedGeneration": 5, "components": {"predictor": component}}
    if conditions is not None:
        status["conditions"] = conditions
    return {"metadata": {"name": "isvc", "namespace": "ns", "generation": 5, "resourceVersion": "1",
                         "annotations": annotations, "managedFields": OURS},
            "spec": {"predictor": {"model": {"storageUri": uri}, "canaryTrafficPercent": 0}},
            "status": status}


def back_on_stable(state: Any) -> bool:
    return state.synced and state.ready and not state.canary_weight


def test_knative_rolled_back_and_well_reported_reads_back_on_stable() -> None:
    """The control: stable at 100% with its route conditions is what a withdrawal waits for."""
    state = knative_state("t", knative_view(knative(V6, ROLLED_BACK, {**COMPONENT, "traffic": PINNED_TRAFFIC},
                                                    ROUTE), "t"))
    assert back_on_stable(state), state


def test_knative_status_without_traffic_split_is_not_synced_without_a_candidate() -> None:
    """README: "A KServe status without its traffic split reads as not yet synced", candidate in the spec or not."""
    state = knative_state("t", knative_view(knative(V6, ROLLED_BACK, dict(COMPONENT), ROUTE), "t"))
    assert not state.synced and "no traffic" in state.message


def test_knative_missing_route_conditions_are_not_ready() -> None:
    state = knative_state("t", knative_view(knative(V6, ROLLED_BACK, {**COMPONENT, "traffic": PINNED_TRAFFIC}, []),
                                            "t"))
    assert not state.ready
    assert "PredictorRouteReady or IngressReady" in state.message


def test_knative_split_giving_nobody_traffic_is_not_back_on_stable() -> None:
    zero = [{**t, "percent": 0} for t in PINNED_TRAFFIC]
    state = knative_state("t", knative_view(knative(V6, ROLLED_BACK, {**COMPONENT, "traffic": zero}, ROUTE), "t"))
    assert not back_on_stable(state) and not state.synced
    assert "sums to 0%" in state.message


def test_knative_split_missing_stable_is_not_back_on_stable() -> None:
    """The split names only the copy of stable at 0% (stable left out): not stable at 100%."""
    only_copy = [PINNED_TRAFFIC[1]]
    state = knative_state("t", knative_view(knative(V6, ROLLED_BACK, {**COMPONENT, "traffic": only_copy}, ROUTE),
                                            "t"))
    assert not back_on_stable(state)


def test_knative_candidate_at_zero_with_a_split_summing_to_zero_is_not_withdrawn() -> None:
    """Candidate still in the spec at 0%: a split with no share anywhere is no 0% canary either."""
    staged = {**ROLLED_BACK, ANN_VERSION: "8", ANN_VERSION_URI: V8, ANN_WITHDRAWN_REVISION: R1}
    r4 = "isvc-predictor-00004"
    component = {**COMPONENT, "latestCreatedRevision": r4, "latestReadyRevision": r4,
                 "traffic": [{"revisionName": R1, "percent": 0}, {"revisionName": r4, "percent": 0}]}
    state = knative_state("t", knative_view(knative(V8, staged, component, ROUTE), "t"))
    assert state.canary_weight == 0 and not state.synced


def test_knative_restaged_candidate_is_not_configured_without_the_condition() -> None:
    """PredictorConfigurationReady absent: the latest revision named is no evidence of the new spec's revision."""
    staged = {**ROLLED_BACK, ANN_VERSION: "8", ANN_VERSION_URI: V8, TAG_ROUTING: "true"}
    state = knative_state("t", knative_view(knative(V8, staged, {**COMPONENT, "traffic": PINNED_TRAFFIC}, ROUTE),
                                            "t"))
    assert not state.canary_ready, state


def test_knative_copy_of_stable_recorded_at_staging_is_never_the_candidate() -> None:
    """Staging over the copy of stable records it: a status that still names it latest (kserve#6081), even with
    PredictorConfigurationReady True, does not make it candidate 8."""
    staged = {**ROLLED_BACK, ANN_VERSION: "8", ANN_VERSION_URI: V8, TAG_ROUTING: "true", ANN_WITHDRAWN_REVISION: R3}
    conditions = [*ROUTE, {"type": "PredictorConfigurationReady", "status": "True"}]
    state = knative_state("t", knative_view(knative(V8, staged, {**COMPONENT, "traffic": PINNED_TRAFFIC},
                                                    conditions), "t"))
    assert state.canary_name != R3 and not state.canary_ready and state.canary_version is None, state


def standard(canary_statuses: list[Obj], canary: list[Obj] | None = None, predictor_name: str | None = None) -> Obj:
    predictor: Obj = {"model": {"storageUri": V6}}
    if predictor_name:
        predictor["name"] = predictor_name
    return {"metadata": {"name": "isvc", "namespace": "ns", "generation": 9, "resourceVersion": "1"},
            "spec": {"predictor": predictor, "canary": canary or []},
            "status": {"observedGeneration": 9, "conditions": [{"type": "PredictorReady", "status": "True"}],
                       "canaryStatuses": canary_statuses}}


def test_standard_stale_status_of_a_withdrawn_canary_counts_as_canary_weight() -> None:
    """Rolled back (spec.canary: []) while KServe still says v7 takes 50%: not back on stable."""
    state = standard_state("t", standard_view(standard([{"name": "v7", "ready": True, "trafficPercent": 50}]), "t"))
    assert state.canary_weight == 50 and not back_on_stable(state)
    assert "v7 (50%)" in state.message


def test_standard_status_of_stable_itself_is_not_canary_weight() -> None:
    """Promoted: stable took the canary's name; an entry by that name is stable's own share."""
    obj = standard([{"name": "v7", "ready": True, "trafficPercent": 100}], predictor_name="v7")
    state = standard_state("t", standard_view(obj, "t"))
    assert back_on_stable(state), state


def test_standard_withdrawn_canary_at_zero_is_back_on_stable() -> None:
    state = standard_state("t", standard_view(standard([{"name": "v7", "ready": True, "trafficPercent": 0}]), "t"))
    assert back_on_stable(state), state
