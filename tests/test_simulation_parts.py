"""The simulation's pure parts: sweep statistics, lift, silo cutting, reproducible simulated noise."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedprofile.client.store import SiloStore
from fedprofile.models.dp import SIMULATION_NOISE_SEED_ENV, noise_seeds
from fedprofile.models.metrics import lift_at, log_losses
from fedprofile.models.training import TrainParams, make_loader
from fedprofile.simulations.membership import check_bounds, control_verdict
from fedprofile.simulations.shards import cut_platform, shard_counts
from fedprofile.simulations.sweep import (PointResult, mean_ci, smallest_epsilon_within,
                                          spent_epsilon, summarize)


def test_mean_ci_uses_students_t() -> None:
    mean, low, high = mean_ci([1.0, 2.0, 3.0], 0.95)
    # sd = 1, n = 3, t(0.975, 2) = 4.302653 (tables)
    assert mean == 2.0
    assert high - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert low == pytest.approx(2 * mean - high)
    single = mean_ci([0.7])
    assert single[0] == 0.7 and math.isnan(single[1]) and math.isnan(single[2])


def point(model: str, eps: float | None, seed: int, value: float) -> PointResult:
    metrics = {"propensity": ("auc", "lift@10%"), "recommender": ("hr@10", "ndcg@10")}[model]
    return PointResult(model=model, epsilon=eps, seed=seed, run_dir="r",
                       utility={m: value for m in metrics}, spent_epsilon=eps, seconds=1.0)


def test_summarize_and_the_smallest_epsilon_within_tolerance() -> None:
    points = [point("propensity", None, s, v) for s, v in ((0, 0.80), (1, 0.82))]
    points += [point("propensity", 1.0, s, v) for s, v in ((0, 0.60), (1, 0.64))]
    points += [point("propensity", 4.0, s, v) for s, v in ((0, 0.78), (1, 0.77))]
    points += [point("propensity", 16.0, s, v) for s, v in ((0, 0.80), (1, 0.80))]
    rows = summarize(points)
    auc = [r for r in rows if r["metric"] == "auc"]
    assert [r["level"] for r in auc] == ["no-dp", "eps-1", "eps-4", "eps-16"]
    assert auc[0]["mean"] == pytest.approx(0.81) and auc[1]["seeds"] == 2
    kept = smallest_epsilon_within(rows, "propensity", "auc", 0.05)  # target 0.7695
    assert kept["epsilon"] == 4.0 and kept["share"] == pytest.approx(0.775 / 0.81)
    strict = smallest_epsilon_within(rows, "propensity", "auc", 0.01)  # target 0.8019
    assert strict["epsilon"] is None and strict["target"] == pytest.approx(0.8019)
    assert smallest_epsilon_within(rows, "recommender", "hr@10", 0.05)["no_dp"] is None


def test_spent_epsilon_is_the_worst_silo_by_the_tighter_accountant() -> None:
    metrics = {"privacy": {"dp": True, "silos": {
        "a": {"epsilon-rdp": 3.0, "epsilon-prv": 2.5},
        "b": {"epsilon-rdp": 2.0, "epsilon-prv": 2.8}}}}
    assert spent_epsilon(metrics) == 2.5
    assert spent_epsilon({"privacy": {"dp": False}}) is None


def test_lift_and_per_example_losses_by_hand() -> None:
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.1, 0.1, 0.0, 0.0, 0.0])
    assert lift_at(y, scores, 0.1) == pytest.approx(1.0 / 0.2)  # top 1 is a buyer; base rate 0.2
    assert lift_at(y, scores, 0.2) == pytest.approx(0.5 / 0.2)
    assert math.isnan(lift_at(np.zeros(4), np.ones(4)))
    assert log_losses(np.array([1, 0]), np.array([0.5, 0.25])) == pytest.approx(
        [math.log(2), -math.log(0.75)])


def test_audit_verdicts() -> None:
    rows = [{"attack": "canary", "level": "no-dp", "epsilon": None, "seed": 0, "claimed_epsilon": None,
             "epsilon_lower_bound": 0.4, "confidence": 0.95, "works": True, "auc": 0.6},
            {"attack": "canary", "level": "eps-1", "epsilon": 1.0, "seed": 0, "claimed_epsilon": 0.9,
             "epsilon_lower_bound": 0.2, "confidence": 0.95, "works": False, "auc": 0.51}]
    assert check_bounds(rows) == []
    rows[1]["epsilon_lower_bound"] = 1.3
    [violation] = check_bounds(rows)
    assert "epsilon >= 1.300" in violation and "claims 0.900" in violation
    assert control_verdict(rows) == {"attack": "canary", "models": 1, "attack_works": 1,
                                     "conclusive": True, "best_auc": 0.6}
    rows[0]["works"] = False
    assert control_verdict(rows)["conclusive"] is False


def test_shard_counts_spread_evenly() -> None:
    assert shard_counts(["f", "h", "d"], 3) == {"f": 1, "h": 1, "d": 1}
    assert shard_counts(["f", "h", "d"], 100) == {"f": 34, "h": 33, "d": 33}
    with pytest.raises(ValueError, match="cannot hold"):
        shard_counts(["f", "h", "d"], 2)


def test_cut_platform_makes_disjoint_silos_and_a_holdout(platform_dir: Path, domain,
                                                         tmp_path: Path) -> None:
    fed = cut_platform(platform_dir, tmp_path / "fed", 5, domain.keyring, domain.secret,
                       holdout=0.25, seed=3)
    # lines in name order; the first ones take the extra silos
    assert [s.name for s in fed.silos] == ["datapacks-00", "datapacks-01", "flights-00",
                                           "flights-01", "hotels"]
    assert sorted(fed.holdout) == ["datapacks", "flights", "hotels"]
    keys: dict[str, set[str]] = {}
    for path in [*fed.silos, *fed.holdout.values()]:
        with SiloStore.open(path) as store:
            keys[str(path)] = set(store.customer_arrays().customer_ids)
    flights = [k for p, k in keys.items() if "flights" in p]
    assert all(not (a & b) for i, a in enumerate(flights) for b in flights[i + 1:])
    total = sum(map(len, flights))
    held = len(keys[str(fed.holdout["flights"])])
    assert 0.18 < held / total < 0.32
    with pytest.raises(FileExistsError):
        cut_platform(platform_dir, tmp_path / "fed", 5, domain.keyring, domain.secret)


def test_simulated_noise_is_reproducible_per_silo_and_round_and_random_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.zeros(10, dtype=np.float32)

    def seeds(data: np.ndarray, seed: int) -> tuple[int, int]:
        return noise_seeds(make_loader(data, y, TrainParams(seed=seed)))

    monkeypatch.delenv(SIMULATION_NOISE_SEED_ENV, raising=False)
    assert seeds(x, 0) != seeds(x, 0)  # OS entropy: the server cannot regenerate the noise
    monkeypatch.setenv(SIMULATION_NOISE_SEED_ENV, "scenario-7")
    assert seeds(x, 0) == seeds(x, 0)
    assert seeds(x, 0) != seeds(x, 1)  # another round
    assert seeds(x, 0) != seeds(x + 1, 0)  # another silo's data
    monkeypatch.setenv(SIMULATION_NOISE_SEED_ENV, "scenario-8")
    first = seeds(x, 0)
    monkeypatch.setenv(SIMULATION_NOISE_SEED_ENV, "scenario-7")
    assert first != seeds(x, 0)
    assert torch.Generator().manual_seed(seeds(x, 0)[0]).initial_seed() == seeds(x, 0)[0]


def test_canaries_are_planted_half_in_training_with_coin_flip_labels(
        platform_dir: Path, domain, tmp_path: Path) -> None:
    import datetime as dt

    from fedprofile.client.features import FEATURE_NAMES, load_silo_data
    from fedprofile.simulations.canaries import is_canary

    as_of = dt.date(2026, 1, 1)
    train_time = dt.datetime(2025, 11, 2)  # as_of minus two 30-day horizons
    fed = cut_platform(platform_dir, tmp_path / "fed", 3, domain.keyring, domain.secret,
                       holdout=0.0, seed=5, canaries=120, train_time=train_time, horizon_days=30)
    planted = held = 0
    labels = []
    for path in fed.silos:
        with SiloStore.open(path) as store:
            data = load_silo_data(store, 30, as_of.isoformat())
        canary = is_canary(data.train.x, FEATURE_NAMES)
        planted += int(canary.sum())
        labels += list(data.train.y[canary])
        # real customers never sit in the canaries' region
        with SiloStore.open(path) as store:
            provinces = set(store.customer_arrays().province)
        assert (canary.sum() > 0) and ("Audit canary" in provinces)
    for path in fed.holdout.values():
        with SiloStore.open(path) as store:
            data = load_silo_data(store, 30, as_of.isoformat())
        held += int(is_canary(data.train.x, FEATURE_NAMES).sum())
        assert is_canary(data.train.x, FEATURE_NAMES).all()  # holdout 0: canaries only
    assert planted + held == 360 and 0.4 < planted / 360 < 0.6
    assert 0.35 < float(np.mean(labels)) < 0.65  # coin-flip labels, not the base rate (~0.1)


def test_simulated_mechanism_noise_is_keyed_by_what_is_released(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from fedprofile.models.dp import noise_rng

    monkeypatch.delenv(SIMULATION_NOISE_SEED_ENV, raising=False)
    assert noise_rng("flights", b"c").normal() != noise_rng("flights", b"c").normal()
    monkeypatch.setenv(SIMULATION_NOISE_SEED_ENV, "scenario-7")
    assert noise_rng("flights", b"c").normal() == noise_rng("flights", b"c").normal()
    assert noise_rng("flights", b"c").normal() != noise_rng("hotels", b"c").normal()
    assert noise_rng("flights", b"c").normal() != noise_rng("flights", b"d").normal()


def test_segment_report_rows_check_what_the_report_shows() -> None:
    from fedprofile.simulations.reidentification import segment_rows

    report = {"suppressed_segments": 1, "suppressed_cells": 4, "segments": [
        {"size": 120, "per_silo": {"a": 70, "b": 50}},
        {"size": None, "per_silo": {"a": None, "b": None}},
        {"size": 40, "per_silo": {"a": 33, "b": 7}},  # 7: a cell the report failed to withhold
    ]}
    sizes, cells = segment_rows(report, k_min=10)
    assert sizes["groups"] == 2 and sizes["smallest_group_released"] == 40
    assert sizes["status"] == "suppressed below k" and sizes["suppressed_groups"] == 1
    assert cells["groups"] == 4 and cells["smallest_group_released"] == 7
    assert cells["status"].startswith("below k")


def test_published_counts_are_flagged_under_k_and_psi_rows_name_both_sides() -> None:
    from fedprofile.simulations.reidentification import audience_rows, published_row

    row = published_row("campaign plan", "marketers", "arm", {"A": 40, "B": 38, "opted out": 3},
                        k_min=10)
    assert row["status"] == "below k: opted out" and row["smallest_group_released"] == 3
    assert row["suppressed_groups"] == 0  # published as it is: flagged, not hidden
    psi = {"server": {"receiver": "flights", "sender": "datapacks", "receiver_size": 120,
                      "sender_size": 95},
           "receiver": {"selected": 120, "matched_elsewhere": 30, "opted_out": 4, "no_phone": 0,
                        "audience": 86, "path": "/somewhere/secret"}}
    sizes, counts = audience_rows(psi, k_min=10, case="case 1")
    assert sizes["artifact"] == "PSI set sizes (case 1: flights x datapacks)"
    assert sizes["status"] == "no small group" and sizes["groups"] == 2
    assert counts["status"] == "below k: opted_out" and counts["groups"] == 4  # 0 is nobody


def test_silo_line_strips_the_shard_suffix_only() -> None:
    from fedprofile.simulations.shards import silo_line

    assert [silo_line(n) for n in ("flights", "flights-03", "datapacks-99", "my-silo")] == \
        ["flights", "flights", "datapacks", "my-silo"]
