"""The model registry adapter: resolve versions and aliases, promote, roll back, tag (MLflow aliases and tags).

Usage from the operator (synchronous; call it through asyncio.to_thread):

    registry = MlflowRegistry(spec.registry.tracking_uri, Credentials.from_secret_data(secret.data))
    candidate = registry.resolve(model.name, version=model.version, alias=model.alias)
    stable = registry.resolve_stable(model.name, model.stable_alias)

Imports only what mlflow-skinny provides.
"""

from controller.registry.base import ModelRegistry
from controller.registry.errors import (
    RegistryAccessDenied,
    RegistryConfigError,
    RegistryError,
    RegistryRequestError,
    RegistryUnavailable,
    VersionNotFound,
)
from controller.registry.memory import InMemoryRegistry
from controller.registry.mlflow_rest import MlflowRegistry, RequestPolicy, validated_tracking_uri
from controller.registry.types import (
    PREVIOUS_VERSION_TAG,
    PROMOTED_ROLLOUT_TAG,
    PROMOTED_TIME_TAG,
    REJECTED_BY_TAG,
    REJECTED_EVIDENCE_TAG,
    REJECTED_REASON_TAG,
    REJECTED_ROLLOUT_TAG,
    REJECTED_TAG,
    REJECTED_TIME_TAG,
    Credentials,
    PromotionResult,
    ResolvedVersion,
    RollbackResult,
)

__all__ = [
    "PREVIOUS_VERSION_TAG", "PROMOTED_ROLLOUT_TAG", "PROMOTED_TIME_TAG", "REJECTED_BY_TAG", "REJECTED_EVIDENCE_TAG",
    "REJECTED_REASON_TAG", "REJECTED_ROLLOUT_TAG", "REJECTED_TAG", "REJECTED_TIME_TAG", "Credentials",
    "InMemoryRegistry", "MlflowRegistry", "ModelRegistry", "PromotionResult", "RegistryAccessDenied",
    "RegistryConfigError", "RegistryError", "RegistryRequestError", "RegistryUnavailable", "RequestPolicy",
    "ResolvedVersion", "RollbackResult", "VersionNotFound", "validated_tracking_uri",
]
