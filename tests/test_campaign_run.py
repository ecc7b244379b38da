"""Marketing cases 2 and 3 planned in a silo, then played out against the ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedprofile.cli import main
from fedprofile.client.campaigns import save_audience_plan
from fedprofile.client.cases import repurchase_campaign, retention_campaign
from fedprofile.client.store import SiloStore
from fedprofile.privacy.silo_keys import read_identity_key
from fedprofile.simulations.campaign_run import simulate_campaign

from .conftest import Domain


def test_retention_plan_leaves_out_opted_out_and_covers_every_tier(silos_dir: Path) -> None:
    plan, audience = retention_campaign(silos_dir / "flights", "ret-plan")
    with SiloStore.open(silos_dir / "flights") as store:
        opted = {k for (k,) in store.execute(
            "SELECT customer_key FROM customers WHERE marketing_opt_out = 1")}
    assert opted and not opted & set(audience.pseudonyms)
    assert plan.excluded_opted_out > 0
    assert plan.treated + plan.control == plan.audience_size == len(audience.rows)
    tiers = {offer.split(":")[0] for offer in plan.offers}
    assert tiers == {"platinum", "gold", "silver", "member"}
    assert plan.coupon_cost > 0 and plan.margin_per_conversion > 0


def test_the_measured_lift_covers_the_true_lift_in_most_seeds(silos_dir: Path,
                                                              platform_dir: Path,
                                                              domain: Domain,
                                                              tmp_path: Path) -> None:
    """Each seed is a new campaign (a new A/B split) and new outcome draws."""
    silo = silos_dir / "flights"
    keys = domain.keys(silo)
    key = read_identity_key(silo, domain.secret)
    covered, lifts = 0, []
    seeds = range(12)
    for seed in seeds:
        plan, audience = retention_campaign(silo, f"ret-{seed}")
        save_audience_plan(silo, plan, audience, key)
        result = simulate_campaign(platform_dir, keys, f"ret-{seed}", tmp_path / str(seed),
                                   seed=seed)
        covered += result["ground_truth"]["interval_covers_true_lift"]
        lifts.append(result["ground_truth"]["true_lift"])
        report = json.loads((tmp_path / str(seed) / "campaign-report.json").read_text())
        assert report["report"]["treated"]["n"] == plan.treated
    assert covered >= 9, f"the 95% interval covered the true lift in only {covered} of 12 seeds"
    assert min(lifts) > 0  # a coupon never lowers a customer's conversion probability
    assert (tmp_path / "0" / "conversion_by_group.png").stat().st_size > 0
    assert (tmp_path / "0" / "qini.png").stat().st_size > 0
    assert (tmp_path / "0" / "expected_gain.png").stat().st_size > 0


def test_cli_repurchase_plan_and_simulation(silos_dir: Path, platform_dir: Path, domain: Domain,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    keys = ["--keyring", str(domain.keyring), "--key-file", str(domain.secret.path)]
    silo = str(silos_dir / "hotels")
    assert main(["campaign", "repurchase", silo, "--id", "rep-cli", *keys]) == 0
    out = capsys.readouterr().out
    assert "campaign rep-cli (repurchase-reminder)" in out and "opted out, left out" in out
    plan = json.loads((silos_dir / "hotels" / "audiences" / "campaign-rep-cli.plan.json")
                      .read_text())
    assert plan["audience_size"] > 0 and plan["send_schedule"]
    assert main(["campaign", "simulate", silo, "--id", "rep-cli", "--platform",
                 str(platform_dir), "--out", str(tmp_path / "rep"), *keys]) == 0
    out = capsys.readouterr().out
    assert "absolute lift" in out and "ground truth (simulation only): true lift" in out
    _, repurchase_audience = repurchase_campaign(silos_dir / "hotels", "rep-cli")
    assert len(repurchase_audience.rows) == plan["audience_size"]


def test_case_1_from_the_psi_audience_measured_on_data_packs(silos_dir: Path, platform_dir: Path,
                                                              domain: Domain,
                                                              tmp_path: Path) -> None:
    """The flights silo's sealed PSI audience becomes a campaign measured on data-pack orders."""
    from fedprofile.config import TrainConfig
    from fedprofile.client.cases import cross_sell_campaign
    from fedprofile.simulations.psi_run import run_psi_job

    run_psi_job(TrainConfig(silos_dir=str(silos_dir), workspace=str(tmp_path),
                            key_file=str(domain.secret.path)), progress=lambda _m: None)
    silo = silos_dir / "flights"
    key = read_identity_key(silo, domain.secret)
    plan, audience = cross_sell_campaign(silo, "xs-test", key)
    assert plan.audience_size == len(audience.rows) > 50
    assert all(offer.startswith("data pack coupon: ") for offer in plan.offers)
    assert any("opted out" in note for note in plan.notes)
    save_audience_plan(silo, plan, audience, key)
    result = simulate_campaign(platform_dir, domain.keys(silo), "xs-test", tmp_path / "xs",
                               line="datapacks", seed=1)
    assert result["line"] == "datapacks"
    assert result["ground_truth"]["true_lift"] > 0


def test_expected_gain_curve_and_top_share_follow_the_ranking() -> None:
    from fedprofile.simulations.campaign_run import expected_gain_curve, true_uplift_of_top

    uplift = np.array([0.1, 0.4, 0.0, 0.2])
    x, gain = expected_gain_curve(np.array([3.0, 1.0, 0.0, 2.0]), uplift)
    assert x.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert np.allclose(gain, [0.0, 0.1, 0.3, 0.7, 0.7])  # order: 0, 3, 1, 2
    assert true_uplift_of_top(uplift, uplift, 0.5) == pytest.approx(0.3)
    assert true_uplift_of_top(-uplift, uplift, 0.25) == pytest.approx(0.0)
