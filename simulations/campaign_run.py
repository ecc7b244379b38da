"""A planned campaign played out on the synthetic platform, and its A/B report.

Only a simulation can do this: it maps the silo's sealed audience back to the
generator's persons and draws each customer's conversion from the ground
truth (:mod:`.campaign_sim`). The report is what a real campaign would
produce from observed conversions (rates with Wilson intervals, the lift
with Newcombe's interval and a p-value, ROI), plus what only the simulation
knows: the true lift, and whether the measured interval covers it. For an
audience with scores, the Qini curve of targeting by score is set against
random targeting.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedprofile.client.breakdown import campaign_breakdown
from fedprofile.client.campaigns import Audience, CampaignPlan, load_audience_plan
from fedprofile.config import DEFAULT_K_MIN
from fedprofile.files import atomic_write_json, atomic_write_text
from fedprofile.models.abtest import CampaignReport
from fedprofile.models.uplift import qini_coefficient, qini_curve, uplift_at_k
from fedprofile.privacy.release import KAnonymousRelease
from fedprofile.privacy.silo_keys import SiloKeys

from .campaign_plots import plot_conversion_by_group, plot_qini
from .campaign_sim import (SimulatedOutcome, audience_persons, load_ground_truth,
                           simulate_outcomes)
from .shards import silo_line


def expected_gain_curve(score: np.ndarray, true_uplift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fraction targeted, expected incremental conversions) targeting by ``score`` first."""
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    gain = np.concatenate([[0.0], np.cumsum(np.asarray(true_uplift, dtype=np.float64)[order])])
    return np.arange(len(gain)) / max(len(order), 1), gain


def true_uplift_of_top(score: np.ndarray, true_uplift: np.ndarray, share: float) -> float:
    """Mean true uplift of the ``share`` of customers with the highest scores (ties: stable)."""
    n = max(1, int(round(share * len(score))))
    top = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")[:n]
    return float(np.mean(np.asarray(true_uplift, dtype=np.float64)[top]))


@dataclass(frozen=True)
class PlayedCampaign:
    """A planned campaign after its window, as the simulation plays it out (silo-side data)."""

    plan: CampaignPlan
    audience: Audience
    line: str
    """The line whose orders count as conversions."""
    seed: int
    outcome: SimulatedOutcome
    report: CampaignReport

    def by_offer(self, k_min: int = DEFAULT_K_MIN) -> KAnonymousRelease:
        """The report by group, offer and outcome as the silo releases it (k-anonymous)."""
        return campaign_breakdown(self.audience, self.outcome.converted, k_min)


def play_campaign(platform_dir: Path, keys: SiloKeys, campaign_id: str,
                  line: str | None = None, seed: int = 0) -> PlayedCampaign:
    """Draw every audience member's conversion from the ground truth; build the A/B report.

    ``line`` is the line whose orders count as conversions (default: the
    silo's own; case 1's data-pack coupon is measured on ``datapacks``).
    """
    if keys.identity_key is None:
        raise ValueError(f"silo {keys.silo_dir} keeps no raw identifiers: its campaign cannot "
                         "be simulated against the ground truth")
    plan, audience = load_audience_plan(keys.silo_dir, campaign_id, keys.identity_key)
    if plan.audience_size == 0:
        raise ValueError(f"campaign {campaign_id} has an empty audience")
    truth = load_ground_truth(Path(platform_dir))
    persons = audience_persons(truth, keys, audience.pseudonyms)
    line = line or silo_line(plan.silo)
    treated = audience.treated_mask()
    outcome = simulate_outcomes(persons, treated, line, plan.window_days, seed,
                                as_of=dt.date.fromisoformat(plan.created))
    conv = outcome.converted
    report = CampaignReport.from_counts(
        int(conv[treated].sum()), int(treated.sum()), int(conv[~treated].sum()),
        int((~treated).sum()), margin_per_conversion=plan.margin_per_conversion,
        coupon_cost_per_redemption=plan.coupon_cost)
    return PlayedCampaign(plan=plan, audience=audience, line=line, seed=seed, outcome=outcome,
                          report=report)


