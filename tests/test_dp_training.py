"""DP-SGD in every ClientApp: customer-level, cumulative over rounds, recomputable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedprofile.config import TrainConfig
from fedprofile.models.dp import DPParams, sample_rate, train_local_dp
from fedprofile.models.propensity import build_model
from fedprofile.models.training import TrainParams, train_local
from fedprofile.privacy.accounting import MechanismStep, epsilon
from fedprofile.simulations.training import run_training

from .conftest import open_ledger as _open
from .conftest import workspace_ledger

SILOS = ("datapacks", "flights", "hotels")


def _ledger(workspace: Path, caps: dict[str, float]) -> Path:
    return workspace_ledger(workspace, caps, "propensity-training")


def test_dp_sgd_steps_match_poisson_sampling() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 56)).astype(np.float32)
    y = (rng.random(2000) < 0.3).astype(np.float32)
    stats = train_local_dp(build_model(56), x, y, TrainParams(epochs=2, batch_size=200),
                           DPParams(noise_multiplier=1.0))
    assert stats.sample_rate == pytest.approx(0.1)
    assert stats.steps == 20  # 1/q batches per epoch, epochs 2
    with pytest.raises(ValueError, match="noise multiplier"):
        DPParams(noise_multiplier=0.0)
    assert sample_rate(500, 100) == 1.0


def test_dp_noise_is_not_reproducible_from_the_run_seed() -> None:
    """The seed travels in the run config the server sends: the noise must not follow it.

    Plain training with one seed is reproducible; DP training with the same
    seed and start weights must not be, or the server could regenerate the
    noise and subtract it.
    """
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 56)).astype(np.float32)
    y = (rng.random(400) < 0.3).astype(np.float32)
    params = TrainParams(epochs=1, batch_size=100, seed=3)

    def weights(dp: bool) -> torch.Tensor:
        model = build_model(56, seed=0)
        if dp:
            train_local_dp(model, x, y, params, DPParams(noise_multiplier=1.0))
        else:
            train_local(model, x, y, params)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(weights(False), weights(False))
    assert not torch.equal(weights(True), weights(True))


def test_federated_dp_run_reports_cumulative_customer_level_epsilon(silos_dir: Path,
                                                                   tmp_path: Path) -> None:
    ledger_path = _ledger(tmp_path, {s: 50.0 for s in SILOS})
    cfg = TrainConfig(num_server_rounds=4, silos_dir=str(silos_dir), workspace=str(tmp_path),
                      dp=True, dp_noise_multiplier=1.0, dp_delta=1e-4)
    metrics = run_training(cfg, progress=lambda _m: None).metrics
    privacy = metrics["privacy"]
    assert privacy["dp"] is True and privacy["privacy_unit"].startswith("customer")
    assert set(privacy["silos"]) == {"datapacks", "flights", "hotels"}
    for silo, spent in privacy["silos"].items():
        # Independent recomputation from the reported mechanism: four rounds composed.
        per_round = int(spent["steps"]) // 4
        history = [MechanismStep(spent["noise-multiplier"], spent["sample-rate"], per_round)] * 4
        assert spent["epsilon-rdp"] == pytest.approx(epsilon(history, 1e-4, "rdp"), rel=1e-9), silo
        one_round = epsilon(history[:1], 1e-4, "rdp")
        assert spent["epsilon-rdp"] > one_round, "the epsilon must accumulate over rounds"
        assert 0 < spent["epsilon-prv"] <= spent["epsilon-rdp"] * 1.01
    assert metrics["silo_alone"] == {}  # no silent budget spend on baselines
    assert metrics["federated"]["overall"]["auc"] > 0.6

    # Every silo's spend is in the ledger: reserved before, settled after, chain intact.
    with _open(ledger_path) as ledger:
        assert ledger.verify().ok
        spent = {e.silo: e for e in ledger.entries(status="spent")}
        reserved = {e.silo: e for e in ledger.entries(status="reserved")}
        assert set(spent) == set(reserved) == set(SILOS)
        for silo in SILOS:
            charged = spent[silo].epsilon
            assert charged == pytest.approx(privacy["silos"][silo]["epsilon-rdp"], rel=1e-6)
            assert charged <= reserved[silo].epsilon + 1e-9
            assert spent[silo].privacy_unit == "customer"
            assert ledger.spent(silo, "propensity-training") == pytest.approx(charged)
        assert ledger.worst_case_per_customer() == pytest.approx(
            sum(spent[s].epsilon for s in SILOS))


def test_run_over_a_cap_is_refused_before_training(silos_dir: Path, tmp_path: Path) -> None:
    from fedprofile.server.local_superlink import SimulationError

    ledger_path = _ledger(tmp_path, {"datapacks": 50.0, "flights": 0.05, "hotels": 50.0})
    cfg = TrainConfig(num_server_rounds=2, silos_dir=str(silos_dir), workspace=str(tmp_path),
                      dp=True, dp_delta=1e-4, run_dir=str(tmp_path / "run"))
    with pytest.raises(SimulationError):
        run_training(cfg, progress=lambda _m: None)
    log = (tmp_path / "run" / "flower" / "flower.log").read_text()
    assert "flights" in log and "remaining" in log
    assert "trained on" not in log, "no silo may train when the run is refused"
    assert not (tmp_path / "run" / "metrics.json").exists()
    with _open(ledger_path) as ledger:
        assert ledger.verify().ok
        assert all(ledger.spent(s, "propensity-training") == 0 for s in SILOS)
        assert not list(ledger.entries(status="spent"))


def test_delta_must_be_below_one_over_n(silos_dir: Path, tmp_path: Path) -> None:
    from fedprofile.server.local_superlink import SimulationError

    _ledger(tmp_path, {s: 50.0 for s in SILOS})
    cfg = TrainConfig(num_server_rounds=1, silos_dir=str(silos_dir), workspace=str(tmp_path),
                      dp=True, dp_delta=0.01, min_silos=3, round_timeout=120.0)
    shown: list[str] = []
    with pytest.raises(SimulationError):
        run_training(cfg, progress=shown.append)
    log = next(tmp_path.rglob("flower.log")).read_text()
    assert "is not below 1/N" in log


def test_server_side_dp_fedavg_is_a_separate_ledgered_guarantee(silos_dir: Path,
                                                                tmp_path: Path) -> None:
    ledger_path = _ledger(tmp_path, {})
    with _open(ledger_path) as ledger:
        ledger.set_cap("federation", "propensity-training", 100.0, 1e-3)
    cfg = TrainConfig(num_server_rounds=3, silos_dir=str(silos_dir), workspace=str(tmp_path),
                      server_dp=True, server_dp_noise_multiplier=0.5, server_dp_clip_norm=5.0,
                      dp_delta=1e-4, silo_alone=False)
    metrics = run_training(cfg, progress=lambda _m: None).metrics
    assert metrics["privacy"]["server_dp"]["privacy_unit"].startswith("silo")
    with _open(ledger_path) as ledger:
        assert ledger.verify().ok
        (entry,) = list(ledger.entries(status="spent"))
        assert (entry.silo, entry.mechanism, entry.privacy_unit) == (
            "federation", "dp-fedavg-server", "silo")
        expected = epsilon([MechanismStep(0.5, 1.0, 3)], 1e-4, "rdp")
        assert entry.epsilon == pytest.approx(max(expected, entry.epsilon_by_accountant["prv"]))
        assert entry.params["steps"] == 3 and entry.params["aggregation"] == "uniform FedAvg"
    assert metrics["federated"]["overall"]["auc"] == metrics["federated"]["overall"]["auc"]  # not NaN


def test_two_concurrent_runs_cannot_overspend(silos_dir: Path, tmp_path: Path) -> None:
    """Two real DP runs race for a budget that fits one: exactly one trains."""
    import threading

    from fedprofile.server.local_superlink import SimulationError

    caps = {s: 1.0 for s in SILOS}
    ledger_path = _ledger(tmp_path, caps)
    outcomes: dict[str, str] = {}

    def run(name: str) -> None:
        cfg = TrainConfig(num_server_rounds=1, silos_dir=str(silos_dir), workspace=str(tmp_path),
                          dp=True, dp_target_epsilon=0.7, dp_delta=1e-4,
                          run_dir=str(tmp_path / name))
        try:
            run_training(cfg, progress=lambda _m: None, oracle=False)
            outcomes[name] = "trained"
        except SimulationError:
            outcomes[name] = "refused"

    threads = [threading.Thread(target=run, args=(n,)) for n in ("run-a", "run-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert sorted(outcomes.values()) == ["refused", "trained"], outcomes
    with _open(ledger_path) as ledger:
        assert ledger.verify().ok
        for silo in SILOS:
            assert 0 < ledger.spent(silo, "propensity-training") <= caps[silo] + 1e-9
        assert len(list(ledger.entries(status="spent"))) == 3
