"""Campaign A/B arithmetic against published values, scipy, and hand computation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.stats.contingency import relative_risk

from fedprofile.models.abtest import (CampaignReport, Proportion, katz_ratio_interval,
                                      newcombe_difference_interval, pooled_z_test, roi,
                                      two_proportion_test, wilson_interval, z_quantile)

Z95 = 1.959963984540054


def test_z_quantile() -> None:
    assert z_quantile(0.95) == pytest.approx(Z95, rel=1e-12)
    assert z_quantile(0.90) == pytest.approx(1.6448536269514722, rel=1e-12)


@pytest.mark.parametrize("x, n, lower, upper", [
    # Newcombe (1998a) Stat Med 17:857-872, Table I, method 3 (score / Wilson)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe_1998a(x: int, n: int, lower: float, upper: float) -> None:
    lo, hi = wilson_interval(x, n)
    assert lo == pytest.approx(lower, abs=5e-5)
    assert hi == pytest.approx(upper, abs=5e-5)


@pytest.mark.parametrize("x, n", [(0, 1), (1, 1), (3, 17), (50, 1000), (999, 1000)])
@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_wilson_matches_scipy(x: int, n: int, confidence: float) -> None:
    ci = stats.binomtest(x, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert wilson_interval(x, n, confidence) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_hand_computed_zero_and_all() -> None:
    # x = 0: centre = half-width = (z^2/2)/(n+z^2), so upper = z^2/(n+z^2) = 3.841459/13.841459
    z2 = Z95 ** 2
    assert wilson_interval(0, 10) == (0.0, pytest.approx(z2 / (10 + z2)))
    assert wilson_interval(10, 10) == (pytest.approx(10 / (10 + z2)), 1.0)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0


@pytest.mark.parametrize("a, b, lower, upper", [
    # Newcombe (1998b) Stat Med 17:873-890, Table II, method 10 (hybrid score)
    ((56, 70), (48, 80), 0.0524, 0.3339),
    ((9, 10), (3, 10), 0.1705, 0.8090),
    ((5, 56), (0, 29), -0.0381, 0.1926),
    ((0, 10), (0, 20), -0.1611, 0.2775),
    ((0, 10), (0, 10), -0.2775, 0.2775),
    ((10, 10), (0, 20), 0.6791, 1.0000),
    ((10, 10), (0, 10), 0.6075, 1.0000),
])
def test_newcombe_difference_matches_paper(a: tuple[int, int], b: tuple[int, int],
                                           lower: float, upper: float) -> None:
    lo, hi = newcombe_difference_interval(Proportion(*a), Proportion(*b))
    assert lo == pytest.approx(lower, abs=5e-5)
    assert hi == pytest.approx(upper, abs=5e-5)


def test_worked_example_difference_and_z() -> None:
    # 56/70 = 0.8, 48/80 = 0.6 -> d = 0.2; pooled p = 104/150 = 0.693333
    # se = sqrt(0.693333 * 0.306667 * (1/70 + 1/80)) = sqrt(0.2126222 * 0.0267857) = 0.0754662
    # z = 0.2 / 0.0754662 = 2.65020; p = erfc(2.65020 / sqrt 2) = 0.0080448
    result = two_proportion_test(Proportion(56, 70), Proportion(48, 80))
    assert result.difference == pytest.approx(0.2)
    assert result.difference_ci == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert result.z == pytest.approx(2.65020, abs=1e-4)
    assert result.p_value == pytest.approx(0.0080448, rel=1e-3)


@pytest.mark.parametrize("a, b", [((56, 70), (48, 80)), ((12, 1000), (7, 1000)),
                                  ((3, 40), (9, 35)), ((500, 20000), (430, 20000)),
                                  ((1, 5), (1, 5))])
def test_z_test_equals_uncorrected_chi_squared(a: tuple[int, int], b: tuple[int, int]) -> None:
    # z^2 is Pearson's chi^2 (1 df) for a 2x2 table when no continuity correction is applied
    table = np.array([[a[0], a[1] - a[0]], [b[0], b[1] - b[0]]])
    chi2, p, dof, _ = stats.chi2_contingency(table, correction=False)
    z, p_z = pooled_z_test(Proportion(*a), Proportion(*b))
    assert dof == 1
    assert z * z == pytest.approx(chi2, rel=1e-9, abs=1e-12)
    assert p_z == pytest.approx(p, rel=1e-9)


def test_z_test_degenerate_tables() -> None:
    # nobody (or everybody) converted: 0/0 statistic, the groups are identical -> p = 1
    assert pooled_z_test(Proportion(0, 50), Proportion(0, 70)) == (0.0, 1.0)
    assert pooled_z_test(Proportion(50, 50), Proportion(70, 70)) == (0.0, 1.0)


def test_katz_ratio_hand_computed_and_scipy() -> None:
    # RR = 0.8/0.6 = 1.333333; se = sqrt(1/56 - 1/70 + 1/48 - 1/80) = sqrt(0.01190476) = 0.10910895
    # CI = exp(ln 1.333333 -+ 1.959964 * 0.10910895) = exp(0.28768207 -+ 0.21384962)
    #    = (exp(0.07383245), exp(0.50153169)) = (1.076626, 1.651249)
    lo, hi = katz_ratio_interval(Proportion(56, 70), Proportion(48, 80))
    assert (lo, hi) == pytest.approx((1.076626, 1.651249), abs=2e-6)
    for a, b in (((56, 70), (48, 80)), ((12, 1000), (7, 1000)), ((3, 40), (9, 35))):
        ref = relative_risk(a[0], a[1], b[0], b[1]).confidence_interval(0.9)
        got = katz_ratio_interval(Proportion(*a), Proportion(*b), 0.9)
        assert got == pytest.approx((ref.low, ref.high), rel=1e-10)


def test_relative_lift_is_ratio_minus_one() -> None:
    result = two_proportion_test(Proportion(56, 70), Proportion(48, 80))
    assert result.relative_lift == pytest.approx(1 / 3)
    assert result.relative_lift_ci == pytest.approx((0.076626, 0.651249), abs=2e-6)
    assert result.notes == ()


def test_zero_control_conversions_leave_relative_lift_undefined() -> None:
    result = two_proportion_test(Proportion(3, 1000), Proportion(0, 1000))
    assert result.relative_lift is None and result.relative_lift_ci is None
    assert any("control" in note for note in result.notes)
    lo, hi = result.difference_ci  # still defined, from the Wilson limits
    assert lo < 0.003 < hi and math.isfinite(lo)
    assert wilson_interval(0, 1000)[0] == 0.0


def test_zero_treated_conversions_give_lift_without_interval() -> None:
    result = two_proportion_test(Proportion(0, 1000), Proportion(4, 1000))
    assert result.relative_lift == -1.0
    assert result.relative_lift_ci is None
    assert any("treated" in note for note in result.notes)


def test_newcombe_interval_covers_at_nominal_rate() -> None:
    # Monte Carlo: 4000 campaigns of 300 vs 300 with true rates 0.10 and 0.06.
    # Newcombe (1998b) reports coverage close to nominal for method 10; binomial SE of the
    # coverage estimate is sqrt(.95 * .05 / 4000) = 0.0034, so [0.93, 0.97] is > 5 SE wide.
    rng = np.random.default_rng(2024)
    xa = rng.binomial(300, 0.10, 4000)
    xb = rng.binomial(300, 0.06, 4000)
    hits = 0
    for a, b in zip(xa, xb):
        lo, hi = newcombe_difference_interval(Proportion(int(a), 300), Proportion(int(b), 300))
        hits += lo <= 0.04 <= hi
    assert 0.93 <= hits / 4000 <= 0.97


@pytest.mark.parametrize("successes, trials, name", [
    (0, 0, "trials"), (5, 3, "successes"), (-1, 3, "successes"), (2.5, 3, "successes"),
    (True, 3, "successes"), (1, "3", "trials"),
])
def test_bad_counts_raise(successes: object, trials: object, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Proportion(successes, trials)  # type: ignore[arg-type]


def test_bad_confidence_and_arguments_raise() -> None:
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 10, confidence=1.0)
    with pytest.raises(ValueError, match="confidence"):
        two_proportion_test(Proportion(1, 10), Proportion(2, 10), confidence=0)
    with pytest.raises(ValueError, match="b must be a Proportion"):
        two_proportion_test(Proportion(1, 10), (2, 10))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trials"):
        wilson_interval(0, 0)


def test_roi_hand_computed() -> None:
    # incremental = 70 * (0.8 - 0.6) = 14 conversions; margin 14 * 30 = 420
    # coupons 56 treated converters * 5 = 280; contacts 70 * 0.5 = 35; cost 315
    # net = 420 - 315 = 105; ROI = 105 / 315 = 1/3
    r = roi(56, 70, 48, 80, margin_per_conversion=30, coupon_cost_per_redemption=5,
            cost_per_contact=0.5)
    assert r.incremental_conversions == pytest.approx(14.0)
    assert r.incremental_margin == pytest.approx(420.0)
    assert (r.coupon_cost, r.contact_cost, r.cost) == (280.0, 35.0, 315.0)
    assert r.net == pytest.approx(105.0)
    assert r.roi == pytest.approx(1 / 3)
    # the lift's interval carried through: 70 * 0.05243 = 3.670 conversions, * 30 - 315 = -204.9
    assert r.incremental_conversions_ci == pytest.approx((70 * 0.0524, 70 * 0.3339), abs=70 * 5e-5)
    assert r.net_ci[0] == pytest.approx(70 * 30 * 0.0524 - 315, abs=70 * 30 * 5e-5)


def test_roi_losing_campaign_and_free_campaign() -> None:
    # 1000 treated, 50 vs 50/1000 converted: no lift; 50 coupons * 2 = 100 -> net -100, ROI -1
    r = roi(50, 1000, 50, 1000, margin_per_conversion=20, coupon_cost_per_redemption=2)
    assert r.incremental_conversions == 0.0 and r.net == -100.0 and r.roi == -1.0
    free = roi(60, 1000, 50, 1000, margin_per_conversion=20, coupon_cost_per_redemption=0)
    assert free.roi is None and free.net == pytest.approx(200.0)


@pytest.mark.parametrize("kwargs, name", [
    ({"margin_per_conversion": -1.0}, "margin_per_conversion"),
    ({"coupon_cost_per_redemption": float("nan")}, "coupon_cost_per_redemption"),
    ({"cost_per_contact": -0.1}, "cost_per_contact"),
    ({"treated": 0}, "trials"),
    ({"conversions_control": 81}, "successes"),
])
def test_roi_bad_input_raises(kwargs: dict[str, float], name: str) -> None:
    args = {"conversions_treated": 56, "treated": 70, "conversions_control": 48, "control": 80,
            "margin_per_conversion": 30.0, "coupon_cost_per_redemption": 5.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        roi(**args)  # type: ignore[arg-type]


def test_report_dict_and_text() -> None:
    report = CampaignReport.from_counts(56, 70, 48, 80, margin_per_conversion=30,
                                        coupon_cost_per_redemption=5, cost_per_contact=0.5)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["treated"] == {"n": 70, "conversions": 56, "rate": 0.8,
                            "rate_ci": pytest.approx(list(wilson_interval(56, 70)))}
    assert d["control"]["rate"] == 0.6
    assert d["absolute_lift_ci"] == pytest.approx([0.0524, 0.3339], abs=5e-5)
    assert d["relative_lift"] == pytest.approx(1 / 3)
    assert d["p_value"] == pytest.approx(0.0080448, rel=1e-3)
    assert d["roi"]["net"] == pytest.approx(105.0) and d["roi"]["roi"] == pytest.approx(1 / 3)
    text = report.to_text()
    for piece in ("56 of 70 converted = 80.0%", "48 of 80 converted = 60.0%",
                  "+20.0 percentage points (+5.2 to +33.4)", "relative lift: +33.3% (+7.7% to +65.1%)",
                  "0.008045", "significant at the 5% level", "net: 105.00", "ROI (net / cost): +33.3%"):
        assert piece in text, piece
    assert "not significant" not in text


def test_report_without_money_and_with_undefined_lift() -> None:
    report = CampaignReport.from_counts(3, 1000, 0, 1000)
    assert report.roi is None and report.to_dict()["roi"] is None
    assert report.to_dict()["relative_lift"] is None
    text = report.to_text()
    assert "relative lift: n/a" in text and "ROI" not in text
    assert "not significant" in text and "note: relative lift undefined" in text


def test_conversion_plot_is_written(tmp_path: Path) -> None:
    from fedprofile.simulations.campaign_plots import plot_conversion_by_group

    report = CampaignReport.from_counts(56, 70, 0, 80)
    out = plot_conversion_by_group(report, tmp_path / "plots" / "conversion.png")
    assert out == tmp_path / "plots" / "conversion.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert [p.name for p in out.parent.iterdir()] == ["conversion.png"]  # no temp file left
    svg = plot_conversion_by_group(report, tmp_path / "conversion.svg")
    assert b"<svg" in svg.read_bytes()[:1000]
    with pytest.raises(ValueError, match="report"):
        plot_conversion_by_group(report.to_dict(), tmp_path / "x.png")  # type: ignore[arg-type]
