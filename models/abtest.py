"""Did the campaign work, and did it pay? Treated-vs-control arithmetic for marketers.

A campaign splits its audience at random into a treated group (A, contacted)
and a control group (B, held out) and counts conversions in each over a
window. Everything a marketer asks of that 2x2 table is here, as pure
functions of the four counts:

* each group's conversion rate with a *Wilson score* interval (Wilson 1927,
  JASA 22:209-212). Wilson rather than the textbook Wald interval because
  campaign conversion rates are small and the Wald interval then collapses to
  zero width at 0 conversions and undercovers badly near 0 (Newcombe 1998a,
  "Two-sided confidence intervals for the single proportion", Stat Med
  17:857-872, which found the score interval among the best of seven);
* the absolute lift (rate A - rate B) with Newcombe's *hybrid score* interval
  (method 10 of Newcombe 1998b, "Interval estimation for the difference
  between independent proportions: comparison of eleven methods", Stat Med
  17:873-890), which is built from the two Wilson intervals, so it stays
  defined and inside [-1, 1] when a group has no conversions;
* the two-sided p-value of the pooled two-proportion z-test. A z-test rather
  than Pearson's chi-squared only because it is simpler to explain: for a 2x2
  table without continuity correction ``z**2`` *is* the chi-squared statistic
  with one degree of freedom, so the p-values are identical;
* the relative lift (rate A / rate B - 1) with the log-ratio interval for the
  risk ratio (Katz, Baptista, Azen & Pike 1978, "Obtaining confidence
  intervals for the risk ratio in cohort studies", Biometrics 34:469-474),
  the interval ``scipy.stats.contingency.relative_risk`` also uses;
* a return-on-investment block, see :func:`roi`.

No dependency beyond the standard library: the normal quantiles come from
:class:`statistics.NormalDist` and the p-value from :func:`math.erfc`, which
stays accurate for the tiny p-values of large campaigns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from statistics import NormalDist
from typing import Any

Interval = tuple[float, float]


def _count(value: Any, name: str) -> int:
    """``value`` as a non-negative int; bools and fractional numbers are mistakes, not counts."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number of customers, got {value!r}")
    if not isinstance(value, Integral):
        if isinstance(value, Real) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be a whole number of customers, got {value!r}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _confidence(confidence: Any) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, Real) \
            or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be a number strictly between 0 and 1, got {confidence!r}")
    return float(confidence)


def _money(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)) \
            or float(value) < 0.0:
        raise ValueError(f"{name} must be a finite amount >= 0, got {value!r}")
    return float(value)


def z_quantile(confidence: float) -> float:
    """The two-sided standard normal critical value, e.g. 1.959964 for 0.95."""
    return NormalDist().inv_cdf(0.5 + _confidence(confidence) / 2.0)


@dataclass(frozen=True)
class Proportion:
    """``successes`` conversions out of ``trials`` customers in one group."""

    successes: int
    trials: int

    def __post_init__(self) -> None:
        successes = _count(self.successes, "successes")
        trials = _count(self.trials, "trials")
        if trials == 0:
            raise ValueError("trials must be > 0: a group with no customers has no conversion rate")
        if successes > trials:
            raise ValueError(f"successes ({successes}) must not exceed trials ({trials})")
        object.__setattr__(self, "successes", successes)
        object.__setattr__(self, "trials", trials)

    @property
    def rate(self) -> float:
        """The observed conversion rate, successes / trials."""
        return self.successes / self.trials

    def wilson(self, confidence: float = 0.95) -> Interval:
        """This group's Wilson score interval, see :func:`wilson_interval`."""
        return wilson_interval(self.successes, self.trials, confidence)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """Wilson (1927) score interval for a binomial proportion.

    The set of ``p`` not rejected by the score test ``|x/n - p| <= z
    sqrt(p(1-p)/n)``; solving the quadratic gives centre ``(x + z^2/2) / (n +
    z^2)`` and half-width ``z sqrt(x(n-x)/n + z^2/4) / (n + z^2)``. It is
    defined for 0 and for n conversions (bounds then exactly 0 and 1), which a
    small campaign easily hits.
    """
    p = Proportion(successes, trials)
    x, n = p.successes, p.trials
    z = z_quantile(confidence)
    z2 = z * z
    centre = (x + z2 / 2.0) / (n + z2)
    half = z * math.sqrt(x * (n - x) / n + z2 / 4.0) / (n + z2)
    lower = 0.0 if x == 0 else max(0.0, centre - half)
    upper = 1.0 if x == n else min(1.0, centre + half)
    return (lower, upper)


