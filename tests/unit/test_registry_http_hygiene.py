"""What the MLflow adapter (and the gate's MLflow client, through the same mlflow_request) carries between calls and
takes from an answer, against small real HTTP servers on 127.0.0.1: no cookie kept from one rollout's call for the
next, no redirect followed (a POST would go on as a GET), no registry text too long for status, no credentials in a
message however the server escaped them."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit

import pytest

from controller import redaction
from controller.gate.mlflow_access import MlflowAccess, MlflowRest
from controller.redaction import redact_credentials
from controller.registry import (
    Credentials,
    MlflowRegistry,
    RegistryError,
    RegistryRequestError,
    RequestPolicy,
    mlflow_rest,
)
from tests.http_stub import serving

API = "/api/2.0/mlflow"
POLICY = RequestPolicy(timeout_seconds=3, max_retries=0)
LIMIT = 8 * 1024  # a version source or run id past this is refused
TOKEN = "tok/abc+def=="  # a base64-style token: "/", "+" and "=" all change when escaped
USERNAME, PASSWORD = "ops", "p@ss/w+rd=more"
BASIC_PAIR = base64.standard_b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
MODEL = {"registered_model": {"name": "m", "aliases": [{"alias": "production", "version": "6"}]}}
VERSION = {"name": "m", "version": "7", "status": "READY", "run_id": "abc", "source": "s3://b/m"}

Reply = tuple[int, dict[str, str], Any]  # status, extra headers, JSON body


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    cookie: str | None


@dataclass
class Stub:
    """A real HTTP server; `reply` answers each request from what was seen of it."""

    reply: Callable[[Seen], Reply]
    seen: list[Seen] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def stubs() -> Iterator[Callable[[Callable[[Seen], Reply]], Stub]]:
    with_servers: list[Any] = []

    def start(reply: Callable[[Seen], Reply]) -> Stub:
        stub = Stub(reply)

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen = Seen(self.command, self.path, self.headers.get("Authorization"), self.headers.get("Cookie"))
                stub.seen.append(seen)
                status, headers, body = stub.reply(seen)
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *_: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = serving(server)
        stub.url = context.__enter__()
        with_servers.append(context)
        return stub

    try:
        yield start
    finally:
        for context in with_servers:
            context.__exit__(None, None, None)


def readable(text: str) -> set[str]:
    """text as a reader may decode it: URL and HTML escapes undone, in either order."""
    once = {text, unquote(text), unquote_plus(text), html.unescape(text)}
    return once | {undo(item) for item in once for undo in (unquote, unquote_plus, html.unescape)}


def assert_no_secret(text: str) -> None:
    for form in readable(text):
        for secret in (TOKEN, PASSWORD, BASIC_PAIR):
            assert secret not in form, text


# --- M1: cookies -------------------------------------------------------------------------------------


def test_a_cookie_the_registry_sets_is_neither_kept_nor_sent_with_any_later_request(stubs: Any) -> None:
    def reply(seen: Seen) -> Reply:
        # A gateway's session cookie, set for team A's identity only, for the host and its whole domain.
        cookie = "gw_session=SESSION-OF-TEAM-A; Path=/; HttpOnly"
        return 200, {"Set-Cookie": cookie} if seen.authorization == "Bearer team-a" else {}, MODEL

    registry = stubs(reply)
    team_a = MlflowRegistry(registry.url, Credentials(token="team-a"), policy=POLICY)
    team_b = MlflowRegistry(registry.url, Credentials(token="team-b"), policy=POLICY)
    no_secret = MlflowRegistry(registry.url, policy=POLICY)
    for adapter in (team_a, team_b, no_secret, team_a):
        assert adapter.verify_alias("m", "production") == "6"
    # The gate's MLflow client takes the same path (another retry policy: another of mlflow's sessions).
    for token in ("team-a", None):
        rest = MlflowRest(MlflowAccess(registry.url, token=token, timeout_seconds=3, max_retries=0))
        assert rest.call("GET", f"{API}/registered-models/get", params={"name": "m"}) == MODEL
    assert [seen.authorization for seen in registry.seen] == ["Bearer team-a", "Bearer team-b", None,
                                                              "Bearer team-a", "Bearer team-a", None]
    assert [seen.cookie for seen in registry.seen] == [None] * 6


# --- M2: redirects -----------------------------------------------------------------------------------


def test_a_redirecting_tracking_uri_is_a_clear_error_for_reads_and_writes_and_nothing_follows_it(stubs: Any) -> None:
    real = stubs(lambda seen: (200, {}, MODEL if "registered-models/get" in seen.path else {}))
    moved_to = real.url.replace("http://", "http://ops:LOCATION-PASSWORD@")  # whatever the Location holds
    front = stubs(lambda seen: (301 if seen.method == "GET" else 302, {"Location": (
        f"{moved_to}{seen.path}{'&' if '?' in seen.path else '?'}token={quote_plus(TOKEN)}")}, {}))
    registry = MlflowRegistry(front.url, Credentials(token=TOKEN), policy=POLICY)
    for attempt in (lambda: registry.verify_alias("m", "production"),
                    lambda: registry.resolve("m", version="7"),
                    lambda: registry.set_alias("m", "production", "7")):
        with pytest.raises(RegistryRequestError) as caught:
            attempt()
        message = str(caught.value)
        # Where it points, as a tracking URI (the API path, user info and query cut), and what to do.
        assert f"redirect to '{real.url}'" in message, message
        assert "HTTP 30" in message and "set the registry's trackingUri" in message
        assert_no_secret(message)
        assert "LOCATION-PASSWORD" not in message and "token=" not in message
    assert real.seen == []  # neither the read nor the write went on, as a GET or otherwise
    assert [seen.method for seen in front.seen] == ["GET", "GET", "POST"]


def test_a_redirect_without_a_location_or_elsewhere_says_so(stubs: Any) -> None:
    front = stubs(lambda seen: (307, {}, {}))
    with pytest.raises(RegistryRequestError, match=r"HTTP 307, a redirect to no Location"):
        MlflowRegistry(front.url, policy=POLICY).verify_alias("m", "production")
    elsewhere = stubs(lambda seen: (302, {"Location": "/login?next=/x"}, {}))
    login = r"redirect to 'http://127\.0\.0\.1:\d+/login\?<redacted>'"
    with pytest.raises(RegistryRequestError, match=login) as caught:
        MlflowRegistry(elsewhere.url, policy=POLICY).verify_alias("m", "production")
    # Not a place to set trackingUri to: a sign-in page, or the same base with a slash added.
    assert "set the registry's trackingUri" not in str(caught.value) and "sign-in page?" in str(caught.value)
    slash = stubs(lambda seen: (308, {"Location": seen.path.split("?")[0] + "/"}, {}))
    with pytest.raises(RegistryRequestError) as caught:
        MlflowRegistry(slash.url, policy=POLICY).verify_alias("m", "production")
    assert "set the registry's trackingUri" not in str(caught.value) and "a trailing slash added?" in str(caught.value)


# --- L2: registry text bounded -----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["source", "run_id"])
def test_a_version_text_too_long_for_status_is_a_malformed_answer_naming_the_field(stubs: Any, key: str) -> None:
    answer = {**VERSION}
    stub = stubs(lambda seen: (200, {}, {"model_version": answer} if "model-versions" in seen.path else
                               {"run": {"data": {}, "inputs": {}}}))
    registry = MlflowRegistry(stub.url, policy=POLICY)
    assert mlflow_rest.MAX_VERSION_TEXT_CHARS == LIMIT
    answer[key] = "s3://b/" + "x" * (LIMIT - 7)  # at the limit: kept whole
    assert getattr(registry.resolve("m", version="7"), key) == answer[key]
    answer[key] = "s3://b/" + "x" * 2_000_000  # a real MLflow on SQLite accepts this
    with pytest.raises(RegistryRequestError) as caught:
        registry.resolve("m", version="7")
    assert f"{key!r} of 2000007 characters, over {LIMIT}" in str(caught.value)
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("status", ["DONE", "ready", "X" * 1_000_000])
def test_a_registration_status_mlflow_never_answers_is_refused_and_quoted_bounded(stubs: Any, status: str) -> None:
    stub = stubs(lambda seen: (200, {}, {"model_version": {**VERSION, "status": status}} if "model-versions" in
                               seen.path else {"run": {"data": {}, "inputs": {}}}))
    with pytest.raises(RegistryRequestError, match=r"'status' .*not one of FAILED_REGISTRATION, PENDING_REG") as caught:
        MlflowRegistry(stub.url, policy=POLICY).resolve("m", version="7")
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("status", ["READY", "PENDING_REGISTRATION", "FAILED_REGISTRATION"])
def test_each_mlflow_registration_status_is_read(stubs: Any, status: str) -> None:
    stub = stubs(lambda seen: (200, {}, {"model_version": {**VERSION, "status": status}} if "model-versions" in
                               seen.path else {"run": {"data": {}, "inputs": {}}}))
    assert MlflowRegistry(stub.url, policy=POLICY).resolve("m", version="7").status == status


# --- L3: escaped echoes of the credentials -----------------------------------------------------------


ECHOES: dict[str, Callable[[str], str]] = {
    "url-encoded": lambda header: quote(header, safe=""),
    "url-encoded, / kept": quote,
    "url-encoded, lower-case hex": lambda header: quote(header, safe="").lower(),
    "form-encoded": quote_plus,
    "html-escaped": html.escape,
    "html numeric entities": lambda header: header.replace("+", "&#43;").replace("/", "&#x2F;").replace("=", "&#61;"),
    "html over url-encoded": lambda header: html.escape(quote(header)).replace("%", "&#37;"),
}


@pytest.mark.parametrize("escape", ECHOES.values(), ids=ECHOES.keys())
@pytest.mark.parametrize("credentials", [Credentials(token=TOKEN), Credentials(username=USERNAME, password=PASSWORD)],
                         ids=["bearer", "basic"])
def test_a_server_echoing_the_credentials_escaped_never_gets_them_into_a_message(
        stubs: Any, credentials: Credentials, escape: Callable[[str], str]) -> None:
    def reply(seen: Seen) -> Reply:
        header = seen.authorization or ""
        plain_password = f"user {USERNAME} password {PASSWORD}" if credentials.password else ""
        return 400, {}, {"error_code": "BAD_REQUEST", "message": f"rejected {escape(header)} {escape(plain_password)}"}

    stub = stubs(reply)
    with pytest.raises(RegistryError) as caught:
        MlflowRegistry(stub.url, credentials, policy=POLICY).verify_alias("m", "production")
    assert urlsplit(stub.url).netloc in str(caught.value) and "HTTP 400" in str(caught.value)
    assert_no_secret(str(caught.value))


def test_redaction_replaces_the_escaped_forms_it_knows_and_withholds_a_text_still_quoting_a_secret() -> None:
    assert redact_credentials(f"a {quote(TOKEN, safe='')} b {quote_plus(TOKEN)} c", token=TOKEN) == "a *** b *** c"
    assert redact_credentials(f"x={html.escape('<' + PASSWORD)}", password=PASSWORD) == "x=&lt;***"
    assert redact_credentials("tok&#x2F;abc%2bdef&#61;=", token=TOKEN) == redaction.WITHHELD_MESSAGE
    assert redact_credentials("nothing secret: tok/abc def", token=TOKEN) == "nothing secret: tok/abc def"
    assert redact_credentials("no credentials given", token=None) == "no credentials given"
