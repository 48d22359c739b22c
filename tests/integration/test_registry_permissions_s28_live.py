"""The permissions promotion needs, against a real `mlflow server --app-name basic-auth` (review s28registry).

MLflow checks MANAGE before it looks whether an alias exists, so an unconditional DELETE of `<alias>-previous` failed
every first promotion by an EDIT user; and a 403 says which permission the refused request needs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests
from mlflow.server.auth.client import AuthServiceClient

from controller.devstack.mlflow_server import MlflowServer
from controller.registry import Credentials, MlflowRegistry, RegistryAccessDenied, RequestPolicy
from controller.registry.types import PREVIOUS_VERSION_TAG

pytestmark = pytest.mark.integration

FAST = RequestPolicy(timeout_seconds=5.0, max_retries=1, backoff_seconds=0.05)
STABLE = "production"
ADMIN = ("admin", "admin-" + uuid.uuid4().hex)
USERS = {"editor": "EDIT", "reader": "READ"}
PASSWORDS = {user: f"{user}-{uuid.uuid4().hex}" for user in USERS}


@pytest.fixture(scope="module")
def auth_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-auth-s28"), admin=ADMIN)
    server.start()
    try:
        with pytest.MonkeyPatch.context() as env:  # AuthServiceClient authenticates from mlflow's environment
            env.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
            env.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
            for user in USERS:
                AuthServiceClient(server.url).create_user(user, PASSWORDS[user])
        yield server
    finally:
        server.stop()


def _model(server: MlflowServer, versions: int = 2) -> str:
    """A model with versions 1..versions, no alias; each user granted its permission on it."""
    model = f"perm-{uuid.uuid4().hex[:8]}"
    api = f"{server.url}/api/2.0/mlflow"
    with requests.Session() as session:
        session.auth = ADMIN
        session.post(f"{api}/registered-models/create", json={"name": model}, timeout=10).raise_for_status()
        for _ in range(versions):
            session.post(f"{api}/model-versions/create", json={"name": model, "source": "s3://b/m"},
                         timeout=10).raise_for_status()
    client = AuthServiceClient(server.url)
    for user, permission in USERS.items():
        client.grant_user_permission(user, "registered_model", model, permission)
    return model


def _registry(server: MlflowServer, user: str) -> MlflowRegistry:
    password = ADMIN[1] if user == ADMIN[0] else PASSWORDS[user]
    return MlflowRegistry(server.url, Credentials(username=user, password=password), policy=FAST)


@pytest.fixture(autouse=True)
def _admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # AuthServiceClient authenticates from mlflow's environment variables.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])


def test_an_edit_user_makes_a_first_promotion(auth_mlflow: MlflowServer) -> None:
    model = _model(auth_mlflow)
    editor, admin = _registry(auth_mlflow, "editor"), _registry(auth_mlflow, ADMIN[0])
    result = editor.promote(model, STABLE, "2", "ns/r")
    assert result.alias_moved and result.previous_version is None
    assert admin._aliases(model) == {STABLE: "2"}
    assert admin.resolve(model, version="2").tags[PREVIOUS_VERSION_TAG] == ""
    # Sent again after a kill between the registry write and the status write: nothing new, no refusal.
    again = editor.promote(model, STABLE, "2", "ns/r")
    assert not again.alias_moved and again.previous_version is None


def test_a_stale_previous_alias_still_goes_on_a_first_promotion(auth_mlflow: MlflowServer) -> None:
    model = _model(auth_mlflow, versions=3)
    admin = _registry(auth_mlflow, ADMIN[0])
    admin.set_alias(model, f"{STABLE}-previous", "1")  # left from an earlier life of the model
    with pytest.raises(RegistryAccessDenied) as refused:  # deleting it needs MANAGE, and the message says so
        _registry(auth_mlflow, "editor").promote(model, STABLE, "2", "ns/r")
    message = str(refused.value)
    assert "refused DELETE registered-models/alias with HTTP 403" in message
    assert "MANAGE permission on the registered model is needed" in message
    assert PASSWORDS["editor"] not in message and PASSWORDS["editor"] not in repr(refused.value)
    admin.promote(model, STABLE, "3", "ns/r")
    assert admin._aliases(model) == {STABLE: "3"}  # the stale way back is gone


@pytest.mark.parametrize(("call", "needed"), [
    (lambda r, m: r.set_alias(m, STABLE, "1"), "EDIT"),
    (lambda r, m: r._set_version_tags(m, "1", {"k": "v"}), "EDIT"),
])
def test_a_refusal_names_the_permission_and_keeps_mlflows_words(auth_mlflow: MlflowServer, call, needed) -> None:
    model = _model(auth_mlflow)
    reader = _registry(auth_mlflow, "reader")
    with pytest.raises(RegistryAccessDenied) as refused:
        call(reader, model)
    message = str(refused.value)
    assert "HTTP 403 (credentials: basic): Permission denied" in message  # MLflow's own plain-text answer
    assert message.endswith(f"{needed} permission on the registered model is needed")
    assert PASSWORDS["reader"] not in message


def test_wrong_credentials_say_they_were_not_accepted(auth_mlflow: MlflowServer) -> None:
    model = _model(auth_mlflow)
    wrong = MlflowRegistry(auth_mlflow.url, Credentials(username="editor", password="not-" + PASSWORDS["editor"]),
                           policy=FAST)
    with pytest.raises(RegistryAccessDenied, match="HTTP 401") as refused:
        wrong.resolve(model, version="1")
    assert "the credentials were not accepted" in str(refused.value)
    assert PASSWORDS["editor"] not in str(refused.value)
