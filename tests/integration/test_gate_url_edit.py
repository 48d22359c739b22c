"""A gate URL fixed while the gate runs is the URL judged (README: "The gate's candidateUrl/stableUrl may be fixed at
any time"), on the local stack (real API server, MLflow, model servers, KServe stand-in, the operator as a process).

The backdoored candidate's candidateUrl first names stable's server by mistake, behind a proxy that holds the gate's
requests; on-call fixes it mid-gate, and only then does stable's server answer. Before, the run at the mistaken URL
decided: the candidate passed, judged at stable's server, and was promoted (review s25gate). The gate now starts
again at the fixed URL, where the candidate fails it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from controller.devstack.scenario import Scenario
from tests.integration.test_rollout_kserve_lifecycle import RecordingProxy, Rig, rig, scenario_factory  # noqa: F401

pytestmark = pytest.mark.integration


def test_a_candidate_url_fixed_mid_gate_is_the_url_judged(
        rig: Rig, scenario_factory: Callable[..., Scenario]) -> None:  # noqa: F811 - fixtures
    scenario = scenario_factory("backdoored")
    name = scenario.model_name
    candidate_server = scenario.servers[scenario.storage_uri(scenario.candidate_version)].url
    mistaken = RecordingProxy(scenario.servers[scenario.storage_uri(scenario.stable_version)].url).start()
    mistaken.open.clear()  # stable's server answers only once the URL has been fixed
    try:
        rig.start_operator()
        manifest = scenario.rollout()
        manifest["spec"]["target"]["kserve"]["candidateUrl"] = mistaken.url
        rig.apply(manifest)
        rig.wait(name, lambda s: s.get("phase") == "Gating" and mistaken.waiting > 0, timeout=60,
                 what="the gate's requests held at the mistaken URL")
        manifest["spec"]["target"]["kserve"]["candidateUrl"] = candidate_server
        rig.apply(manifest)
        generation = rig.rollout(name)["metadata"]["generation"]
        rig.wait(name, lambda s: s.get("observedGeneration") == generation, timeout=30, what="the fix seen")
        mistaken.open.set()
        gate = rig.wait(name, lambda s: bool((s.get("gate") or {}).get("completedAt")), timeout=60,
                        what="the gate's verdict")["gate"]
    finally:
        mistaken.open.set()
        mistaken.stop()
    judged = ((gate.get("report") or {}).get("candidate") or {}).get("url", "")
    assert judged.startswith(candidate_server), judged
    assert gate["outcome"] == "fail", gate
