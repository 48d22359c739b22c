"""A presigned https dataset URL's query is its credential: it reaches no status, message or evidence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_gate_mlflow_bounds import Reply, Stub, stub  # noqa: F401 - stub is a fixture
from test_gate_sources import https_server, tls_files  # noqa: F401 - tls_files is a fixture
from test_gate_support import endpoint, run

from controller.gate import DatasetSources, GateOptions, run_gate
from controller.verdict import Outcome

SIGNATURE = "X-Amz-Signature=0123456789abcdef-secret"


def test_a_presigned_urls_signature_reaches_no_status_nor_message(tls_files: tuple[Path, Path]) -> None:  # noqa: F811
    cert, key = tls_files

    async def scenario() -> list[tuple[str, str]]:
        async with https_server(cert, key) as port:
            sources = DatasetSources(https_allowed_hosts=["127.0.0.1"], https_ca_file=str(cert))
            texts = []
            # fetched but not the pinned data; refused (404); a redirect to a port no URL can have; refused (403) with
            # a reason phrase quoting the query, or only the signature's value
            for path in ("data.jsonl", "missing", "nowhere", "echo-query", "echo-value"):
                uri = f"https://127.0.0.1:{port}/{path}?X-Amz-Expires=60&{SIGNATURE}"
                report = await run_gate({"uri": uri, "sha256": "0" * 64, "thresholds": {"minAccuracy": 0.9}},
                                        endpoint("http://127.0.0.1:9"), None, namespace="ns", sources=sources,
                                        options=GateOptions(retries=0))
                assert report.status["dataset"]["uri"] == f"https://127.0.0.1:{port}/{path}?<redacted>"
                texts.append((report.reason, json.dumps([report.status, report.evidence, str(report.error)])))
            return texts

    texts = run(scenario())
    for reason, text in texts:
        assert "secret" not in text and "secret" not in reason, text
    # The reason phrase is still quoted, the query cut from it.
    assert "HTTP 403 Forbidden for <redacted>" in texts[3][0], texts[3][0]
    assert "HTTP 403 signature *** does not match" in texts[4][0], texts[4][0]


@pytest.mark.parametrize("location", [
    "https://ci-bot:TOKEN-SECRET@models.example.com/nsfw/7",
    "https://bucket.s3.amazonaws.com/nsfw/7?X-Amz-Credential=AKIA&X-Amz-Signature=SIG-SECRET",
    "mlflow-artifacts://svc:PASSWORD-SECRET@other-mlflow:5000/nsfw/7",
])
def test_a_dataset_location_mlflow_returns_is_quoted_without_its_secret(stub: Stub,  # noqa: F811
                                                                         location: str) -> None:
    """A models:/ dataset's location is the version's registered source, anyone's to write; the gate refuses one
    its artifact proxy does not serve and said so quoting it whole, into status, Events and MLflow evidence."""
    stub.routes["/api/2.0/mlflow/model-versions/get-download-uri"] = Reply(
        200, json.dumps({"artifact_uri": location}).encode())
    report = run(run_gate({"uri": "models:/nsfw/7/golden.jsonl", "sha256": "0" * 64,
                           "thresholds": {"minAccuracy": 0.9}}, endpoint("http://127.0.0.1:9"), None, namespace="ns",
                          sources=DatasetSources(mlflow=stub.access()), options=GateOptions(retries=0)))
    assert report.outcome is Outcome.INCONCLUSIVE and report.error is None
    text = json.dumps([report.reason, report.status, report.evidence])
    assert "SECRET" not in text and "AKIA" not in text, text
    assert "models.example.com/nsfw/7" in report.reason or "nsfw/7?<redacted>:" in report.reason \
        or "names artifact server other-mlflow:5000" in report.reason, report.reason
