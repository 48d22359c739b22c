"""Golden-dataset gate (DESIGN.md section 4, step 3): pinned data, real inference calls, per-class metrics.

Entry points for the operator:
    run_gate(...)              -> GateReport   (async; fetch + sha256 pin + evaluate + verdicts)
    GateReport.to_judge_result(request_id)      (what the engine reads)
    record_gate_evidence(...)  -> EvidenceRecord (blocking; MLflow run + JSON artifact + version tags)
    KubernetesConfigMapReader(api_client)       (configmap:// datasets, the rollout's namespace only)
"""

from controller.gate.clients import InferenceEndpoint, InferenceProtocol
from controller.gate.errors import ErrorKind, SourceError, SourcePolicyError
from controller.gate.evidence import EvidenceRecord, record_gate_evidence
from controller.gate.judge import JudgeSettings
from controller.gate.mlflow_access import MlflowAccess
from controller.gate.runner import (
    GateError,
    GateOptions,
    GateReport,
    describe_outcome,
    evaluate_dataset_file,
    golden_dataset_from,
    run_gate,
)
from controller.gate.sources import ConfigMapContent, ConfigMapReader, DatasetSources, KubernetesConfigMapReader

__all__ = [
    "ConfigMapContent", "ConfigMapReader", "DatasetSources", "ErrorKind", "EvidenceRecord", "GateError",
    "GateOptions", "GateReport", "InferenceEndpoint", "InferenceProtocol", "JudgeSettings",
    "KubernetesConfigMapReader", "MlflowAccess", "SourceError", "SourcePolicyError", "describe_outcome",
    "evaluate_dataset_file", "golden_dataset_from", "record_gate_evidence", "run_gate",
]
