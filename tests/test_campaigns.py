"""Campaign A/B splits, plans and opt-outs (client.campaigns) and the ground-truth
response simulator (simulations.campaign_sim)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from fedprofile.client.audiences import load_audience
from fedprofile.client.campaigns import (
    Audience,
    AudienceRow,
    CampaignPlan,
    ab_split,
    drop_opted_out,
    load_audience_plan,
    opted_out_pseudonyms,
    plan_campaign,
    save_audience_plan,
)
from fedprofile.client.store import SiloStore
from fedprofile.privacy.sealed import TamperError
from fedprofile.simulations.campaign_sim import (
    PersonTruth,
    audience_persons,
    load_ground_truth,
    response_probabilities,
    simulate_outcomes,
)
from fedprofile.simulations.platform import KNOWN_LINES


def fake_pseudonyms(n: int, salt: str = "") -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest()[:32] for i in range(n)]


def within_binomial(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# --------------------------------------------------------------------------- ab_split


def test_ab_split_is_deterministic_and_balanced() -> None:
    pns = fake_pseudonyms(20_000)
    first = ab_split(pns, "spring-2026")
    assert first.dtype == bool and first.shape == (20_000,)
    assert np.array_equal(first, ab_split(list(pns), "spring-2026"))
    assert within_binomial(int(first.sum()), len(pns), 0.5)


def test_ab_split_carries_nothing_from_row_order_or_the_rest_of_the_audience() -> None:
    pns = fake_pseudonyms(5_000)
    base = ab_split(pns, "c1")
    perm = np.random.default_rng(3).permutation(len(pns))
    shuffled = ab_split([pns[i] for i in perm], "c1")
    assert np.array_equal(shuffled, base[perm])
    assert np.array_equal(ab_split(pns[:100], "c1"), base[:100])
    # Sorted by "score" (here: the pseudonym), the treated share stays even along the list.
    order = np.argsort(np.array(pns))
    halves = np.array_split(base[order], 2)
    assert all(within_binomial(int(h.sum()), h.size, 0.5) for h in halves)


def test_ab_split_is_independent_across_campaigns() -> None:
    pns = fake_pseudonyms(20_000, salt="x")
    a, b = ab_split(pns, "campaign-a"), ab_split(pns, "campaign-b")
    assert not np.array_equal(a, b)
    # Independent fair coins agree half the time; treated in both a quarter.
    assert within_binomial(int((a == b).sum()), len(pns), 0.5)
    assert within_binomial(int((a & b).sum()), len(pns), 0.25)


def test_ab_split_respects_treated_share() -> None:
    pns = fake_pseudonyms(20_000, salt="s")
    for share in (0.1, 0.2, 0.8):
        treated = ab_split(pns, "tiered", share)
        assert within_binomial(int(treated.sum()), len(pns), share)
    # One threshold on one hash: a larger treated share only adds customers.
    assert not (ab_split(pns, "tiered", 0.2) & ~ab_split(pns, "tiered", 0.5)).any()


@pytest.mark.parametrize("share", [0, 1, 0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_ab_split_refuses_a_share_outside_0_1(share: object) -> None:
    with pytest.raises(ValueError, match="treated_share"):
        ab_split(["a"], "c", share)  # type: ignore[arg-type]


def test_ab_split_refuses_bad_ids_and_inputs() -> None:
    for bad in ("", "has space", "nul\0x", "-leading", "x" * 101):
        with pytest.raises(ValueError, match="campaign_id"):
            ab_split(["a"], bad)
    with pytest.raises(TypeError):
        ab_split("abc", "c")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pseudonym #1"):
        ab_split(["a", ""], "c")


# --------------------------------------------------------------------------- opt-out and plans


def test_opted_out_customers_are_dropped_and_counted(silos_dir: Path) -> None:
    with SiloStore.open(silos_dir / "flights") as store:
        keys = [k for (k,) in store.execute("SELECT customer_key FROM customers ORDER BY 1")]
        opted = opted_out_pseudonyms(store)
    assert 0 < len(opted) < len(keys)
    result = drop_opted_out(keys, opted)
    assert result.excluded == len(opted)
    assert len(result.kept) == len(keys) - len(opted)
    assert not set(result.kept) & opted
    assert result.apply(keys) == result.kept

    plan, audience = plan_campaign(
        campaign_id="repurchase-1", case="repurchase-reminder", silo="flights",
        candidates=keys, opted_out=opted, offers="reminder", created="2026-01-01")
    assert plan.excluded_opted_out == len(opted)
    assert not set(audience.pseudonyms) & opted
    assert plan.audience_size == len(audience) == len(keys) - len(opted)
    assert plan.treated == int(audience.treated_mask().sum()) == plan.offers["reminder"]


def test_plan_counts_treated_offers_and_keeps_would_be_offers_on_control() -> None:
    pns = fake_pseudonyms(400)
    offers = ["gold" if i % 4 == 0 else "silver" for i in range(400)]
    scores = np.linspace(0, 1, 400)
    send = [f"2026-01-0{1 + i % 3}T09:00:00" for i in range(400)]
    plan, audience = plan_campaign(
        campaign_id="tiers-1", case="retention-tiers", silo="hotels", candidates=pns,
        opted_out=set(pns[:10]), offers=offers, scores=scores, send_at=send, treated_share=0.3,
        created="2026-01-01", coupon_cost=20, margin_per_conversion=150.0, notes=["test"])
    rows = {r.pseudonym: r for r in audience.rows}
    assert plan.excluded_opted_out == 10 and len(rows) == 390
    for i, p in enumerate(pns[10:], start=10):
        assert rows[p].offer == offers[i] and rows[p].score == pytest.approx(scores[i])
    treated = [r for r in audience.rows if r.group == "A"]
    assert plan.offers == {o: sum(r.offer == o for r in treated) for o in ("gold", "silver")}
    assert sum(plan.send_schedule.values()) == plan.treated and plan.send_at is None
    assert sum(r.group == "B" and r.offer is not None for r in audience.rows) == plan.control > 0
    assert within_binomial(plan.treated, 390, 0.3)
    with pytest.raises(ValueError, match="offers has 3 values"):
        plan_campaign(campaign_id="x", case="c", silo="s", candidates=pns, opted_out=(),
                      offers=["a", "b", "c"])
    with pytest.raises(ValueError, match="twice"):
        plan_campaign(campaign_id="x", case="c", silo="s", candidates=["p", "p"], opted_out=(),
                      offers=None)


def test_campaign_plan_validates_its_counts() -> None:
    good = dict(campaign_id="c", case="cross-sell-datapack", silo="flights", created="2026-01-01",
                treated_share=0.5, audience_size=10, treated=6, control=4, excluded_opted_out=1,
                offers={"pack": 6})
    plan = CampaignPlan(**good)  # type: ignore[arg-type]
    assert CampaignPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    for change, match in (({"control": 5}, "must equal"), ({"created": "soon"}, "ISO date"),
                          ({"offers": {"pack": 7}}, "only 6 treated"),
                          ({"window_days": 0}, "window_days"), ({"coupon_cost": -1}, "coupon_cost"),
                          ({"treated_share": 1.0}, "treated_share")):
        with pytest.raises(ValueError, match=match):
            CampaignPlan(**{**good, **change})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group"):
        AudienceRow("p", "C")


def test_saved_plan_holds_counts_and_the_audience_is_sealed(tmp_path: Path) -> None:
    pns = fake_pseudonyms(50)
    plan, audience = plan_campaign(
        campaign_id="xsell-1", case="cross-sell-datapack", silo="flights", candidates=pns,
        opted_out={pns[0]}, offers="datapack:JP", scores=[0.5] * 50, created="2026-01-01")
    key = os.urandom(32)
    plan_path, sealed = save_audience_plan(tmp_path, plan, audience, key)
    assert plan_path.parent == sealed.parent == tmp_path / "audiences"
    for path in (plan_path, sealed):
        data = path.read_bytes()
        assert not any(p.encode() in data for p in pns), f"a pseudonym is readable in {path.name}"
    assert json.loads(plan_path.read_text())["excluded_opted_out"] == 1
    assert load_audience_plan(tmp_path, "xsell-1", key) == (plan, audience)
    assert load_audience(tmp_path, "campaign-xsell-1", key)["rows"][0][0] == audience.rows[0].pseudonym
    with pytest.raises(TamperError):
        load_audience_plan(tmp_path, "xsell-1", os.urandom(32))
    with pytest.raises(ValueError, match="identity key"):
        save_audience_plan(tmp_path, plan, audience, None)
    other = Audience("xsell-1", audience.rows[1:])
    with pytest.raises(ValueError, match="plan counts"):
        save_audience_plan(tmp_path, plan, other, key)


# --------------------------------------------------------------------------- simulator


@pytest.fixture(scope="module")
def flyers(platform_dir: Path, silos_dir: Path, domain) -> tuple[list[str], PersonTruth]:  # type: ignore[no-untyped-def]
    """The flights silo's marketable customers and the ground-truth persons behind them."""
    with SiloStore.open(silos_dir / "flights") as store:
        rows = store.execute("SELECT customer_key, marketing_opt_out FROM customers ORDER BY 1").fetchall()
    truth = load_ground_truth(platform_dir)
    persons = audience_persons(truth, domain.keys(silos_dir / "flights"), [k for k, _ in rows])
    # The mapping is right: every person is a flights customer with the silo's opt-out flag.
    assert persons.customer["flights"].all()
    assert np.array_equal(persons.opt_out, np.array([bool(o) for _, o in rows]))
    assert len(set(persons.person_id.tolist())) == len(rows)
    keep = ~persons.opt_out
    return [k for (k, _), m in zip(rows, keep.tolist()) if m], persons.take(keep)