def newcombe_difference_interval(a: Proportion, b: Proportion,
                                 confidence: float = 0.95) -> Interval:
    """Newcombe (1998b) hybrid score interval (method 10) for ``a.rate - b.rate``.

    With Wilson limits ``(l1, u1)`` for A and ``(l2, u2)`` for B and
    ``d = p1 - p2``: ``[d - sqrt((p1-l1)^2 + (u2-p2)^2), d + sqrt((u1-p1)^2 +
    (p2-l2)^2)]``. Each side combines the two groups' distances to the Wilson
    bound that pushes the difference that way.
    """
    l1, u1 = a.wilson(confidence)
    l2, u2 = b.wilson(confidence)
    p1, p2 = a.rate, b.rate
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def pooled_z_test(a: Proportion, b: Proportion) -> tuple[float, float]:
    """``(z, two-sided p)`` of the pooled two-proportion z-test of ``rate A == rate B``.

    ``z = (p1 - p2) / sqrt(p (1 - p) (1/n1 + 1/n2))`` with the pooled rate
    ``p = (x1 + x2) / (n1 + n2)``; ``z**2`` equals Pearson's chi-squared of the
    2x2 table without continuity correction. When nobody or everybody
    converted the groups are identical and the statistic is 0/0: reported as
    ``z = 0, p = 1`` (no evidence of a difference).
    """
    n1, n2 = a.trials, b.trials
    pooled = (a.successes + b.successes) / (n1 + n2)
    variance = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
    if variance <= 0.0:
        return 0.0, 1.0
    z = (a.rate - b.rate) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2.0))


def katz_ratio_interval(a: Proportion, b: Proportion,
                        confidence: float = 0.95) -> Interval | None:
    """Katz et al. (1978) log interval for the risk ratio ``a.rate / b.rate``.

    ``exp(log RR +- z sqrt(1/x1 - 1/n1 + 1/x2 - 1/n2))``. ``None`` when
    either group has no conversions: the log of a zero rate is undefined.
    """
    if a.successes == 0 or b.successes == 0:
        return None
    z = z_quantile(confidence)
    log_rr = math.log(a.rate / b.rate)
    se = math.sqrt(1.0 / a.successes - 1.0 / a.trials + 1.0 / b.successes - 1.0 / b.trials)
    return (math.exp(log_rr - z * se), math.exp(log_rr + z * se))


@dataclass(frozen=True)
class TestResult:
    """Treated (A) against control (B).

    ``difference`` is the absolute lift ``rate A - rate B`` (a fraction, not
    percentage points); ``relative_lift`` is ``rate A / rate B - 1`` and is
    ``None`` when the control converted nobody. ``notes`` say why something is
    missing.
    """

    __test__ = False  # a result record, not a pytest test class

    difference: float
    difference_ci: Interval
    z: float
    p_value: float
    relative_lift: float | None
    relative_lift_ci: Interval | None
    confidence: float
    notes: tuple[str, ...] = field(default_factory=tuple)


def two_proportion_test(a: Proportion, b: Proportion, confidence: float = 0.95) -> TestResult:
    """Absolute and relative lift of A over B with intervals, and the pooled z-test p-value."""
    if not isinstance(a, Proportion):
        raise ValueError(f"a must be a Proportion, got {type(a).__name__}")
    if not isinstance(b, Proportion):
        raise ValueError(f"b must be a Proportion, got {type(b).__name__}")
    confidence = _confidence(confidence)
    z, p_value = pooled_z_test(a, b)
    notes: list[str] = []
    relative: float | None
    relative_ci: Interval | None
    if b.successes == 0:
        relative, relative_ci = None, None
        notes.append("relative lift undefined: the control group has no conversions")
    else:
        relative = a.rate / b.rate - 1.0
        ratio_ci = katz_ratio_interval(a, b, confidence)
        if ratio_ci is None:
            relative_ci = None
            notes.append("relative lift interval undefined: the treated group has no conversions")
        else:
            relative_ci = (ratio_ci[0] - 1.0, ratio_ci[1] - 1.0)
    return TestResult(difference=a.rate - b.rate,
                      difference_ci=newcombe_difference_interval(a, b, confidence),
                      z=z, p_value=p_value, relative_lift=relative,
                      relative_lift_ci=relative_ci, confidence=confidence, notes=tuple(notes))


