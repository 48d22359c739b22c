"""Pick the router for a ModelRollout's spec.target."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes import client

from controller.traffic.base import DeploymentMode, TrafficRouter
from controller.traffic.kserve import KServeRouter
from controller.traffic.seldon import SeldonDeploymentRouter, SeldonExperimentRouter


def _target_mapping(spec_target: Mapping[str, Any] | Any) -> Mapping[str, Any]:
    """Accept the raw spec.target mapping or the parsed controller.api.spec.TargetSpec."""
    if isinstance(spec_target, Mapping):
        return spec_target
    if getattr(spec_target, "kserve", None) is not None:
        return {"kserve": {"inferenceService": spec_target.kserve.inference_service}}
    if getattr(spec_target, "seldon_deployment", None) is not None:
        sd = spec_target.seldon_deployment
        return {"seldonDeployment": {"name": sd.name, "stablePredictor": sd.stable_predictor,
                                     "canaryPredictor": sd.canary_predictor}}
    if getattr(spec_target, "seldon_experiment", None) is not None:
        return {"seldonExperiment": {"name": spec_target.seldon_experiment.name}}
    raise ValueError(f"not a ModelRollout target: {spec_target!r}")


def router_for(spec_target: Mapping[str, Any] | Any, namespace: str, api_client: client.ApiClient, *,
               kserve_default_mode: DeploymentMode | str | None = None,
               settle_timeout: float = 10.0, gate_hosts: Iterable[str] = ()) -> TrafficRouter:
    """The router for `spec_target`, bound to `namespace` (the ModelRollout's own: targets never cross it).

    No API call is made here; KServe's deployment mode is read from the InferenceService on each
    operation, so a router stays right if the object is recreated in another mode.
    kserve_default_mode: the cluster's inferenceservice-config default, for InferenceServices that
    carry neither status.deploymentMode nor the deploymentMode annotation.
    gate_hosts: the hosts the operator allows the gate to call (operator run --gate-hosts): a SeldonDeployment's
    status, which its editors can write, may name one of them beside the namespace's own Services.
    """
    target = _target_mapping(spec_target)
    present = [key for key in ("kserve", "seldonDeployment", "seldonExperiment") if target.get(key)]
    if len(present) != 1:
        raise ValueError("spec.target needs exactly one of kserve, seldonDeployment or seldonExperiment")
    body = target[present[0]]
    if present[0] == "kserve":
        return KServeRouter(api_client, namespace, body["inferenceService"], default_mode=kserve_default_mode,
                            settle_timeout=settle_timeout)
    if present[0] == "seldonDeployment":
        return SeldonDeploymentRouter(api_client, namespace, body["name"], body["stablePredictor"],
                                      body["canaryPredictor"], gate_hosts=gate_hosts)
    return SeldonExperimentRouter(api_client, namespace, body["name"])
