"""A presigned https dataset URL's query is its credential: it reaches no status, message or evidence."""

from __future__ import annotations

import json
from pathlib import Path

from test_gate_sources import https_server, tls_files  # noqa: F401 - tls_files is a fixture
from test_gate_support import endpoint, run

from controller.gate import DatasetSources, GateOptions, run_gate

SIGNATURE = "X-Amz-Signature=0123456789abcdef-secret"


def test_a_presigned_urls_signature_reaches_no_status_nor_message(tls_files: tuple[Path, Path]) -> None:  # noqa: F811
    cert, key = tls_files

    async def scenario() -> list[tuple[str, str]]:
        async with https_server(cert, key) as port:
            sources = DatasetSources(https_allowed_hosts=["127.0.0.1"], https_ca_file=str(cert))
            texts = []
            # fetched but not the pinned data; refused (404); a redirect to a port no URL can have
            for path in ("data.jsonl", "missing", "nowhere"):
                uri = f"https://127.0.0.1:{port}/{path}?X-Amz-Expires=60&{SIGNATURE}"
                report = await run_gate({"uri": uri, "sha256": "0" * 64, "thresholds": {"minAccuracy": 0.9}},
                                        endpoint("http://127.0.0.1:9"), None, namespace="ns", sources=sources,
                                        options=GateOptions(retries=0))
                assert report.status["dataset"]["uri"] == f"https://127.0.0.1:{port}/{path}?<redacted>"
                texts.append((report.reason, json.dumps([report.status, report.evidence, str(report.error)])))
            return texts

    for reason, text in run(scenario()):
        assert "secret" not in text and "secret" not in reason, text
