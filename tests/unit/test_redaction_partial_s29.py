"""Review s29secrets: a secret a server echoes cut short (a gateway printing a header's first characters) was not
redacted, so most of a token reached status; a serving system's condition quoting the storage URI with its signature
or git token reached the TargetReady condition as it was."""

from __future__ import annotations

import base64

import pytest

from controller.redaction import WITHHELD_MESSAGE, redact_credentials
from controller.traffic.base import TargetState

TOKEN = "tk-SEKRETab12+cd/ef34gh56"


@pytest.mark.parametrize("echo", [
    f"upstream auth failed (Authorization: Bearer {TOKEN[:21]}...)",
    f"upstream auth failed (Authorization: Bearer {TOKEN[:8]}...)",
    "Authorization: Bearer tk-SEKRE%61b12...",  # cut and URL-encoded
])
def test_a_token_echoed_cut_short_withholds_the_text(echo: str) -> None:
    assert redact_credentials(echo, token=TOKEN) == WITHHELD_MESSAGE


def test_a_basic_auth_pair_echoed_cut_short_withholds_the_text() -> None:
    pair = base64.standard_b64encode(b"alice:PaSs-SEKRET-77/x").decode()
    said = f"Authorization: Basic {pair[:16]}..."
    assert redact_credentials(said, username="alice", password="PaSs-SEKRET-77/x") == WITHHELD_MESSAGE


def test_a_text_without_the_secret_is_kept() -> None:
    said = "HTTP 503 upstream auth failed (tk- is the prefix of every token)"
    assert redact_credentials(said, token=TOKEN) == said
    assert redact_credentials(f"Bearer {TOKEN} denied", token=TOKEN) == "Bearer *** denied"


def test_a_target_state_message_is_redacted() -> None:
    state = TargetState(target="InferenceService team-a/nsfw", exists=True, message=(
        "stable predictor is not ready: download of s3://models/nsfw/7?X-Amz-Signature=SIGSEKRET0123456789 failed "
        "(clone of https://ci-bot:glpat-GITSEKRET42@gitlab.example.com/ml/nsfw.git also failed)"))
    assert "SIGSEKRET" not in state.message and "GITSEKRET" not in state.message and "ci-bot" not in state.message
    assert "s3://models/nsfw/7?<redacted>" in state.message and "gitlab.example.com/ml/nsfw.git" in state.message


@pytest.mark.parametrize(("said", "secrets"), [
    # Review s29r6: a password starting with the username, or with a word, withheld the messages on-call needs.
    ('User "modelrollout" cannot patch resource "inferenceservices"', {"token": "modelrollout:hunter2"}),
    ("RESOURCE_DOES_NOT_EXIST: Registered Model with name=modelrollout-demo not found",
     {"username": "modelrollout", "password": "modelrollout-S3cr3t!"}),
    ("INVALID_PARAMETER_VALUE: password must not be empty", {"username": "admin", "password": "password1234"}),
])
def test_a_secrets_start_alone_does_not_withhold_an_ordinary_message(said: str, secrets: dict[str, str]) -> None:
    assert redact_credentials(said, **secrets) == said


@pytest.mark.parametrize("said", [
    # Review s29final: cut short with no scheme word before it.
    "secret=tk-SEKRETab12+cd/ef34Z",
    "upstream auth failed (X-Api-Key: tk-SEKRETab12+cd/ef34...)",
    '{"authorization": "tk-SEKRETab12+cd/ef3..."}',
])
def test_most_of_a_token_quoted_anywhere_withholds_the_text(said: str) -> None:
    assert redact_credentials(said, token=TOKEN) == WITHHELD_MESSAGE


def test_most_of_a_password_or_its_pair_quoted_anywhere_withholds_the_text() -> None:
    secrets = {"username": "alice", "password": "PaSs-SEKRET-77/x"}
    assert redact_credentials("invalid password 'PaSs-SEKRET-77/'", **secrets) == WITHHELD_MESSAGE
    pair = base64.standard_b64encode(b"alice:PaSs-SEKRET-77/x").decode()
    assert redact_credentials(f"credentials {pair[:-3]} rejected", **secrets) == WITHHELD_MESSAGE