def test_response_probabilities_are_probabilities_and_the_coupon_helps(
        flyers: tuple[list[str], PersonTruth]) -> None:
    _, persons = flyers
    for line in KNOWN_LINES:
        for window in (1, 3, 30):
            r = response_probabilities(persons, line, window)
            assert ((r.p_control >= 0) & (r.p_treated <= 1)).all()
            assert (r.p_treated >= r.p_control).all()
            no_coupon = persons.coupon_uplift == 0
            assert np.allclose(r.uplift[no_coupon], 0.0)
            assert r.uplift.mean() > 0
    # Longer windows, more conversions.
    assert (response_probabilities(persons, "flights", 30).p_control
            >= response_probabilities(persons, "flights", 3).p_control - 1e-12).all()


def test_control_probability_of_customers_is_the_generators_propensity(platform_dir: Path) -> None:
    truth = load_ground_truth(platform_dir)
    p = truth.persons
    end_day = (truth.config.end - truth.config.start).days
    for line in KNOWN_LINES:
        r = response_probabilities(p, line, 30)
        active = p.customer[line] & (p.churn_day > end_day)
        assert np.abs(r.p_control[active] - p.propensity_30d[line][active]).max() < 1e-3
        # Non-customers can still be acquired, less readily, and more so with a coupon.
        outsiders = ~p.customer[line]
        assert outsiders.any()
        assert r.p_control[outsiders].mean() < r.p_control[active].mean()
        none = response_probabilities(p, line, 30, acquisition_share=0.0)
        assert np.all(none.p_control[outsiders] == 0) and none.p_treated[outsiders].mean() > 0


