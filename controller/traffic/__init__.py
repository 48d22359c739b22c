"""Traffic routers: one small interface (base.TrafficRouter), one implementation per serving system.

    router = router_for(spec["target"], namespace, api_client)
    router.stage(CandidateModel(name, version, storage_uri), stable_version="6")
    state = router.observe()          # poll until state.synced and state.canary_ready
    router.set_weight(10) ... router.promote() | router.rollback() | router.restore(stable)

Every write is a server-side apply by the field manager "modelrollout-controller" of only the fields
the router owns, in the router's own namespace; every operation is idempotent.
"""

from controller.traffic.base import (
    AccessDenied,
    CandidateModel,
    ConflictError,
    DeploymentMode,
    PatchRejected,
    TargetNotFound,
    TargetState,
    TargetStateError,
    TargetUnavailable,
    TrafficError,
    TrafficRouter,
)
from controller.traffic.factory import router_for
from controller.traffic.kserve import KServeRouter
from controller.traffic.seldon import SeldonDeploymentRouter, SeldonExperimentRouter

__all__ = [
    "AccessDenied",
    "CandidateModel",
    "ConflictError",
    "DeploymentMode",
    "KServeRouter",
    "PatchRejected",
    "SeldonDeploymentRouter",
    "SeldonExperimentRouter",
    "TargetNotFound",
    "TargetState",
    "TargetStateError",
    "TargetUnavailable",
    "TrafficError",
    "TrafficRouter",
    "router_for",
]
