"""Federated training for real, on Flower's Simulation Engine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedprofile.client.features import N_FEATURES
from fedprofile.config import TrainConfig
from fedprofile.models.propensity import build_model
from fedprofile.server.local_superlink import CONNECTION_NAME, LocalSuperLink, flower_env
from fedprofile.simulations.training import run_training

from .conftest import flower_processes

ROOT = Path(__file__).resolve().parents[1]


def _wait_no_flower_processes(under: Path, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := flower_processes(under)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_three_silos_two_rounds_match_the_oracle(silos_dir: Path, tmp_path: Path) -> None:
    shown: list[str] = []
    cfg = TrainConfig(num_server_rounds=2, silos_dir=str(silos_dir), workspace=str(tmp_path))
    result = run_training(cfg, progress=shown.append)
    metrics = result.metrics

    federated = metrics["federated"]["overall"]["auc"]
    oracle = metrics["oracle"]["overall"]["auc"]
    assert federated > 0.65, f"federated AUC {federated:.3f} is not clearly above chance"
    assert abs(federated - oracle) <= 0.03, f"federated {federated:.3f} vs oracle {oracle:.3f}"
    silos = {"datapacks", "flights", "hotels"}
    assert set(metrics["federated"]["silos"]) == silos
    assert set(metrics["silo_alone"]["silos"]) == silos
    assert set(metrics["oracle"]["silos"]) == silos
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert all(sorted(r["trained"]) == sorted(silos) for r in metrics["rounds"])
    assert any("round 2: AUC" in line for line in shown), shown

    run_dir = result.run_dir
    for name in ("metrics.json", "model.pt", "config.json", "auc_by_round.png"):
        assert (run_dir / name).stat().st_size > 0, name
    saved = torch.load(run_dir / "model.pt", weights_only=False)
    model = build_model(N_FEATURES, hidden=saved["hidden_units"])
    model.load_state_dict(saved["state_dict"])
    assert saved["config"]["num-server-rounds"] == 2
    assert json.loads((run_dir / "config.json").read_text())["silos-dir"] == str(silos_dir.resolve())

    assert not _wait_no_flower_processes(tmp_path), "processes left behind after the run"


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def test_flwr_run_dot_then_superlink_stop(silos_dir: Path, tmp_path: Path) -> None:
    """The README's path: `flwr run .` in the activated venv, on Flower's managed local
    SuperLink, then `fedprofile superlink stop` leaves no process behind."""
    run_dir = tmp_path / "run"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": _free_port(),
           "FLWR_LOCAL_CONTROL_API_PORT": _free_port()}
    try:
        proc = subprocess.run(
            ["flwr", "run", ".", "--stream",
             "--run-config", f"num-server-rounds=2 silo-alone=false silos-dir='{silos_dir}' "
                             f"run-dir='{run_dir}'",
             "--federation-config", "num-supernodes=3"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "Starting local SuperLink" in proc.stdout
        assert flower_processes(tmp_path), "Flower keeps its managed SuperLink running"
    finally:
        stop = subprocess.run([str(bin_dir / "fedprofile"), "superlink", "stop"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert "stopped Flower's local SuperLink" in stop.stdout
    assert not _wait_no_flower_processes(tmp_path), "processes left behind after the run"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["federated"]["silos"]) == {"datapacks", "flights", "hotels"}
    assert metrics["federated"]["overall"]["auc"] > 0.6
    assert metrics["silo_alone"] == {}


def test_mismatched_supernode_count_is_a_clear_error(silos_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with LocalSuperLink(tmp_path / "link") as link:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "flwr"), "run", ".", CONNECTION_NAME, "--stream",
             "--run-config", f"num-server-rounds=1 round-timeout=60.0 silos-dir='{silos_dir}' "
                             f"run-dir='{run_dir}'",
             "--federation-config", "num-supernodes=2 client-resources-num-cpus=1"],
            cwd=ROOT, env=flower_env(link.flwr_home), capture_output=True, text=True,
            timeout=300,
        )
    output = proc.stdout + proc.stderr
    assert "num-supernodes=3" in output, output[-3000:]
    assert not (run_dir / "metrics.json").exists()
    assert not _wait_no_flower_processes(tmp_path)


def test_process_check_sees_a_running_superlink(tmp_path: Path) -> None:
    """The leftover-process check used above can fail: it sees a live SuperLink."""
    with LocalSuperLink(tmp_path / "link"):
        assert flower_processes(tmp_path)
    assert not _wait_no_flower_processes(tmp_path)