@dataclass(frozen=True)
class RoiResult:
    """Money of a campaign, see :func:`roi` for the assumptions.

    ``*_ci`` carry the uncertainty of the lift through: they are the
    incremental conversions / net value at the ends of the lift's Newcombe
    interval. ``roi`` is ``None`` when the campaign cost nothing.
    """

    incremental_conversions: float
    incremental_conversions_ci: Interval
    incremental_margin: float
    coupon_cost: float
    contact_cost: float
    cost: float
    net: float
    net_ci: Interval
    roi: float | None


def roi(conversions_treated: int, treated: int, conversions_control: int, control: int,
        margin_per_conversion: float, coupon_cost_per_redemption: float,
        cost_per_contact: float = 0.0, *, confidence: float = 0.95) -> RoiResult:
    """Incremental profit of a coupon campaign over doing nothing.

    Assumptions (say them to whoever reads the number):

    * the groups were split at random, so the control's rate is what the
      treated group would have converted at without the campaign;
    * incremental conversions are the lift scaled to the treated group:
      ``treated * (rate A - rate B)``; it is fractional and may be negative;
    * every conversion earns the same ``margin_per_conversion`` (before the
      coupon), whether the campaign caused it or not;
    * every treated converter redeems one coupon, *including* those who would
      have converted anyway (that is the campaign's cannibalisation cost);
      the control got no coupon and costs nothing;
    * each treated customer costs ``cost_per_contact`` to reach (message,
      print, channel fee), converted or not;
    * ``net = incremental margin - (coupon cost + contact cost)`` and
      ``ROI = net / cost``; ROI is ``None`` when the cost is zero.
    """
    a = Proportion(_count(conversions_treated, "conversions_treated"), _count(treated, "treated"))
    b = Proportion(_count(conversions_control, "conversions_control"), _count(control, "control"))
    margin = _money(margin_per_conversion, "margin_per_conversion")
    coupon = _money(coupon_cost_per_redemption, "coupon_cost_per_redemption")
    contact = _money(cost_per_contact, "cost_per_contact")
    diff_lo, diff_hi = newcombe_difference_interval(a, b, _confidence(confidence))
    incremental = a.trials * (a.rate - b.rate)
    coupon_cost = coupon * a.successes
    contact_cost = contact * a.trials
    cost = coupon_cost + contact_cost
    net = incremental * margin - cost
    return RoiResult(incremental_conversions=incremental,
                     incremental_conversions_ci=(a.trials * diff_lo, a.trials * diff_hi),
                     incremental_margin=incremental * margin,
                     coupon_cost=coupon_cost, contact_cost=contact_cost, cost=cost, net=net,
                     net_ci=(a.trials * diff_lo * margin - cost, a.trials * diff_hi * margin - cost),
                     roi=net / cost if cost > 0.0 else None)


@dataclass(frozen=True)
class GroupSummary:
    """One arm of the campaign: size, conversions, rate and its Wilson interval."""

    n: int
    conversions: int
    rate: float
    rate_ci: Interval


def _pct(x: float, signed: bool = False) -> str:
    return f"{100.0 * x:+.1f}%" if signed else f"{100.0 * x:.1f}%"


def _money_text(x: float) -> str:
    return f"-{abs(x):,.2f}" if x < 0 else f"{x:,.2f}"


