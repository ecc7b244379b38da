"""Regional recommendation: bounded counting, its sensitivity, noise, the Flower run, serving."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedprofile.cli import main
from fedprofile.client.interactions import Interactions, load_interactions
from fedprofile.client.regional import (BY_REGION, OVERALL_NO_REGION, OVERALL_OPTED_OUT,
                                        OVERALL_WITHHELD, RegionCounts, customer_regions,
                                        customer_top_items, privatize, proposal, region_counts,
                                        regional_plan, regional_recommendations, sensitivity,
                                        serve_lists)
from fedprofile.client.store import SiloStore
from fedprofile.config import ConfigError, TrainConfig
from fedprofile.privacy.accounting import MechanismStep, epsilon
from fedprofile.server.regional import Agreement, regional_report, report_text, spent
from fedprofile.simulations.regional_run import noise_free_reference, run_regional_job

from .conftest import open_ledger, workspace_ledger

SILOS = ("datapacks", "flights", "hotels")
DAY = 86_400


def _tiny() -> Interactions:
    """Hand-made: six customers, two regions, catalogue x/y/z (w is not in it)."""
    rows = [
        # a: North; x bought 3 times, z twice, y once -> with max 2: x, z
        ("a", "x", 1, "North"), ("a", "x", 2, "North"), ("a", "x", 3, "North"),
        ("a", "z", 4, "North"), ("a", "z", 5, "North"), ("a", "y", 6, "North"),
        # b: South (3 of 4 interactions); y and z twice each -> tie by code: y, z
        ("b", "y", 1, "North"), ("b", "z", 2, "South"), ("b", "z", 2, "South"),
        ("b", "y", 3, "South"),
        # c: South; x, y, z once each -> tie by code: x, y
        ("c", "z", 1, "South"), ("c", "y", 2, "South"), ("c", "x", 3, "South"),
        # d: no region -> counted nowhere
        ("d", "x", 1, None),
        # e: opted out -> counted nowhere
        ("e", "x", 1, "North"),
        # f: North/South tie -> North (first name); w is outside the catalogue -> y only
        ("f", "w", 1, "South"), ("f", "w", 2, "North"), ("f", "w", 3, "North"),
        ("f", "w", 4, "South"), ("f", "y", 5, "North"), ("f", "w", 6, "South"),
    ]
    return Interactions.from_records([(u, i, t * DAY, None, r) for u, i, t, r in rows],
                                     opted_out=["e"], name="tiny")


def test_regions_and_bounded_items_per_customer() -> None:
    inter = _tiny()
    regions = dict(zip(inter.users, customer_regions(inter), strict=True))
    assert regions == {"a": "North", "b": "South", "c": "South", "d": "", "e": "North",
                       "f": "North"}
    users, items = customer_top_items(inter, ["x", "y", "z"], 2)
    chosen: dict[str, list[str]] = {}
    for u, i in zip(users, items, strict=True):
        chosen.setdefault(str(inter.users[u]), []).append("xyz"[i])
    # b: y and z twice each -> both; f: w is not in the catalogue
    assert chosen == {"a": ["x", "z"], "b": ["y", "z"], "c": ["x", "y"], "d": ["x"],
                      "e": ["x"], "f": ["y"]}


def test_counts_by_hand() -> None:
    counts = region_counts(_tiny(), ["North", "South"], ["x", "y", "z"], max_items=2)
    # North: a (x, z), f (y); e opted out. South: b (y, z), c (x, y). d has no region.
    np.testing.assert_array_equal(counts.items, [[1, 1, 1], [1, 2, 1]])
    np.testing.assert_array_equal(counts.customers, [2, 2])
    one = region_counts(_tiny(), ["North", "South"], ["x", "y", "z"], max_items=1)
    np.testing.assert_array_equal(one.items, [[1, 1, 0], [1, 1, 0]])  # a: x; f: y; b: y; c: x
    only_south = region_counts(_tiny(), ["South"], ["x", "y", "z"], max_items=2)
    np.testing.assert_array_equal(only_south.customers, [2])  # North customers count nowhere
    with pytest.raises(ValueError, match="sorted"):
        region_counts(_tiny(), ["South", "North"], ["x", "y", "z"], max_items=2)


def test_proposal_leaves_out_opted_out_and_rare() -> None:
    items, regions = proposal(_tiny(), min_customers=2)
    # x: a, c, d (e opted out); y: a, b, c, f; z: a, b, c; w: f only
    assert items == ["x", "y", "z"]
    assert regions == ["North", "South"]  # North: a, f (e opted out); South: b, c
    assert proposal(_tiny(), min_customers=3) == (["x", "y", "z"], [])


def _random_interactions(rng: np.random.Generator, users: int) -> Interactions:
    rows = []
    for u in range(users):
        for _ in range(rng.integers(0, 40)):
            rows.append((f"u{u:03d}", f"i{rng.integers(0, 15):02d}", int(rng.integers(0, 1000)) * DAY,
                         None, ["A", "B", "C", ""][rng.integers(0, 4)]))
    opted = [f"u{u:03d}" for u in range(users) if rng.random() < 0.1]
    return Interactions.from_records(rows, opted_out=opted)


def test_sensitivity_bound_on_random_neighbours() -> None:
    """Removing any one customer moves the release by at most sqrt(max_items + 1) in L2."""
    rng = np.random.default_rng(7)
    regions, items = ["A", "B", "C"], [f"i{i:02d}" for i in range(12)]  # i12-i14 off-catalogue
    worst = 0.0
    for trial in range(20):
        inter = _random_interactions(rng, 25)
        max_items = int(rng.integers(1, 8))
        full = region_counts(inter, regions, items, max_items).flat()
        for u in range(inter.n_users):
            keep = np.ones(inter.n_users, dtype=bool)
            keep[u] = False
            gap = np.linalg.norm(full - region_counts(inter.subset_users(keep), regions, items,
                                                      max_items).flat())
            assert gap <= sensitivity(max_items) + 1e-9, (trial, u, gap)
            worst = max(worst, gap / sensitivity(max_items))
    assert worst == pytest.approx(1.0)  # the bound is reached: it is tight, not loose


def test_noise_is_calibrated_to_the_sensitivity() -> None:
    zeros = RegionCounts(np.zeros((200, 500)), np.zeros(200))
    noisy = privatize(zeros, 0.5, 20, np.random.default_rng(3))
    values = noisy.flat()
    assert values.std() == pytest.approx(0.5 * math.sqrt(21), rel=0.02)
    assert abs(values.mean()) < 0.05
    assert not np.array_equal(privatize(zeros, 0.5, 20, np.random.default_rng()).items,
                              privatize(zeros, 0.5, 20, np.random.default_rng()).items)


def test_plan_targets_epsilon_and_refuses_no_dp() -> None:
    config = {"dp": True, "dp-delta": 1e-5, "dp-noise-multiplier": 1.0, "dp-target-epsilon": 1.0}
    plan = regional_plan("s", 5000, config)
    assert (plan.sample_rate, plan.total_steps) == (1.0, 1)
    reached = epsilon([MechanismStep(plan.noise_multiplier, 1.0, 1)], 1e-5, "rdp")
    assert 0.95 <= reached <= 1.0
    assert regional_plan("s", 5000, {**config, "dp-target-epsilon": 0.0}).noise_multiplier == 1.0
    with pytest.raises(ValueError, match="DP noise only"):
        regional_plan("s", 5000, {**config, "dp": False})
    with pytest.raises(ValueError, match="dp-delta"):
        regional_plan("s", 10, {**config, "dp-delta": 0.2})  # not below 1/N
    assert spent(plan.noise_multiplier, 1e-5, 20)["clip-norm"] == pytest.approx(math.sqrt(21))


def test_report_withholds_small_regions_and_items() -> None:
    agreed = Agreement(("East", "North", "South"), ("a", "b", "c", "d"))
    total = RegionCounts(np.array([[30.0, 12.0, 9.4, 2.0],    # East: shown; c rounds to 9
                                   [8.0, 8.0, 8.0, 8.0],      # North: 9.4 customers -> withheld
                                   [50.0, 60.4, 10.5, 0.0]]),  # South: c rounds to 11
                         np.array([40.0, 9.4, 100.2]))
    report = regional_report(total, agreed, k=3, k_min=10)
    east, north, south = report["regions"]
    assert east == {"region": "East", "customers": 40,
                    "top": [{"rank": 1, "item": "a", "count": 30},
                            {"rank": 2, "item": "b", "count": 12}]}
    assert north == {"region": "North", "customers": None, "top": []}
    assert [t["item"] for t in south["top"]] == ["b", "a", "c"]
    assert report["withheld_regions"] == 1
    # The overall list adds the shown regions only (North's 8s are not in it).
    assert report["overall"]["customers"] == 140
    assert [(t["item"], t["count"]) for t in report["overall"]["top"]] == [
        ("a", 80), ("b", 72), ("c", 20)]
    text = report_text(report, 3, 10)
    assert "North: withheld (<10 customers)" in text and "~60" in text
    assert "std ~2.5" in report_text(report, 3, 10, noise_std=2.5)


def test_serving_lists_and_bases() -> None:
    inter = _tiny()
    lists = dict(zip(inter.users, serve_lists(
        inter, 2, {"North": ["x", "y"], "South": None}, ["z", "y", "x"], exclude_bought=True),
        strict=True))
    assert lists["a"] == (BY_REGION, [])  # bought x, y and z: nothing left
    assert lists["b"] == (OVERALL_WITHHELD, ["x"])  # South withheld; bought y, z
    assert lists["d"] == (OVERALL_NO_REGION, ["z", "y"])
    assert lists["e"] == (OVERALL_OPTED_OUT, ["z", "y"])  # history not used either
    assert lists["f"] == (BY_REGION, ["x", "z"])  # y bought: x, then filled from overall


def test_regional_is_dp_only(silos_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="noisy counts only"):
        TrainConfig(job="regional", dp=False)
    with pytest.raises(ConfigError, match="noisy counts only"):
        run_regional_job(TrainConfig(silos_dir=str(silos_dir), workspace=str(tmp_path)),
                         progress=lambda _m: None)
    assert TrainConfig(job="regional", dp=True).effective_purpose == "recommendation-training"


def test_cli_regional_refuses_without_a_ledger(silos_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["regional", "--silos-dir", str(silos_dir), "--workspace", str(tmp_path)])
    assert code != 0
    assert "ledger" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# one Flower run on the synthetic travel silos, shared by the tests below
# ---------------------------------------------------------------------------
K_MIN = 30
SIGMA = 0.1  # small noise: the summed noise has std 0.1 * sqrt(21) * sqrt(3) ~ 0.8 per cell


@pytest.fixture(scope="module")
def regional_run(silos_dir: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> tuple[dict[str, Any], Path]:
    workspace = tmp_path_factory.mktemp("regional")
    ledger = workspace_ledger(workspace, {s: 1000.0 for s in SILOS}, "recommendation-training")
    cfg = TrainConfig(silos_dir=str(silos_dir), workspace=str(workspace), job="regional",
                      dp=True, dp_noise_multiplier=SIGMA, dp_delta=1e-5, regional_k_min=K_MIN,
                      regional_max_items=20)
    return run_regional_job(cfg, progress=lambda _m: None), ledger


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
def test_every_silo_is_charged_once_with_its_plan(regional_run: tuple[dict[str, Any], Path]
                                                  ) -> None:
    result, ledger_path = regional_run
    step = [MechanismStep(SIGMA, 1.0, 1)]
    planned = max(epsilon(step, 1e-5, "rdp"), epsilon(step, 1e-5, "prv"))
    with open_ledger(ledger_path) as ledger:
        assert ledger.verify().ok
        spent_entries = list(ledger.entries(status="spent"))
        reserved = {e.silo: e for e in ledger.entries(status="reserved")}
    assert sorted(e.silo for e in spent_entries) == sorted(SILOS)  # once each
    for entry in spent_entries:
        assert entry.purpose == "recommendation-training" and entry.privacy_unit == "customer"
        assert entry.mechanism == "gaussian-region-counts"
        assert entry.epsilon == pytest.approx(planned, rel=1e-6)
        assert entry.epsilon == pytest.approx(reserved[entry.silo].epsilon, rel=1e-9)
        assert entry.params["steps"] == 1 and entry.params["sample_rate"] == 1.0
        assert entry.params["clip_norm"] == pytest.approx(math.sqrt(21))
    assert set(result["privacy"]["silos"]) == set(SILOS)
    assert result["config"]["noise_multiplier"] == SIGMA


def test_lists_are_suppressed_and_close_to_the_exact_counts(
        silos_dir: Path, regional_run: tuple[dict[str, Any], Path]) -> None:
    result, _ = regional_run
    regions, items = result["agreed"]["regions"], result["agreed"]["items"]
    assert regions and items
    exact = noise_free_reference([silos_dir / s for s in SILOS], regions, items, 20)
    decisive = 0
    for r, row in enumerate(result["regions"]):
        assert row["region"] == regions[r]
        if row["customers"] is None:
            assert row["top"] == []
            assert exact.customers[r] < K_MIN + 5
            continue
        assert row["customers"] >= K_MIN
        assert abs(row["customers"] - exact.customers[r]) <= 5
        assert len(row["top"]) <= 10
        for t in row["top"]:
            assert t["count"] >= K_MIN
            assert abs(t["count"] - exact.items[r, items.index(t["item"])]) <= 5
        shown = {t["item"] for t in row["top"]}
        assert not any(items[i] in shown for i in np.flatnonzero(exact.items[r] < K_MIN - 5))
        first, second = np.sort(exact.items[r])[::-1][:2]
        if first - second >= 5:  # a clear winner survives the small noise
            decisive += 1
            assert row["top"][0]["item"] == items[int(np.argmax(exact.items[r]))]
    assert decisive >= 2
    assert all(t["count"] >= K_MIN for t in result["overall"]["top"])
    assert result["noise_free_reference"]["mean_top_overlap"] > 0.5
    text = Path(result["run_dir"], "regional.txt").read_text()
    assert "Overall" in text
    saved = json.loads(Path(result["run_dir"], "regional.json").read_text())
    assert saved["regions"] == result["regions"]


def test_serving_writes_one_list_per_customer(
        silos_dir: Path, tmp_path: Path, regional_run: tuple[dict[str, Any], Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    result, _ = regional_run
    report = Path(result["run_dir"], "regional.json")
    out = tmp_path / "lists.csv"
    summary = regional_recommendations(silos_dir / "hotels", report, out=out)
    with SiloStore.open(silos_dir / "hotels") as store:
        inter = load_interactions(store)
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    by_customer: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_customer.setdefault(row["customer_key"], []).append(row)
    assert summary.customers == inter.n_users
    assert len(by_customer) == inter.n_users - summary.no_list
    assert summary.no_list == 0
    listed = {r["region"]: [t["item"] for t in r["top"]] for r in result["regions"]}
    overall = [t["item"] for t in result["overall"]["top"]]
    opted = set(inter.users[inter.opt_out])
    for key, customer_rows in by_customer.items():
        assert [int(r["rank"]) for r in customer_rows] == list(range(1, len(customer_rows) + 1))
        assert len({r["basis"] for r in customer_rows}) == 1
        items = [r["item"] for r in customer_rows]
        basis = customer_rows[0]["basis"]
        if key in opted:
            assert basis == OVERALL_OPTED_OUT and items == overall[:10]
        elif basis == BY_REGION:
            own = listed[customer_rows[0]["region"]]
            assert items == (own + [i for i in overall if i not in own])[:10]
        else:
            assert items == overall[:10]
    assert summary.opted_out == len(opted) > 0
    assert summary.by_region > 0
    # The CLI writes into the silo by default.
    assert main(["regional", "serve", str(silos_dir / "hotels"), "--report", str(report)]) == 0
    assert "customers:" in capsys.readouterr().out
    assert (silos_dir / "hotels" / "regional-recommendations.csv").is_file()
    (silos_dir / "hotels" / "regional-recommendations.csv").unlink()  # the fixture is shared
