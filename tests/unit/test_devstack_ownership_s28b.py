"""`dev up` empties only the directories of the state dir that it created (review s28r3).

Was: `<state>/mlflow`, `<state>/prometheus` and `<state>/controlplane` were removed whatever they held
(`dev up --state-dir ~` deleted ~/mlflow), and a symlinked `<state>/mlflow` failed with "input/output failed"."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.devstack.processes import StackError
from controller.devstack.stack import Stack

OWNED_MARK = ".modelrollout-devstack"  # the mark `dev up` writes in the state dir


@pytest.fixture
def failing_control_plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An etcd and a kube-apiserver that exit at once: a start that gets that far fails, having started nothing."""
    assets = tmp_path / "assets"
    assets.mkdir()
    for name in ("etcd", "kube-apiserver"):
        (assets / name).write_text("#!/bin/sh\nexit 1\n")
        (assets / name).chmod(0o755)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))


@pytest.fixture
def no_prometheus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No prometheus on PATH: start_prometheus fails right after it has emptied (or refused) its directory."""
    (tmp_path / "empty-path").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))


def control_plane_ran(root: Path) -> None:
    """What dev up's control plane leaves in a state dir (an earlier version's too): its key, tokens and log."""
    (root / "controlplane").mkdir(parents=True)
    for name in ("sa.key", "tokens.csv", "kube-apiserver.log"):
        (root / "controlplane" / name).write_text("")


def home_like(root: Path, name: str) -> Path:
    """A user's own directory that happens to have a stack directory's name (as ~/mlflow with `--state-dir ~`)."""
    (root / name / "mlruns").mkdir(parents=True)
    (root / ".bashrc").write_text("# the user's\n")
    notes = root / name / "mlruns" / "notes.txt"
    notes.write_text("the user's own\n")
    return notes


@pytest.mark.usefixtures("failing_control_plane")
def test_a_users_mlflow_dir_is_refused_by_name_before_anything_starts(tmp_path: Path) -> None:
    root = tmp_path / "home"
    notes = home_like(root, "mlflow")
    with pytest.raises(StackError, match=rf"{root / 'mlflow'} holds files `dev up` did not create"):
        Stack(root=root).up()
    assert notes.read_text() == "the user's own\n"
    assert not (root / "controlplane").exists() and not (root / "state.json").exists()  # nothing was started
    assert not (root / OWNED_MARK).exists()  # nor claimed: a refused run leaves the user's directory as it was


@pytest.mark.usefixtures("failing_control_plane")
def test_a_users_controlplane_dir_is_refused_and_kept(tmp_path: Path) -> None:
    root = tmp_path / "home"
    notes = home_like(root, "controlplane")
    with pytest.raises(StackError, match=rf"{root / 'controlplane'} holds files"):
        Stack(root=root).up(with_mlflow=False, with_prometheus=False)
    assert notes.exists()


@pytest.mark.usefixtures("no_prometheus")
def test_a_users_prometheus_dir_is_refused_and_kept(tmp_path: Path) -> None:
    root = tmp_path / "home"
    notes = home_like(root, "prometheus")
    with pytest.raises(StackError, match=rf"{root / 'prometheus'} holds files"):
        Stack(root=root).start_prometheus()
    assert notes.exists()


def test_a_symlinked_mlflow_dir_is_refused_by_name_and_its_target_kept(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious.txt").write_text("kept\n")
    (root / "mlflow").symlink_to(target)
    with pytest.raises(StackError, match=rf"{root / 'mlflow'} is a symbolic link"):
        Stack(root=root).start_mlflow()
    assert (target / "precious.txt").read_text() == "kept\n" and (root / "mlflow").is_symlink()


@pytest.mark.usefixtures("no_prometheus")
def test_a_state_dir_from_before_the_mark_is_adopted_where_it_holds_only_what_dev_up_writes(tmp_path: Path) -> None:
    root = tmp_path / ".devstack"  # as an earlier version left it: no mark
    control_plane_ran(root)
    (root / "prometheus" / "targets").mkdir(parents=True)
    (root / "prometheus" / "targets" / "demo-exporter.json").write_text("[]")
    (root / "prometheus" / "prometheus.yml").write_text("{}")
    (root / "prometheus" / "prometheus.log").write_text("level=info\n")  # the log dev up writes there
    with pytest.raises(StackError, match="prometheus not found"):
        Stack(root=root).start_prometheus()
    assert not (root / "prometheus").exists()  # emptied, as every start does
    assert (root / OWNED_MARK).read_text().split() == ["prometheus"]


@pytest.mark.usefixtures("no_prometheus")
def test_a_users_own_server_logging_to_dev_ups_log_name_is_refused_without_dev_ups_control_plane(
        tmp_path: Path) -> None:
    """`prometheus > prometheus.log` by hand gives a user's own directory dev up's file names too: not adopted
    unless dev up's control plane ran in that state dir (s28final)."""
    root = tmp_path / "home"
    (root / "prometheus" / "data").mkdir(parents=True)
    (root / "prometheus" / "prometheus.yml").write_text("scrape_configs: []\n")
    (root / "prometheus" / "prometheus.log").write_text("level=info\n")
    with pytest.raises(StackError, match=rf"{root / 'prometheus'} holds files"):
        Stack(root=root).start_prometheus()
    assert (root / "prometheus" / "prometheus.yml").exists()


