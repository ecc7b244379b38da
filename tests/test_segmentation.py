"""Federated segmentation on Flower's Simulation Engine: wiring, DP charging, suppression."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedprofile.cli import main
from fedprofile.client.profiles import profile_silo
from fedprofile.client.segmenting import CLIP_NORM, segment_vectors
from fedprofile.config import ConfigError, TrainConfig
from fedprofile.models.kmeans import federated_kmeans, kmeans_privacy_steps
from fedprofile.privacy.accounting import epsilon
from fedprofile.simulations.segment_run import centroid_gap, run_segment_job

from .conftest import open_ledger, workspace_ledger

SILOS = ("datapacks", "flights", "hotels")


def _vectors(silos_dir: Path) -> list[np.ndarray]:
    out = []
    for name in SILOS:
        out.append(segment_vectors(profile_silo(silos_dir / name)))
    return out


def test_flower_runs_the_in_process_protocol(silos_dir: Path, tmp_path: Path) -> None:
    """With little noise the networked run lands where the reference protocol does.

    (The silos' noise comes from OS entropy, so the two cannot be equal; with
    noise multiplier 0.1 they agree to a small fraction of the feature box.)
    """
    workspace_ledger(tmp_path, {s: 1000.0 for s in SILOS}, "segmentation")
    cfg = TrainConfig(silos_dir=str(silos_dir), workspace=str(tmp_path), segments=4,
                      segment_iterations=3, segment_k_min=10, seed=5, job="segment", dp=True,
                      dp_noise_multiplier=0.1, dp_delta=1e-5)
    result = run_segment_job(cfg, progress=lambda _m: None, reference=False)
    ref = federated_kmeans(_vectors(silos_dir), 4, 3, None, CLIP_NORM, seed=5)
    shown = [c for c in result["centroids"] if c is not None]
    assert len(shown) == sum(r["size"] is not None for r in result["report"]["segments"])
    gap = centroid_gap(np.array(shown), ref.centroids)
    assert gap < 0.02, gap
    assert all(r["size"] >= 10 for r in result["report"]["segments"] if r["size"] is not None)
    assert "sizes" not in json.dumps(result["history"])  # only the k-suppressed report has sizes


def test_segmentation_is_dp_only(silos_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="noisy statistics only"):
        TrainConfig(job="segment", dp=False)
    with pytest.raises(ConfigError, match="noisy statistics only"):
        run_segment_job(TrainConfig(silos_dir=str(silos_dir), workspace=str(tmp_path)),
                        progress=lambda _m: None)


def test_dp_segmentation_is_charged_and_suppresses_small_groups(silos_dir: Path,
                                                                tmp_path: Path) -> None:
    ledger_path = workspace_ledger(tmp_path, {s: 10.0 for s in SILOS}, "segmentation")
    cfg = TrainConfig(silos_dir=str(silos_dir), workspace=str(tmp_path), segments=8,
                      segment_iterations=4, dp=True, dp_target_epsilon=2.0, dp_delta=1e-5,
                      segment_k_min=50, job="segment")
    result = run_segment_job(cfg, progress=lambda _m: None)
    sigma = result["config"]["noise_multiplier"]
    assert result["config"]["releases"] == 5  # the seeding release and 4 iterations
    expected = epsilon(kmeans_privacy_steps(sigma, 4), 1e-5, "rdp")
    assert expected <= 2.0 + 1e-6
    with open_ledger(ledger_path) as ledger:
        assert ledger.verify().ok
        spent = {e.silo: e for e in ledger.entries(status="spent")}
        assert set(spent) == set(SILOS)
        for entry in spent.values():
            assert entry.purpose == "segmentation" and entry.privacy_unit == "customer"
            assert entry.mechanism == "gaussian-kmeans"
            assert entry.epsilon == pytest.approx(expected, rel=1e-6)
            assert entry.params["steps"] == 5 and entry.params["sample_rate"] == 1.0
    report = result["report"]
    for row in report["segments"]:
        if row["size"] is None:
            assert row["centroid"] is None
        else:
            assert row["size"] >= 50
            assert all(v is None or v >= 50 for v in row["per_silo"].values())
    for centroid, row in zip(result["centroids"], report["segments"], strict=True):
        assert (centroid is None) == (row["size"] is None)  # withheld in the file too
    assert set(result["noise_free_reference"]) == {"mean_centroid_gap", "note"}


def test_cli_segment_refuses_without_a_ledger_and_profile_writes_csv(
        silos_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["segment", "--silos-dir", str(silos_dir), "--workspace", str(tmp_path),
                 "--set", "dp=true"])
    assert code != 0
    assert "ledger" in capsys.readouterr().err
    out_csv = tmp_path / "flights-profiles.csv"
    assert main(["profile", str(silos_dir / "flights"), "--out", str(out_csv)]) == 0
    text = capsys.readouterr().out
    assert "silo flights:" in text and "tags:" in text
    header = out_csv.read_text().splitlines()[0].split(",")
    assert header[:3] == ["user", "opt_out", "region"] and "clv" in header
