"""Fixtures shared by the end-to-end rollout tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.devstack.controlplane import ControlPlane
from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.scenario import Scenario
from controller.operator.kubeapi import load_client_config


@pytest.fixture
def seldon_scenario(control_plane: ControlPlane, mlflow_server: MlflowServer, namespace: str,
                    tmp_path: Path) -> Iterator[Any]:
    made: list[Scenario] = []

    def make(target_kind: str, candidate_kind: str) -> Scenario:
        api_client = load_client_config(str(control_plane.admin_kubeconfig))
        # ready_delay: Seldon v1 reports "Creating" while a predictor's pods start or roll.
        scenario = Scenario(api_client, mlflow_server.url, namespace, tmp_path / "scenario",
                            model_name=f"nsfw-{uuid.uuid4().hex[:6]}", candidate_kind=candidate_kind,
                            target_kind=target_kind, ready_delay=0.5)
        made.append(scenario)
        return scenario.setup()

    yield make
    for scenario in made:
        scenario.stop()
