"""A second `dev up` (or demo) on a state dir in use is refused without advice that would stop the other run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.devstack.processes import StackError, boot_id, process_start, start
from controller.devstack.stack import Stack


def test_the_refusal_says_another_run_uses_it_and_dev_down_only_if_stale(tmp_path: Path) -> None:
    server = start("etcd", ["sleep", "120"], tmp_path / "etcd.log")
    try:
        root = tmp_path / ".devstack"
        root.mkdir()
        (root / "state.json").write_text(json.dumps({"env": {}, "bootId": boot_id(), "processes": [
            {"name": "etcd", "pid": server.pid, "started": process_start(server.pid), "log": str(server.log)}]}))
        with pytest.raises(StackError, match="already running") as refused:
            Stack(root=root).up(with_mlflow=False, with_prometheus=False)
        message = str(refused.value)
        assert "another demo or `dev up` is using it" in message, message
        # `dev down` is offered only for a stale stack, after waiting: it would stop a run still going.
        assert message.index("wait for it") < message.index("if it is stale") < message.index("dev down"), message
        assert server.alive()
    finally:
        server.stop()