@pytest.mark.usefixtures("no_prometheus")
def test_a_users_own_server_layout_without_dev_ups_log_is_refused_and_kept(tmp_path: Path) -> None:
    """`prometheus.yml` with `data/`, or `mlflow.db` with `artifacts/`, is also the layout of a user's own server
    (`--state-dir ~` beside ~/prometheus): without the log dev up writes there, it is not adopted (review s28r7)."""
    root = tmp_path / "home"
    (root / "prometheus" / "data" / "wal").mkdir(parents=True)
    (root / "prometheus" / "prometheus.yml").write_text("scrape_configs: []\n")
    wal = root / "prometheus" / "data" / "wal" / "00000001"
    wal.write_text("the user's samples")
    with pytest.raises(StackError, match=rf"{root / 'prometheus'} holds files"):
        Stack(root=root).start_prometheus()
    assert wal.exists() and not (root / OWNED_MARK).exists()


@pytest.mark.usefixtures("no_prometheus")
def test_a_mark_that_is_not_text_names_nothing_and_a_stack_dir_it_lacks_is_still_adopted(tmp_path: Path) -> None:
    """A mark written before --no-mlflow dirs existed (or garbled) does not refuse the stack's own directory."""
    root = tmp_path / "state"
    control_plane_ran(root)
    (root / "prometheus").mkdir(parents=True)
    (root / "prometheus" / "prometheus.log").write_text("level=info\n")
    (root / OWNED_MARK).write_bytes(b"\xff\xfe")
    with pytest.raises(StackError, match="prometheus not found"):
        Stack(root=root).start_prometheus()
    assert "prometheus" in (root / OWNED_MARK).read_text(errors="replace").split()


@pytest.mark.usefixtures("no_prometheus")
def test_a_dir_dev_up_created_is_emptied_whatever_it_holds_and_an_empty_one_is_adopted(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "prometheus").mkdir(parents=True)
    (root / OWNED_MARK).write_text("prometheus\n")
    (root / "prometheus" / "queries.log").write_text("written by a later Prometheus\n")
    with pytest.raises(StackError, match="prometheus not found"):
        Stack(root=root).start_prometheus()
    assert not (root / "prometheus").exists()

    other = tmp_path / "other"
    (other / "prometheus").mkdir(parents=True)  # made for it by hand, empty
    with pytest.raises(StackError, match="prometheus not found"):
        Stack(root=other).start_prometheus()
    assert (other / OWNED_MARK).read_text().split() == ["prometheus"]


@pytest.mark.usefixtures("failing_control_plane")
def test_with_the_mark_a_dir_it_does_not_name_is_refused_even_with_dev_ups_file_names(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "mlflow").mkdir(parents=True)
    (root / "mlflow" / "mlflow.db").write_text("a user's registry")  # the name MLflow's docs use
    (root / OWNED_MARK).write_text("controlplane\nprometheus\n")
    with pytest.raises(StackError, match=rf"{root / 'mlflow'} holds files"):
        Stack(root=root).up()
    assert (root / "mlflow" / "mlflow.db").exists()
