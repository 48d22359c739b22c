"""Review s38gate: a gateway echoing the bearer token or password inside a JSON string, with "/" escaped as "\\/"
(PHP's json_encode) or non-ASCII as \\uXXXX, got the secret past redaction into the registry's and the gate's
exception messages, and so into status.gate. The JSON-escaped forms are now replaced, and a text still quoting a
secret once JSON escapes are undone is withheld."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from controller.gate.errors import SourceError
from controller.gate.mlflow_access import MlflowAccess, download_artifact
from controller.redaction import WITHHELD_MESSAGE, redact_credentials
from controller.registry.mlflow_rest import MlflowRegistry
from controller.registry.types import Credentials

TOKEN = "Zm9vYmFy/c2VjcmV0/dG9rZW4xMjM0NTY3ODkw"  # base64, with "/"
PASSWORD = "pässwörd-long-secret"


def php_json(text: str) -> str:
    """A JSON string as PHP's json_encode writes it: "/" as "\\/", non-ASCII as \\uXXXX."""
    return json.dumps(text).replace("/", "\\/")


@pytest.mark.parametrize("said", [
    php_json(f"credential {TOKEN} expired"),
    php_json(f"credential {TOKEN[:20]}... expired"),  # cut short, with no scheme word before it
    json.dumps(f"credential {TOKEN} expired").replace("/", "\\u002F"),
])
def test_a_token_echoed_with_json_escapes_does_not_reach_the_text(said: str) -> None:
    assert redact_credentials(said, token=TOKEN) in ('"credential *** expired"', WITHHELD_MESSAGE)


@pytest.mark.parametrize(("said", "password"), [
    ('{"detail": "bad password p\\u00e4ssw\\u00f6rd-long-secret"}', PASSWORD),
    ('{"detail": "bad password p\\u00E4ssw\\u00F6rd-long-secret"}', PASSWORD),  # upper-case hex
    (json.dumps({"detail": "bad password sekret-\U0001F600-0123456789"}), "sekret-\U0001F600-0123456789"),
])
def test_a_password_echoed_with_unicode_escapes_does_not_reach_the_text(said: str, password: str) -> None:
    redacted = redact_credentials(said, username="u", password=password)
    assert redacted in ('{"detail": "bad password ***"}', WITHHELD_MESSAGE), redacted


def test_the_whole_escaped_token_is_replaced_and_the_rest_kept() -> None:
    said = '{"error": "credential ' + TOKEN.replace("/", "\\/") + ' expired"}'
    assert redact_credentials(said, token=TOKEN) == '{"error": "credential *** expired"}'


def test_json_text_without_a_secret_is_kept() -> None:
    said = '{"error": "path \\/api\\/2.0\\/mlflow\\/runs\\/get not found: caf\\u00e9 \\ud83d\\ude00"}'
    assert redact_credentials(said, token=TOKEN, username="u", password=PASSWORD) == said


class EchoingGateway(BaseHTTPRequestHandler):
    """Answers every request with its status and a PHP-style JSON body quoting the bearer token."""
    status = 401

    def answer(self) -> None:
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        body = ('{"error": ' + php_json(f"credential {token} expired") + "}").encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=[400, 401, 403])
def gateway(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Gateway", (EchoingGateway,), {"status": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def leaks(message: str) -> bool:
    return any(form in message for form in (TOKEN, TOKEN.replace("/", "\\/"), TOKEN[:16]))


def test_the_gates_dataset_fetch_does_not_quote_an_echoed_token(gateway: str) -> None:
    with pytest.raises(SourceError) as failed:
        download_artifact(MlflowAccess(gateway, token=TOKEN), "mlflow-artifacts:/1/x/golden.jsonl", io.BytesIO(),
                          10**6)
    assert not leaks(failed.value.message) and not leaks(str(failed.value)), failed.value.message
    assert "HTTP" in failed.value.message, failed.value.message  # still says what failed


def test_the_registry_does_not_quote_an_echoed_token(gateway: str) -> None:
    with pytest.raises(Exception) as failed:  # which one depends on the status
        MlflowRegistry(gateway, Credentials(token=TOKEN)).verify_alias("m", "champion")
    assert not leaks(str(failed.value)), str(failed.value)
