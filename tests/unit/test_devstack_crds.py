"""The local stack installs the real serving CRDs from the shared folder, and says so when they are missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.devstack.processes import StackError
from controller.devstack.stack import UPSTREAM_CRDS, crd_files


def test_the_stack_installs_our_crd_then_the_real_kserve_and_seldon_ones() -> None:
    files = crd_files()
    assert files[0].name == "modelrollout.io_modelrollouts.yaml"
    upstream = [path for path in files if path.parent == UPSTREAM_CRDS]
    assert upstream and files[-len(upstream):] == upstream
    text = "".join(path.read_text() for path in upstream)
    assert "group: serving.kserve.io" in text and "group: machinelearning.seldon.io" in text


def test_missing_upstream_crds_are_a_clear_error_not_a_stack_without_them(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"no KServe/Seldon CRDs in .*MODELROLLOUT_UPSTREAM_CRDS"):
        crd_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StackError):
        crd_files(tmp_path / "empty")