def simulate_campaign(platform_dir: Path, keys: SiloKeys, campaign_id: str,
                      out_dir: Path, line: str | None = None, seed: int = 0,
                      k_min: int = DEFAULT_K_MIN) -> dict[str, Any]:
    """Play the silo's campaign ``campaign_id`` out; write the report and plots to ``out_dir``.

    ``line`` is the line whose orders count as conversions (default: the
    silo's own; case 1's data-pack coupon is measured on ``datapacks``).
    Besides the overall A/B report, the report by offer (group x offer x
    outcome) is written as the silo would release it: groups under ``k_min``
    customers withheld (:func:`fedprofile.client.breakdown.campaign_breakdown`).
    """
    return write_campaign(play_campaign(platform_dir, keys, campaign_id, line, seed),
                          Path(out_dir), k_min)


def write_campaign(played: PlayedCampaign, out_dir: Path,
                   k_min: int = DEFAULT_K_MIN) -> dict[str, Any]:
    """Write a played campaign's report (JSON and text), its report by offer and its plots."""
    plan, audience, report, outcome = played.plan, played.audience, played.report, played.outcome
    treated, conv = outcome.treated, outcome.converted
    by_offer = played.by_offer(k_min)
    low, high = report.test.difference_ci
    result: dict[str, Any] = {
        "campaign": plan.to_dict(), "line": played.line, "seed": played.seed,
        "report": report.to_dict(),
        "by_offer": by_offer.to_dict(),
        "ground_truth": {"true_lift": outcome.true_lift,
                         "expected_lift_of_this_split": outcome.expected_observed_lift,
                         "interval_covers_true_lift": bool(low <= outcome.true_lift <= high)},
    }
    out_dir = Path(out_dir)
    plot_conversion_by_group(report, out_dir / "conversion_by_group.png")
    scores = [row.score for row in audience.rows]
    if all(s is not None for s in scores) and treated.any() and (~treated).any():
        score = np.array(scores, dtype=np.float64)
        rng = np.random.default_rng(played.seed)
        random_score = rng.random(len(score))
        curves = {"by score": qini_curve(score, treated, conv),
                  "random": qini_curve(random_score, treated, conv),
                  "by true uplift (oracle)": qini_curve(outcome.true_uplift, treated, conv)}
        result["targeting"] = {
            "qini_by_score": qini_coefficient(score, treated, conv),
            "qini_random": qini_coefficient(random_score, treated, conv),
            "uplift_at_30pct_by_score": uplift_at_k(score, treated, conv, 0.3),
            "uplift_at_30pct_random": uplift_at_k(random_score, treated, conv, 0.3),
            # What only the simulation knows: the true (expected) uplift of the customers a
            # targeting picks. Random targeting of any size expects the audience's mean.
            "true_uplift_top_30pct_by_score": true_uplift_of_top(score, outcome.true_uplift, 0.3),
            "true_uplift_random": float(np.mean(outcome.true_uplift))}
        plot_qini(curves, out_dir / "qini.png")
        # The measured curves above are step noise when a campaign converts a handful of
        # people; the expected gains from the ground truth show what the ranking is worth.
        plot_qini({"by score": expected_gain_curve(score, outcome.true_uplift),
                   "by true uplift (oracle)": expected_gain_curve(outcome.true_uplift,
                                                                  outcome.true_uplift)},
                  out_dir / "expected_gain.png",
                  ylabel="expected incremental conversions (ground truth)",
                  title="Expected gain by targeting depth (simulation only)")
    atomic_write_json(out_dir / "campaign-report.json", result)
    atomic_write_text(out_dir / "campaign-report.txt",
                      report.to_text() + "\n\n" + by_offer.to_text() + "\n")
    return result