@dataclass(frozen=True)
class CampaignReport:
    """Everything a marketer reads about one treated-vs-control campaign.

    Build it with :meth:`from_counts`; ``roi`` is present when a margin per
    conversion was given.
    """

    treated: GroupSummary
    control: GroupSummary
    test: TestResult
    roi: RoiResult | None = None

    @classmethod
    def from_counts(cls, conversions_treated: int, treated: int, conversions_control: int,
                    control: int, *, confidence: float = 0.95,
                    margin_per_conversion: float | None = None,
                    coupon_cost_per_redemption: float = 0.0,
                    cost_per_contact: float = 0.0) -> CampaignReport:
        """The report of a campaign from its four counts (and money, if the ROI is wanted)."""
        a = Proportion(_count(conversions_treated, "conversions_treated"), _count(treated, "treated"))
        b = Proportion(_count(conversions_control, "conversions_control"), _count(control, "control"))
        test = two_proportion_test(a, b, confidence)
        money = None
        if margin_per_conversion is not None:
            money = roi(a.successes, a.trials, b.successes, b.trials, margin_per_conversion,
                        coupon_cost_per_redemption, cost_per_contact, confidence=confidence)
        return cls(treated=GroupSummary(a.trials, a.successes, a.rate, a.wilson(confidence)),
                   control=GroupSummary(b.trials, b.successes, b.rate, b.wilson(confidence)),
                   test=test, roi=money)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (intervals as two-item lists, missing values as None)."""
        def interval(ci: Interval | None) -> list[float] | None:
            return None if ci is None else [ci[0], ci[1]]

        def group(g: GroupSummary) -> dict[str, Any]:
            return {"n": g.n, "conversions": g.conversions, "rate": g.rate,
                    "rate_ci": interval(g.rate_ci)}

        t = self.test
        out: dict[str, Any] = {
            "confidence": t.confidence,
            "treated": group(self.treated),
            "control": group(self.control),
            "absolute_lift": t.difference,
            "absolute_lift_ci": interval(t.difference_ci),
            "relative_lift": t.relative_lift,
            "relative_lift_ci": interval(t.relative_lift_ci),
            "z": t.z,
            "p_value": t.p_value,
            "notes": list(t.notes),
            "roi": None,
        }
        if self.roi is not None:
            r = self.roi
            out["roi"] = {"incremental_conversions": r.incremental_conversions,
                          "incremental_conversions_ci": interval(r.incremental_conversions_ci),
                          "incremental_margin": r.incremental_margin,
                          "coupon_cost": r.coupon_cost, "contact_cost": r.contact_cost,
                          "cost": r.cost, "net": r.net, "net_ci": interval(r.net_ci),
                          "roi": r.roi}
        return out

    def to_text(self) -> str:
        """The report in words and percentages, the way a campaign manager reads it."""
        t = self.test
        level = f"{100.0 * t.confidence:g}%"
        alpha = 1.0 - t.confidence
        lines = [f"Campaign evaluation ({level} confidence intervals)"]
        for name, g in (("treated", self.treated), ("control", self.control)):
            lines.append(f"  {name}: {g.conversions:,} of {g.n:,} converted = {_pct(g.rate)} "
                         f"({_pct(g.rate_ci[0])} to {_pct(g.rate_ci[1])})")
        lo, hi = t.difference_ci
        lines.append(f"  absolute lift: {100.0 * t.difference:+.1f} percentage points "
                     f"({100.0 * lo:+.1f} to {100.0 * hi:+.1f})")
        if t.relative_lift is None:
            lines.append("  relative lift: n/a")
        elif t.relative_lift_ci is None:
            lines.append(f"  relative lift: {_pct(t.relative_lift, signed=True)} (interval n/a)")
        else:
            rlo, rhi = t.relative_lift_ci
            lines.append(f"  relative lift: {_pct(t.relative_lift, signed=True)} "
                         f"({_pct(rlo, signed=True)} to {_pct(rhi, signed=True)})")
        verdict = f"significant at the {100.0 * alpha:g}% level"
        if t.p_value >= alpha:
            verdict = f"not {verdict} (the lift could be chance)"
        lines.append(f"  p-value (two-sided, pooled z-test): {t.p_value:.4g} -> {verdict}")
        if self.roi is not None:
            r = self.roi
            clo, chi = r.incremental_conversions_ci
            nlo, nhi = r.net_ci
            lines.append(f"  incremental conversions: {r.incremental_conversions:+,.1f} "
                         f"({clo:+,.1f} to {chi:+,.1f})")
            lines.append(f"  incremental margin: {_money_text(r.incremental_margin)}; cost: "
                         f"{_money_text(r.cost)} (coupons {_money_text(r.coupon_cost)}, "
                         f"contacts {_money_text(r.contact_cost)})")
            lines.append(f"  net: {_money_text(r.net)} ({_money_text(nlo)} to {_money_text(nhi)})")
            lines.append("  ROI (net / cost): " + ("n/a (no cost)" if r.roi is None
                                                   else _pct(r.roi, signed=True)))
        for note in t.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines) + "\n"
