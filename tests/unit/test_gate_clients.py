"""Inference clients against real loopback servers: V1 and V2, labels/indices/scores, and every kind of garbage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gate_support import CLASSES, endpoint, http_server, identity_model, model_server, run

from controller.devstack.model_server import LinearModel
from controller.devstack.processes import free_port
from controller.exporter.events import DecodeOptions, predicted_classes
from controller.gate.clients import BatchAnswer, InferenceClient, InferenceEndpoint, InferenceProtocol, decode_json

FEATURES = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0.2, 0, 0.9, 1.0]])
EXPECTED = [0, 1, 2, 2]


async def predict(target: InferenceEndpoint, features: np.ndarray = FEATURES, **options: Any) -> BatchAnswer:
    async with aiohttp.ClientSession() as session:
        client = InferenceClient(target, session, CLASSES, **{"concurrency": 1, **options})
        return await client.predict(features)


def test_endpoint_from_url_accepts_base_or_full_paths() -> None:
    base = InferenceEndpoint.from_url("http://isvc.ns.example.com/", "nsfw", "v1")
    assert base.predict_url == "http://isvc.ns.example.com/v1/models/nsfw:predict"
    v1 = InferenceEndpoint.from_url("http://h:8080/v1/models/other:predict", "nsfw")
    assert v1.protocol is InferenceProtocol.V1 and v1.model_name == "other" and v1.base_url == "http://h:8080"
    v2 = InferenceEndpoint.from_url("http://h/prefix/v2/models/m/versions/3/infer", "nsfw", "v1")
    assert v2.protocol is InferenceProtocol.V2 and v2.model_version == "3"
    assert v2.predict_url == "http://h/prefix/v2/models/m/versions/3/infer"
    assert "headers" not in repr(InferenceEndpoint("http://h", "m", headers={"Authorization": "Bearer s3cret"}))
    assert "s3cret" not in repr(InferenceEndpoint("http://h", "m", headers={"Authorization": "Bearer s3cret"}))


def test_request_bodies_follow_each_protocol() -> None:
    async def bodies() -> tuple[Any, Any]:
        async with aiohttp.ClientSession() as session:
            v1 = InferenceClient(endpoint("http://x", "v1"), session, CLASSES).encode(FEATURES[:2])
            v2 = InferenceClient(endpoint("http://x", "v2", input_name="pixels"), session, CLASSES).encode(FEATURES[:2])
            return json.loads(v1), json.loads(v2)

    v1, v2 = run(bodies())
    assert v1 == {"instances": [[1.0, 0, 0, 0], [0, 1.0, 0, 0]]}
    assert v2 == {"inputs": [{"name": "pixels", "shape": [2, 4], "datatype": "FP32",
                              "data": [1.0, 0, 0, 0, 0, 1.0, 0, 0]}]}


def test_request_bodies_carry_every_float_exactly() -> None:
    rng = np.random.default_rng(7)
    features = rng.normal(size=(40, 3)) * 10.0 ** rng.integers(-300, 300, size=(40, 3))
    features[0] = [0.1, -0.0, 5e-324]
    features[1] = [1.7976931348623157e308, 1.0, 123456789.123456789]

    async def bodies() -> tuple[Any, Any]:
        async with aiohttp.ClientSession() as session:
            v1 = InferenceClient(endpoint("http://x", "v1"), session, CLASSES).encode(features)
            v2 = InferenceClient(endpoint("http://x", "v2"), session, CLASSES).encode(features[:, :2])
            return json.loads(v1), json.loads(v2)

    v1, v2 = run(bodies())
    np.testing.assert_array_equal(np.asarray(v1["instances"]), features)
    assert v2["inputs"][0]["shape"] == [40, 2]
    np.testing.assert_array_equal(np.asarray(v2["inputs"][0]["data"]), features[:, :2].reshape(-1))


@pytest.mark.parametrize("protocol", ["v1", "v2"])
@pytest.mark.parametrize("output", ["probabilities", "labels"])
def test_real_model_server_answers_map_to_dataset_classes(protocol: str, output: str) -> None:
    async def scenario() -> BatchAnswer:
        async with model_server(identity_model(), output=output) as server:
            return await predict(endpoint(server.url, protocol))

    answer = run(scenario())
    assert answer.failure is None and answer.predicted.tolist() == EXPECTED and not answer.sample_problems


def test_score_vectors_follow_the_models_own_class_order() -> None:
    base = identity_model()
    order = ("nsfw", "safe", "suggestive")  # the model's output order differs from the dataset's
    reordered = LinearModel(base.weights[[2, 0, 1]], base.bias, order)

    async def scenario() -> BatchAnswer:
        async with model_server(reordered) as server:
            return await predict(endpoint(server.url, "v2", output_classes=order))

    assert run(scenario()).predicted.tolist() == EXPECTED


def scripted(*answers: tuple[int, Any]) -> tuple[Callable[[web.Request], Awaitable[web.StreamResponse]], list[int]]:
    """A handler answering the n-th request with answers[n] (the last one repeats); counts requests."""
    calls: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        status, body = answers[min(len(calls), len(answers) - 1)]
        calls.append(status)
        if status == 302:
            return web.Response(status=302, headers={"Location": "http://example.com/"})
        if callable(body):
            return await body()
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(status=status, text=text, content_type="application/json")

    return handler, calls


def against(handler: Callable[[web.Request], Awaitable[web.StreamResponse]], protocol: str = "v1",
            features: np.ndarray = FEATURES, **options: Any) -> BatchAnswer:
    async def scenario() -> BatchAnswer:
        async with http_server(handler) as url:
            return await predict(endpoint(url, protocol), features, **options)

    return run(scenario())


def test_http_error_is_a_batch_failure_and_not_retried() -> None:
    handler, calls = scripted((500, {"error": "boom"}))
    answer = against(handler)
    assert answer.failure == "HTTP 500" and not answer.unavailable and answer.answered == 0
    assert answer.predicted.tolist() == [-1] * 4 and calls == [500]


def test_transient_statuses_are_retried_then_reported_unavailable() -> None:
    handler, calls = scripted((503, "busy"), (200, {"predictions": ["safe", "suggestive", "nsfw", "nsfw"]}))
    answer = against(handler, retries=2)
    assert answer.failure is None and answer.predicted.tolist() == EXPECTED and calls == [503, 200]

    handler, calls = scripted((503, "busy"))
    answer = against(handler, retries=2)
    assert answer.failure == "unavailable: HTTP 503" and answer.unavailable and calls == [503, 503, 503]


def test_redirects_are_not_followed_and_say_nothing_about_the_model() -> None:
    handler, calls = scripted((302, None))
    answer = against(handler, retries=1)
    assert answer.unavailable and calls == [302, 302]
    assert answer.failure == "unavailable: HTTP 302 (redirected, not followed: check the URL)"


@pytest.mark.parametrize(("status", "hint"), [
    (404, "check the model name and protocol"), (401, "credentials"), (403, "credentials"),
    (405, "check the protocol"), (407, "proxy"), (408, "timed the request out"), (307, "redirected"),
])
def test_statuses_that_never_reached_the_model_are_unavailable_not_its_answer(status: int, hint: str) -> None:
    # A wrong model name, protocol or gateway credential says nothing about the model: retried like a 503 and
    # reported as unavailable (the gate is inconclusive, never failed), naming the status, never the body.
    handler, calls = scripted((status, {"error": "model m not found: secret-token-xyz"}))
    answer = against(handler, retries=2)
    assert answer.unavailable and answer.answered == 0 and calls == [status] * 3
    assert answer.failure is not None and answer.failure.startswith(f"unavailable: HTTP {status} (")
    assert hint in answer.failure and "secret" not in answer.failure and "secret" not in answer.detail

    loaded = {"predictions": ["safe", "suggestive", "nsfw", "nsfw"]}
    handler, calls = scripted((status, "not loaded yet"), (200, loaded))  # e.g. the model finished loading
    answer = against(handler, retries=2)
    assert answer.failure is None and answer.predicted.tolist() == EXPECTED and calls == [status, 200]


def test_an_html_page_came_from_a_gateway_and_never_reached_the_model() -> None:
    # An SSO gateway's sign-in page, with 200: its 302 or 401 are "never reached the model", so is this. It failed a
    # first rollout's candidate ("not JSON x300") and tagged it rejected.
    calls: list[int] = []

    async def sign_in(request: web.Request) -> web.Response:
        calls.append(200)
        return web.Response(text="<html><body>Sign in: session=s3cret-xyz</body></html>", content_type="text/html")

    answer = against(sign_in, retries=1)
    assert answer.unavailable and answer.answered == 0 and calls == [200, 200]  # retried, as a 401 is
    assert answer.failure == ("unavailable: HTTP 200 (an HTML page, not a model's answer: a sign-in gateway or "
                              "proxy? check the URL)")
    assert "s3cret" not in answer.failure + answer.detail


@pytest.mark.parametrize(("body", "html"), [
    ('{"predictions": ["safe", "suggestive", "nsfw", "nsfw"]}', False),
    ('  \n[1, 2]', False),  # JSON, read as the model's answer (a wrong one: not a page)
    ("<!doctype html><html><body>Sign in</body></html>", True),
    ('{"predictions": ["safe", <b>sign in</b>', True),
])
def test_a_json_answer_labelled_text_html_is_the_models_answer(body: str, html: bool) -> None:
    # Flask's `return json.dumps(...)` answers text/html: a correct answer, only labelled wrongly. Only a body that
    # is not JSON is a web page (review s25r2gate finding 6).
    async def flask(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/html")

    answer = against(flask, retries=0)
    if html:
        assert answer.unavailable and answer.failure is not None and "an HTML page" in answer.failure
    elif body.startswith("{"):
        assert answer.failure is None and answer.predicted.tolist() == EXPECTED
    else:
        assert answer.failure == "no predictions" and not answer.unavailable


@pytest.mark.parametrize("status", [400, 422, 500])
def test_the_model_servers_refusal_of_the_golden_input_is_its_answer(status: int) -> None:
    handler, calls = scripted((status, {"error": "bad input"}))
    answer = against(handler, retries=2)
    assert answer.failure == f"HTTP {status}" and not answer.unavailable and calls == [status]


@pytest.mark.parametrize(("protocol", "body", "failure"), [
    ("v1", "<html>oops</html>", "not JSON"),
    ("v1", {"predictions": ["safe", "nsfw"]}, "wrong prediction count"),
    ("v1", {"outputs": []}, "no predictions"),
    ("v1", ["safe", "safe", "safe", "safe"], "no predictions"),
    ("v2", {"predictions": ["safe"] * 4}, "no predictions"),
    ("v2", {"outputs": [{"name": "p", "shape": [4, 3], "datatype": "FP32", "data": [0.1] * 5}]}, "bad output"),
    ("v2", {"outputs": [{"name": "p", "shape": [3], "datatype": "BYTES", "data": ["safe"] * 3}]},
     "wrong prediction count"),
    ("v2", {"outputs": [{"name": "p", "shape": [4, 3, 1], "datatype": "FP32", "data": [0.1] * 12}]}, "bad output"),
    ("v2", {"outputs": [{"name": "p", "shape": "4", "data": []}]}, "bad output"),
    # too deep for any parser, under the caps (deeper is refused unread: test_gate_loop_stall): a reason, not a crash
    ("v1", "[" * 1200 + "]" * 1200, "not JSON"),
    # read as the standard library reads it: an integer (a count that does not match), not a float
    ("v2", '{"outputs": [{"name": "p", "shape": [123456789012345678901234567890], "data": []}]}',
     "wrong prediction count"),
    # a shape whose product wraps to 0 in 64 bits, a boolean dimension, booleans as classes
    ("v2", {"outputs": [{"name": "p", "shape": [4, 2**62, 4], "datatype": "FP32", "data": []}]}, "bad output"),
    ("v2", {"outputs": [{"name": "p", "shape": [4, True], "datatype": "FP32", "data": [0.1] * 4}]}, "bad output"),
    ("v2", {"outputs": [{"name": "p", "shape": [4], "datatype": "BOOL", "data": [False, True, False, True]}]},
     "bad output"),
])
def test_garbage_responses_fail_the_batch_with_a_reason(protocol: str, body: Any, failure: str) -> None:
    handler, _ = scripted((200, body))
    answer = against(handler, protocol)
    assert answer.failure == failure and answer.answered == 0 and not answer.unavailable


def test_a_non_json_answer_is_not_read_back() -> None:
    handler, _ = scripted((200, "internal-only: db_password=hunter2"))
    answer = against(handler)
    assert answer.failure == "not JSON" and "hunter2" not in answer.detail and answer.detail == "34 bytes"


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(), st.integers(-2**80, 2**80), st.text(max_size=5),
              st.integers(-2**70, 2**70).map(lambda n: n * 10**19)),
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(st.text(max_size=3), children, max_size=4)),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.sampled_from(["", " ", "\n"]))
def test_response_decoding_gives_what_the_standard_library_gives(value: Any, space: str) -> None:
    payload = (space + json.dumps(value) + space).encode()
    assert repr(decode_json(payload)) == repr(json.loads(payload))


@pytest.mark.parametrize("payload", [
    b"[NaN, -Infinity]", b"[1e400]", b"123456789012345678901234567890", b"[-9223372036854775809]",
    b"[18446744073709551616, 0.1234567890123456789012]", b'["\\ud800"]', b"\xef\xbb\xbf[1]",
    '{"a": [1]}'.encode("utf-16"), b'{"a": 1, "a": 2}', b"[" * 2000 + b"]" * 2000, b"[1] x", b"\xff",
])
def test_response_decoding_edge_cases_match_the_standard_library(payload: bytes) -> None:
    def outcome(decode: Callable[[bytes], Any]) -> str:
        try:
            return repr(decode(payload))
        except (ValueError, RecursionError) as exc:
            return type(exc).__name__
    assert outcome(decode_json) == outcome(json.loads)


def test_unusable_single_predictions_are_counted_per_sample() -> None:
    features = np.zeros((9, 4))
    body = ('{"predictions": ["safe", "porn", [0.1, 0.2, 0.7], [0.1, 0.2], null, 7, 1, [NaN, 0.1, 0.2], '
            + "1" * 400 + "]}")  # the last: an integer past any float
    handler, _ = scripted((200, body))
    answer = against(handler, "v1", features)
    assert answer.failure is None
    assert answer.predicted.tolist() == [0, -1, 2, -1, -1, -1, 1, -1, -1]
    assert answer.sample_problems == {"unknown label": 1, "wrong score vector length": 1,
                                      "unreadable prediction": 2, "class index out of range": 1,
                                      "non-finite scores": 1}


def test_v2_label_and_index_outputs_and_output_selection() -> None:
    body = {"outputs": [{"name": "probabilities", "shape": [4, 3], "datatype": "FP32", "data": [0.0] * 12},
                        {"name": "label", "shape": [4, 1], "datatype": "INT64", "data": [[0], [1], [2], [2]]}]}
    handler, _ = scripted((200, body))

    async def scenario() -> BatchAnswer:
        async with http_server(handler) as url:
            return await predict(endpoint(url, "v2", output_name="label"))

    assert run(scenario()).predicted.tolist() == EXPECTED


def test_timeouts_refused_connections_and_oversized_answers_are_reported() -> None:
    async def slow() -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="{}")

    handler, _ = scripted((200, slow))
    answer = against(handler, timeout_seconds=0.2, retries=0)
    assert answer.failure == "unavailable: timeout" and answer.unavailable

    closed = endpoint(f"http://127.0.0.1:{free_port()}", "v1")
    answer = run(predict(closed, retries=1))
    assert answer.unavailable and answer.failure is not None and answer.failure.startswith("unavailable: ")

    handler, _ = scripted((200, {"predictions": ["safe"] * 4, "padding": "x" * 500}))
    assert against(handler, max_response_bytes=100).failure == "response too large"


BINARY = ("safe", "nsfw")  # a sigmoid's output order: its one score is the probability of "nsfw"
SCORES = [0.93, 0.12, 0.5, 0.4999, 1.0, 0.0]


def against_binary(handler: Callable[[web.Request], Awaitable[web.StreamResponse]], protocol: str,
                   features: np.ndarray = FEATURES) -> BatchAnswer:
    async def scenario() -> BatchAnswer:
        async with http_server(handler) as url:
            return await predict(endpoint(url, protocol, output_classes=BINARY), features)

    return run(scenario())


@pytest.mark.parametrize(("protocol", "body"), [
    ("v2", {"outputs": [{"name": "p", "shape": [6, 1], "datatype": "FP32", "data": [[s] for s in SCORES]}]}),
    ("v2", {"outputs": [{"name": "p", "shape": [6, 1], "datatype": "FP32", "data": SCORES}]}),
    ("v1", {"predictions": [[s] for s in SCORES]}),
    ("v1", {"predictions": SCORES}),
])
def test_one_score_per_row_is_a_binary_classifiers_probability_as_the_exporter_reads_it(
        protocol: str, body: Any) -> None:
    handler, _ = scripted((200, body))
    answer = against_binary(handler, protocol, np.zeros((6, 4)))
    assert answer.failure is None and not answer.sample_problems
    read = [CLASSES[i] for i in answer.predicted]
    assert read == ["nsfw", "safe", "nsfw", "safe", "nsfw", "safe"]
    assert tuple(read) == predicted_classes(body, DecodeOptions(BINARY))


def test_integer_class_indices_stay_indices_beside_one_score_per_row() -> None:
    handler, _ = scripted((200, {"predictions": [0, 1, 2, 2]}))
    assert against(handler, "v1").predicted.tolist() == EXPECTED
    handler, _ = scripted((200, {"outputs": [{"name": "p", "shape": [4, 1], "datatype": "INT64",
                                              "data": [1, 0, 1, 2]}]}))
    answer = against_binary(handler, "v2")
    assert answer.predicted.tolist() == [2, 0, 2, -1] and answer.sample_problems == {"class index out of range": 1}


def test_v1_label_objects_are_read_as_labels() -> None:
    body = {"predictions": [{"label": "safe", "score": 0.9}, {"label": "nsfw"}, [{"label": "suggestive"}],
                            {"label": "porn"}, {"score": 0.3}, {"label": 1}]}
    handler, _ = scripted((200, body))
    answer = against(handler, "v1", np.zeros((6, 4)))
    assert answer.predicted.tolist() == [0, 2, 1, -1, -1, -1]
    assert answer.sample_problems == {"unknown label": 1, "unreadable prediction": 2}


@pytest.mark.parametrize(("protocol", "body"), [
    ("v2", {"outputs": [{"name": "p", "shape": [4, 1], "datatype": "FP32", "data": [1.5, -0.2, 0.7, 7.25]}]}),
    ("v1", '{"predictions": [[1.5], [-0.2], [0.7], [NaN]]}'),
])
def test_a_single_score_outside_zero_to_one_is_unusable(protocol: str, body: Any) -> None:
    handler, _ = scripted((200, body))
    answer = against_binary(handler, protocol)
    assert answer.failure is None and answer.predicted.tolist() == [-1, -1, 2, -1]
    assert answer.sample_problems == {"ambiguous score": 3}


@pytest.mark.parametrize(("protocol", "body", "last"), [
    # A V2 FP* output's values are scores, an exact 2.0 (or 1.0) too, as the exporter reads them.
    ("v2", {"outputs": [{"name": "p", "shape": [4, 1], "datatype": "FP32", "data": [0.93, 0.12, 0.5, 2.0]}]}, -1),
    ("v2", {"outputs": [{"name": "p", "shape": [4, 1], "datatype": "INT64", "data": [7, 7, 7, 2]}]}, 2),
    # V1 has no datatype: an integral number is a class index (XGBoost writes class ids as 2.0).
    ("v1", {"predictions": [[0.93], [0.12], [0.5], [2.0]]}, 2),
])
def test_one_score_per_row_needs_exactly_two_classes(protocol: str, body: Any, last: int) -> None:
    handler, _ = scripted((200, body))
    answer = against(handler, protocol)  # the dataset's three classes
    assert answer.failure is None and answer.predicted.tolist() == [-1, -1, -1, last]
    assert sum(answer.sample_problems.values()) == 3 + (last < 0)


def test_a_413_names_the_request_body_limit_to_raise_not_a_setting_that_does_not_exist() -> None:
    handler, calls = scripted((413, "Request Entity Too Large"))
    answer = against(handler, retries=0)
    assert answer.unavailable and answer.failure == ("unavailable: HTTP 413 (request too large for the server: raise "
                                                     "the model server's or its proxy's request body limit)")
    assert "batch size" not in answer.failure and calls == [413]
