"""The Kubernetes side of the operator: clients, server-side apply of status, Events."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from controller.api.commands import COMMAND_ANNOTATION
from controller.api.status import owned_status
from controller.operator.events import PostResult, entry_time, event_name, event_reason, is_warning
from controller.redaction import basic_auth_pairs, redact_credentials, redact_urls
from controller.text_bounds import WORDS_MAX, cut_text

GROUP = "modelrollout.io"
VERSION = "v1alpha1"
PLURAL = "modelrollouts"
KIND = "ModelRollout"
FIELD_MANAGER = "modelrollout-controller"
APPLY_PATCH = "application/apply-patch+yaml"

# Held while a rollout with spec.rollback.revertOnDeletion lives, so that a delete waits for its rollback.
FINALIZER = "modelrollout.io/revert-on-deletion"

log = logging.getLogger(__name__)


# (connect, read) seconds for each of the operator's API calls.
REQUEST_TIMEOUT = (5.0, 30.0)
# The most of a request body the API server reads (fixed in its code, no flag): it answers a longer one 413, or drops
# the connection while the body is still being sent (an 11 MB status write ended in a MaxRetryError, no answer).
MAX_REQUEST_BYTES = 3 * 1024 * 1024


# An escaped backslash, a character past U+FFFF escaped as a surrogate pair, or a lone surrogate's escape.
_SURROGATE_PAIR = re.compile(r"\\\\|\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})|\\ud[89a-f][0-9a-f]{2}")


def apply_body(body: dict[str, Any]) -> str:
    """A server-side apply body as JSON text with every character past U+FFFF written as itself. The client's own
    json.dumps escapes one as a surrogate pair, which the API server's YAML reader refuses: one emoji (a class label,
    a model name) made every status write of that rollout fail. The rest stays escaped: raw, the YAML reader would
    fold a U+2028 in a string as a line break, and refuse a C1 control character. A lone surrogate (decoded by
    Python's json from a server's "\\ud83d") is refused escaped or not: it is written as U+FFFD."""
    def unescaped(found: re.Match[str]) -> str:
        if found[0] == "\\\\":
            return found[0]
        if found[1] is None:
            return "\\ufffd"
        return chr(0x10000 + ((int(found[1], 16) - 0xD800) << 10) + int(found[2], 16) - 0xDC00)

    return _SURROGATE_PAIR.sub(unescaped, json.dumps(body, default=str))


# How a call to the API server failed, as modelrollout_kube_api_failures_total{kind} and the liveness probe name it:
# no connection (refused, reset, no DNS), no answer in time, the TLS handshake, the API server's own trouble (etcd
# down answers 5xx), throttled, or credentials it no longer takes. Fixed words: never a URL or a message.
API_FAILURE_KINDS = ("connect", "timeout", "tls", "5xx", "429", "401", "other")


class ApiCallObserver(Protocol):
    """Told of every call to the API server: whether the API server could be used (metrics, liveness probe)."""

    def api_call_succeeded(self) -> None: ...
    def api_call_failed(self, kind: str) -> None: ...


def answer_failure_kind(status: int) -> str | None:
    """One of API_FAILURE_KINDS for an answer that says the API server cannot be used now; None for any other (a
    404, a 409, a 422, a 403): the API server works, and what it refused was the request."""
    if status == 408:
        return "timeout"
    if status >= 500:
        return "5xx"
    return {429: "429", 401: "401"}.get(status)


def api_failure_kind(exc: BaseException) -> str | None:
    """One of API_FAILURE_KINDS for a call that raised `exc`; None if `exc` carries an answer that is not one."""
    if isinstance(exc, ApiException):
        # The client turns an SSLError into a status-0 ApiException; its other errors are urllib3's.
        return answer_failure_kind(exc.status) if exc.status else "tls"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return api_failure_kind(exc.reason)
    # NewConnectionError is a ConnectTimeoutError too (urllib3's compatibility): it goes first.
    if isinstance(exc, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ProtocolError | ConnectionError):
        return "connect"
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, urllib3.exceptions.SSLError | ssl.SSLError):
        return "tls"
    return "other"


class BoundedApiClient(client.ApiClient):
    """An ApiClient whose calls time out unless they set their own timeout, and whose server-side applies are sent
    as UTF-8 JSON text (apply_body). Each call's outcome is told to `observer`: every call of the operator's own
    (kopf's watches aside) goes through here, so it knows when the API server last worked and how it fails.

    The client waits forever by default: one half-open connection would hold a reconcile worker, and with it
    that rollout, for good, while the operator still looks alive. Watches are not bounded (a watch waits by
    design); the operator's watches go through kopf, not this client.
    """

    def __init__(self, configuration: client.Configuration, timeout: tuple[float, float] = REQUEST_TIMEOUT,
                 observer: ApiCallObserver | None = None) -> None:
        super().__init__(configuration)
        self.request_timeout = timeout
        self.observer = observer

    def call_api(self, method: str, url: str, header_params: Any = None, body: Any = None, post_params: Any = None,
                 _request_timeout: Any = None) -> Any:
        if _request_timeout is None and "watch=true" not in url.lower():
            _request_timeout = self.request_timeout
        if isinstance(body, dict) and (header_params or {}).get("Content-Type") == APPLY_PATCH:
            body = apply_body(body)  # a str body is sent as it is
        try:
            answer = super().call_api(method, url, header_params, body, post_params,
                                      _request_timeout=_request_timeout)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._tell(api_failure_kind(exc))
            raise
        # Any answer comes back here (the caller raises ApiException for an error status later).
        self._tell(answer_failure_kind(answer.status) if isinstance(answer.status, int) else None)
        return answer

    def _tell(self, failure_kind: str | None) -> None:
        if self.observer is None:
            return
        if failure_kind is None:
            self.observer.api_call_succeeded()
        else:
            self.observer.api_call_failed(failure_kind)


def load_client_config(kubeconfig: str | None = None, *, bounded: bool = False,
                       observer: ApiCallObserver | None = None) -> client.ApiClient:
    """A named kubeconfig (the path, else $KUBECONFIG), else in-cluster config inside a pod, else ~/.kube/config:
    controller-runtime's order, so an operator in a pod told to drive another cluster never acts on its own.

    `bounded`: every call times out (BoundedApiClient), as the operator needs, and is told to `observer`.
    """
    configuration = client.Configuration()
    named = kubeconfig or os.environ.get("KUBECONFIG")  # a list of paths too (the client merges them)
    in_cluster = False
    if not named:
        try:
            config.load_incluster_config(client_configuration=configuration)
            in_cluster = True
        except config.ConfigException:
            pass  # not in a pod
    if not in_cluster:
        config.load_kube_config(config_file=named, client_configuration=configuration)
    return BoundedApiClient(configuration, observer=observer) if bounded else client.ApiClient(configuration)


@dataclass(frozen=True)
class ObjectRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def owns_finalizer(meta: Mapping[str, Any]) -> bool:
    """Whether the controller's field manager (on the object itself, not its status) owns FINALIZER: only
    then can its apply take the finalizer off."""
    entry = f'v:"{FINALIZER}"'
    return any(m.get("manager") == FIELD_MANAGER and not m.get("subresource")
               and entry in ((m.get("fieldsV1") or {}).get("f:metadata") or {}).get("f:finalizers", {})
               for m in meta.get("managedFields") or ())


class RolloutStore:
    """Reads ModelRollouts and writes their status with server-side apply, guarded by resourceVersion."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.configuration = self.core.api_client.configuration  # whose credentials API errors must not show

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, ref.namespace, PLURAL, ref.name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_in(self, namespace: str) -> list[dict[str, Any]]:
        return list(self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL).get("items", []))

    def apply_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Apply status as the controller's field manager. The resourceVersion makes a stale write a 409.

        Raises StatusWriteRefused when the API server refuses the status for what it holds (too large, invalid),
        or would: a body it never reads whole is not sent."""
        meta = obj["metadata"]
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                             "resourceVersion": meta["resourceVersion"]},
                "status": owned_status(status)}
        size = len(apply_body(body).encode())
        if size > MAX_REQUEST_BYTES:
            raise StatusWriteRefused(413, f"too large (not sent: the API server reads at most {MAX_REQUEST_BYTES:,} "
                                          f"bytes of a request); it was {size:,} bytes")
        try:
            return self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body,
                field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH)
        except ApiException as exc:
            problem = status_refusal(exc, self.configuration)
            if problem is None:
                raise
            # Not chained: a 422's body quotes the values it refuses, and a logged traceback would show them.
            raise StatusWriteRefused(exc.status or 0, f"{problem}; it was {size:,} bytes") from None

    def apply_finalizer(self, obj: dict[str, Any], hold: bool) -> dict[str, Any] | None:
        """Hold or release the controller's finalizer: a server-side apply of metadata.finalizers alone, so the
        controller's field manager owns that one entry of the object and nothing else. The uid keeps the apply
        to the object that was read: gone, it is a 409 (an apply would otherwise create it); created again
        under the same name, a 422. None: not found."""
        meta = obj["metadata"]
        metadata: dict[str, Any] = {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]}
        if hold:
            metadata["finalizers"] = [FINALIZER]
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata}
        try:
            return self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body,
                field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def post_event(self, obj: dict[str, Any], entry: Mapping[str, Any]) -> PostResult:
        """Post one numbered history entry as an Event named after it, timed when the entry was recorded.

        Never raises: a lost Event must not stop a rollout.
        """
        meta = obj["metadata"]
        reason = event_reason(entry)
        when = entry_time(entry) or dt.datetime.now(dt.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=event_name(meta["name"], meta.get("uid"), entry),
                                         namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=KIND, name=meta["name"], namespace=meta["namespace"],
                uid=meta.get("uid"), resource_version=meta.get("resourceVersion")),
            reason=reason, message=str(entry.get("detail") or "")[:1024],
            type="Warning" if is_warning(reason) else "Normal",
            first_timestamp=when, last_timestamp=when, count=1,
            source=client.V1EventSource(component=FIELD_MANAGER), reporting_component=FIELD_MANAGER,
            reporting_instance=FIELD_MANAGER)
        try:
            self.core.create_namespaced_event(meta["namespace"], event)
        except ApiException as exc:
            if exc.status == 409:
                return PostResult.ALREADY_POSTED
            # Status 0: the client failed before any answer (TLS, a dropped connection). 401: a token being
            # rotated. A quota's 403: the namespace's Events are full until old ones expire. None of these says
            # the Event itself is unwelcome.
            message = api_message(exc, self.configuration)
            transient = not exc.status or exc.status in (401, 408, 429) or exc.status >= 500 or (
                exc.status == 403 and "exceeded quota" in message)
            log.warning("could not post Event %s for %s/%s: HTTP %s %s%s", reason, meta["namespace"], meta["name"],
                        exc.status, message[:200], "; trying again later" if transient else "")
            return PostResult.DEFERRED if transient else PostResult.REFUSED
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("could not post Event %s for %s/%s: %s; trying again later", reason, meta["namespace"],
                        meta["name"], type(exc).__name__)
            return PostResult.DEFERRED
        return PostResult.POSTED


class StatusWriteRefused(ApiException):
    """The API server refused a status write for what it holds: too large (for its request limit or etcd's) or
    invalid. Sent again, it gets the same answer. `problem` gives the API server's reason and never the status's
    contents (a 422 quotes the values it refuses)."""

    def __init__(self, status: int, problem: str) -> None:
        super().__init__(status=status, reason="StatusWriteRefused")
        self.problem = problem

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.problem}"


# How etcd's refusal of a request over its --max-request-bytes (1.5 MiB by default) reads in the API server's 500.
_ETCD_TOO_LARGE = ("too large", "ResourceExhausted")
# A 422 cause that says a value is too long or a list holds too many items (by its reason, or its words under CEL).
_TOO_LARGE_CAUSES = frozenset({"FieldValueTooLong", "FieldValueTooMany"})
_TOO_LARGE_WORDS = ("Too long", "Too many", "must have at most")
_CAUSES_SHOWN = 5


def status_refusal(exc: ApiException, configuration: client.Configuration) -> str | None:
    """Why the API server refused a status write for its content, in words that never quote it; None when the
    answer is not about the content (a conflict, a 503, an etcd leader change), so a later write may go in."""
    try:
        answer = json.loads(exc.body or "{}")
    except (ValueError, TypeError):
        answer = {}
    answer = answer if isinstance(answer, dict) else {}
    message = without_kube_credentials(str(answer.get("message") or exc.reason or ""), configuration)
    if exc.status == 413 or (exc.status == 500 and any(word in message for word in _ETCD_TOO_LARGE)):
        return f"too large (HTTP {exc.status}: {message[:200]})"  # the request limit's or etcd's words: no content
    if exc.status == 400 and message.startswith("error decoding YAML"):
        # Server-side apply reads the body as YAML, whose implicit keys stop at 1024 characters; its words quote
        # the body (any value in status), so they are not kept.
        return "unreadable (HTTP 400: not decodable as YAML: a map key of 1024 characters or more?)"
    if exc.status != 422:
        return None
    details = answer.get("details")
    causes = [c for c in (details.get("causes") or []) if isinstance(c, dict)] if isinstance(details, dict) else []
    # The field and the kind of each refusal; a cause's message quotes the value.
    named = [f"{str(c.get('field'))[:200]} {c.get('reason')}" for c in causes if c.get("field") not in (None, "<nil>")]
    where = ", ".join(named[:_CAUSES_SHOWN]) + (f" and {len(named) - _CAUSES_SHOWN} more" if
                                                   len(named) > _CAUSES_SHOWN else "")
    too_large = any(c.get("reason") in _TOO_LARGE_CAUSES for c in causes) or any(
        word in message for word in _TOO_LARGE_WORDS)
    return f"{'too large' if too_large else 'invalid'} (HTTP 422" + (f": {where})" if where else ")")


def api_message(exc: ApiException, configuration: client.Configuration) -> str:
    """The API server's own words from a Status body, without the credentials `configuration` sends (a proxy in
    front of it may echo the Authorization header) or those in a URL it quotes (an admission webhook refusing a
    storage URI quotes it whole)."""
    try:
        text = str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        text = str(exc.body or exc.reason)
    # Cut after redaction, so that no secret is cut short of what the redaction recognises.
    return cut_text(redact_urls(without_kube_credentials(text, configuration)), WORDS_MAX)


def without_kube_credentials(text: str, configuration: client.Configuration) -> str:
    """text without the bearer token or basic-auth pair the client sends (as the whole header value, alone, or
    decoded from basic auth)."""
    # A kubeconfig token is stored as "Bearer <token>" (a username/password as "Basic <pair>") under BearerToken,
    # a hand-made Configuration's under authorization with api_key_prefix; the header value is the same.
    for value in sorted((str(v) for v in (configuration.api_key or {}).values() if v), key=len, reverse=True):
        scheme, _, credential = value.partition(" ")
        text = redact_credentials(text, token=value)
        if credential:
            text = redact_credentials(text, token=credential)
            if scheme.lower() == "basic":
                username, _, password = _basic_pair(credential).partition(":")
                text = _without_basic_auth(text, username, password)
    return _without_basic_auth(text, configuration.username, configuration.password)


# A bare password shorter than this is not looked for: "a" would turn every "a" of an API message into ***. Its
# header forms (Basic <b64>, the b64 pair) do not occur by chance: they always go.
MIN_BARE_PASSWORD_CHARS = 8


def _without_basic_auth(text: str, username: str | None, password: str | None) -> str:
    if not password or len(password) >= MIN_BARE_PASSWORD_CHARS:
        return redact_credentials(text, username=username, password=password)
    for pair in basic_auth_pairs(username, password) if username else ():
        text = redact_credentials(text, token=pair)
    return redact_credentials(text, token=f"{username}:{password}") if username else text  # as in a URL


def _basic_pair(credential: str) -> str:
    try:
        return base64.b64decode(credential, validate=True).decode("latin-1")
    except ValueError:  # binascii.Error is one
        return ""


class StatusStore(Protocol):
    def get(self, ref: ObjectRef) -> dict[str, Any] | None: ...
    def apply_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]: ...


def apply_decided_status(store: StatusStore, obj: dict[str, Any], status: dict[str, Any],
                         decided_on: Mapping[str, Any]) -> dict[str, Any]:
    """store.apply_status for a status decided on `obj` whose stored status was `decided_on`.

    On a 409 caused only by metadata the decision did not read (a label, an annotation a GitOps tool
    writes), the decision still stands: it is applied again on the fresh resourceVersion, so that a
    measurement it carries (a golden gate that ran for minutes) is not thrown away. A change to spec, to
    status, to the command annotation (an on-call abort must be decided on, not acted past) or a deletion
    is still a 409: the caller decides again.
    """
    try:
        return store.apply_status(obj, status)
    except ApiException as exc:
        if exc.status != 409:
            raise
        meta = obj["metadata"]
        fresh = store.get(ObjectRef(meta["namespace"], meta["name"]))
        if fresh is None or what_decisions_read(fresh) != what_decisions_read({**obj, "status": decided_on}):
            raise
        meta["resourceVersion"] = fresh["metadata"]["resourceVersion"]
        return store.apply_status(obj, status)


def what_decisions_read(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a ModelRollout a decision depends on: a write to anything else leaves it valid."""
    meta = obj["metadata"]
    command = (meta.get("annotations") or {}).get(COMMAND_ANNOTATION)
    return (meta.get("uid"), meta.get("generation"), meta.get("deletionTimestamp"), command,
            dict(obj.get("status") or {}))