def test_mapping_refuses_an_unknown_customer(platform_dir: Path, silos_dir: Path, domain) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KeyError, match="no sealed identity"):
        audience_persons(load_ground_truth(platform_dir), domain.keys(silos_dir / "flights"),
                         ["0" * 32])


def test_outcomes_are_seeded_and_checked(flyers: tuple[list[str], PersonTruth]) -> None:
    pns, persons = flyers
    mask = ab_split(pns, "seeded")
    a = simulate_outcomes(persons, mask, "flights", 30, seed=1)
    assert np.array_equal(a.converted, simulate_outcomes(persons, mask, "flights", 30, seed=1).converted)
    assert not np.array_equal(a.converted, simulate_outcomes(persons, mask, "flights", 30, seed=2).converted)
    assert a.as_of == "2026-01-01" and a.true_lift == pytest.approx(a.true_uplift.mean())
    with pytest.raises(ValueError, match="treated_mask"):
        simulate_outcomes(persons, mask[:-1], "flights", 3, seed=0)
    with pytest.raises(ValueError, match="unknown line"):
        simulate_outcomes(persons, mask, "trains", 3, seed=0)
    with pytest.raises(ValueError, match="window_days"):
        simulate_outcomes(persons, mask, "flights", 0, seed=0)


@pytest.mark.parametrize("line", ["flights", "datapacks"])
def test_measured_lift_converges_to_the_true_lift(flyers: tuple[list[str], PersonTruth],
                                                  line: str) -> None:
    pns, persons = flyers
    lifts, control_gap = [], []
    true_lift = None
    for seed in range(300):
        out = simulate_outcomes(persons, ab_split(pns, f"sim-{seed}"), line, 14, seed=seed)
        true_lift = out.true_lift if true_lift is None else true_lift
        assert out.true_lift == true_lift  # the audience's effect does not depend on the split
        lifts.append(out.observed_lift)
        control_gap.append(out.conversion_rates()[1] - out.p_control[~out.treated].mean())
    se = np.std(lifts, ddof=1) / math.sqrt(len(lifts))
    assert true_lift is not None and true_lift > 6 * se, "the coupon should have a visible effect"
    assert abs(np.mean(lifts) - true_lift) < 4 * se
    assert abs(np.mean(control_gap)) < 4 * np.std(control_gap, ddof=1) / math.sqrt(len(control_gap))


def test_as_of_moves_the_window(flyers: tuple[list[str], PersonTruth]) -> None:
    _, persons = flyers
    # Seasonality: July (summer peak) converts more than a November window.
    july = response_probabilities(persons, "flights", 14, as_of=dt.date(2026, 7, 1)).p_control
    nov = response_probabilities(persons, "flights", 14, as_of=dt.date(2026, 11, 1)).p_control
    assert july.mean() > nov.mean()
