"""Rules of the registry adapters that the s23 mutation review showed no test held (each test fails on the mutant
named in its comment): MLflow's overload answers retried, a missing version never swallowed, an alias already gone
no error, the body read against its deadline, credentials and hostless URIs refused, the rejection flag written
last, no -previous alias MLflow would refuse."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from test_adapter_mutation_guards import registry_with_versions
from test_mlflow_garbage import API, GOOD_VERSION, NOT_FOUND, FakeMlflow
from urllib3 import HTTPResponse

from controller.http_deadline import AnswerTooSlow
from controller.registry import (
    REJECTED_TAG,
    REJECTED_TIME_TAG,
    MlflowRegistry,
    RegistryConfigError,
    RegistryUnavailable,
    RequestPolicy,
    VersionNotFound,
)
from controller.registry.mlflow_rest import bounded_text, validated_tracking_uri
from tests.http_stub import serving


@pytest.fixture()
def mlflow_at() -> Iterator[tuple[MlflowRegistry, FakeMlflow]]:
    """The adapter, without retries, on a FakeMlflow that also answers DELETE (as it answers GET)."""
    fake = FakeMlflow()
    handler: Any = fake.server.RequestHandlerClass
    handler.do_DELETE = handler.do_GET
    with serving(fake.server):
        yield MlflowRegistry(fake.url, policy=RequestPolicy(timeout_seconds=3, max_retries=0)), fake


@pytest.mark.parametrize("status", [408, 429])
def test_an_overloaded_mlflow_is_unavailable_not_a_refusal(mlflow_at: tuple[MlflowRegistry, FakeMlflow],
                                                            status: int) -> None:
    """M17: 429 and 408 pass; read as a refusal the rollout would stop on a busy registry."""
    registry, mlflow = mlflow_at
    mlflow.answer(f"{API}/model-versions/get", status, {"message": "slow down"})
    with pytest.raises(RegistryUnavailable, match=f"HTTP {status}"):
        registry.resolve("m", version="2")


@pytest.mark.parametrize("write", [
    lambda r: r.set_alias("m", "production", "2"),  # M10
    lambda r: r.tag_rejected("m", "2", "worse", "{}", "ns/r"),  # M12: deleted between the read and the tag
], ids=["set_alias", "tag_rejected"])
def test_a_write_to_a_version_mlflow_no_longer_has_is_version_not_found(
        mlflow_at: tuple[MlflowRegistry, FakeMlflow], write: Callable[[MlflowRegistry], object]) -> None:
    """Swallowed, the engine would take the alias or the rejection as written."""
    registry, mlflow = mlflow_at
    mlflow.answer(f"{API}/model-versions/get", 200, {"model_version": GOOD_VERSION})
    for endpoint in ("registered-models/alias", "model-versions/set-tag"):
        mlflow.answer(f"{API}/{endpoint}", 404, NOT_FOUND)
    with pytest.raises(VersionNotFound, match="has no version 2"):
        write(registry)


def test_removing_an_alias_already_gone_is_no_error(mlflow_at: tuple[MlflowRegistry, FakeMlflow]) -> None:
    """M11: a first rollout's rollback sent again after the alias was removed (or removed by hand) must finish."""
    registry, mlflow = mlflow_at
    mlflow.answer(f"{API}/registered-models/get", 200,
                  {"registered_model": {"name": "m", "aliases": [{"alias": "production", "version": "2"}]}})
    mlflow.answer(f"{API}/registered-models/alias", 404, NOT_FOUND)  # the DELETE
    assert registry.restore_alias("m", "production", None, "2") == (None, True)


def test_a_body_still_arriving_past_its_deadline_is_cut() -> None:
    """M24: requests' timeout bounds each wait for bytes only; a body trickling in must not hold the caller."""
    response = requests.Response()
    response.raw = HTTPResponse(io.BytesIO(b'{"registered_model": {}}'), preload_content=False)
    with pytest.raises(AnswerTooSlow):
        bounded_text(response, deadline=time.monotonic() - 1)


@pytest.mark.parametrize("uri", ["http://s3cr3t-token@mlflow.ns:5000", "https://ops:pa55word@mlflow.ns"])
def test_a_tracking_uri_carrying_credentials_is_refused_without_echoing_them(uri: str) -> None:
    """M25: a token as the user name alone would reach every message that names the registry."""
    with pytest.raises(RegistryConfigError, match="must not contain credentials") as refused:
        validated_tracking_uri(uri)
    assert "s3cr3t" not in str(refused.value) and "pa55word" not in str(refused.value)


@pytest.mark.parametrize("uri", ["http:///api", "http://:5000"])
def test_a_tracking_uri_without_a_host_is_refused(uri: str) -> None:
    """M32: requests would fail on every call with an error far from the spec field to fix."""
    with pytest.raises(RegistryConfigError, match="with a host"):
        validated_tracking_uri(uri)


def test_a_tracking_uri_on_port_zero_is_refused_saying_so() -> None:
    """s40crd F1: port 0 was refused as a wrong scheme, though the scheme was http."""
    with pytest.raises(RegistryConfigError, match="port from 1 to 65535"):
        validated_tracking_uri("http://mlflow.ml.svc.cluster.local:0")


def test_the_rejection_flag_is_written_last_just_after_its_time() -> None:
    """R12: a tag set to true means all the others are there (a crash between the writes leaves it unset)."""
    registry = registry_with_versions(1)
    written: list[str] = []
    set_tags = registry._set_version_tags

    def recorded(model: str, version: str, tags: dict[str, str]) -> None:
        written.extend(tags)
        set_tags(model, version, tags)

    registry._set_version_tags = recorded  # type: ignore[assignment,method-assign]
    registry.tag_rejected("m", "1", "worse", "{}", "ns/r")
    assert written[-2:] == [REJECTED_TIME_TAG, REJECTED_TAG], written


def test_a_previous_alias_past_mlflows_length_limit_is_not_written() -> None:
    """R15: MLflow would refuse it, and the promotion with it; the stable alias alone still moves."""
    stable_alias = "p" * 250  # with -previous: 259 characters, MLflow allows 255
    registry = registry_with_versions(2)
    registry.set_alias("m", stable_alias, "1")
    registry.promote("m", stable_alias, "2", "ns/r")
    assert registry.previous_alias(stable_alias) is None
    assert registry._aliases("m") == {stable_alias: "2"}
