"""Marketing cases a silo runs on its own customers: each returns an audience and a plan.

Case 1 (cross-category acquisition) starts from the audience a private set
intersection left sealed in the flights silo (:mod:`.audiences`). Case 2
(retention tiers) and case 3 (periodic repurchase reminders) need no other
silo: they build on the silo's own profiles (:mod:`.profiles`). All go
through :func:`fedprofile.client.campaigns.plan_campaign`, so opted-out
customers are dropped and counted, and the audience is split A/B by pseudonym.
The audience (pseudonyms) stays sealed in the silo; the plan holds counts only.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from .audiences import load_audience, load_audience_scores, load_summary
from .campaigns import Audience, CampaignPlan, opted_out_pseudonyms, plan_campaign
from .profiles import DAY, Profiles, epoch_day, profile_silo
from .store import SiloStore
from .tiers import assign_tiers, load_tiers


def _silo_profiles(silo_dir: Path, as_of: str) -> tuple[str, Profiles, frozenset[str]]:
    """The silo's profiles, and who opted out of marketing (the profiles carry the flag)."""
    profiles = profile_silo(silo_dir, as_of)
    return profiles.name, profiles, frozenset(str(u) for u in profiles.users[profiles.opt_out])


def _mean(values: np.ndarray) -> float:
    known = values[np.isfinite(values)]
    return float(known.mean()) if len(known) else 0.0


def retention_campaign(silo_dir: Path, campaign_id: str, *, tiers_file: Path | None = None,
                       as_of: str = "", treated_share: float = 0.5, window_days: int = 3,
                       margin_rate: float = 0.1) -> tuple[CampaignPlan, Audience]:
    """Case 2: every buyer gets their membership tier's coupon (group A) or nothing (B).

    Tiers come from frequency and spend (:mod:`.tiers`). Each row's score is
    the customer's churn risk, so a follow-up can target the most at-risk
    first. Costs for the plan, in the silo's currency: a coupon costs its
    tier's ``coupon_value`` times the customer's average order value (averaged
    over the audience); a conversion earns ``margin_rate`` times that order value.
    """
    name, profiles, opted_out = _silo_profiles(Path(silo_dir), as_of)
    tiers = {t.name: t for t in load_tiers(tiers_file)}
    tier_of = assign_tiers(profiles, list(tiers.values()))
    members = np.flatnonzero(tier_of != "")
    offers = [f"{tier_of[i]}: {tiers[tier_of[i]].coupon}" for i in members]
    aov = profiles.avg_order_value[members]
    value = np.array([tiers[tier_of[i]].coupon_value for i in members])
    counts = {t: int((tier_of == t).sum()) for t in tiers}
    return plan_campaign(
        campaign_id=campaign_id, case="retention-tiers", silo=name,
        candidates=[str(u) for u in profiles.users[members]], opted_out=opted_out,
        offers=offers, scores=[float(c) for c in profiles.churn_risk[members]],
        treated_share=treated_share, window_days=window_days,
        created=epoch_day(profiles.as_of), coupon_cost=_mean(value * aov),
        margin_per_conversion=_mean(margin_rate * aov),
        notes=[f"tiers (customers before opt-out): "
               + ", ".join(f"{t} {n:,}" for t, n in counts.items()),
               "score = churn risk over the profiles' churn horizon"])


def repurchase_campaign(silo_dir: Path, campaign_id: str, *, as_of: str = "",
                        due_within_days: int = 14, lead_days: int = 2,
                        treated_share: float = 0.5, margin_rate: float = 0.1
                        ) -> tuple[CampaignPlan, Audience]:
    """Case 3: remind customers whose own rhythm says they buy again soon (A), not B.

    Candidates: customers with a predicted next purchase (last purchase plus
    their own median interval) within ``due_within_days`` after ``as_of``, or
    overdue by at most one interval. The reminder goes out ``lead_days``
    before the predicted date (never before ``as_of``). The window over which
    conversion is measured runs to the end of the due period.
    """
    if due_within_days < 1 or lead_days < 0:
        raise ValueError("due_within_days must be >= 1 and lead_days >= 0")
    name, profiles, opted_out = _silo_profiles(Path(silo_dir), as_of)
    now = float(profiles.as_of)
    due = profiles.predicted_next_purchase
    interval = profiles.median_interval_days * DAY
    known = np.isfinite(due) & np.isfinite(interval)
    window_end = now + due_within_days * DAY
    chosen = np.flatnonzero(known & (due <= window_end) & (due >= now - interval))
    send = np.maximum(due[chosen] - lead_days * DAY, now)
    return plan_campaign(
        campaign_id=campaign_id, case="repurchase-reminder", silo=name,
        candidates=[str(u) for u in profiles.users[chosen]], opted_out=opted_out,
        offers="repurchase reminder",
        scores=[-float(d) for d in profiles.days_until_next[chosen]],
        send_at=[epoch_day(t) for t in send], treated_share=treated_share,
        window_days=due_within_days, created=epoch_day(now), coupon_cost=0.0,
        margin_per_conversion=_mean(margin_rate * profiles.avg_order_value[chosen]),
        notes=[f"due within {due_within_days} days of {epoch_day(now)} (or overdue by at most one "
               f"interval); reminder {lead_days} days before the predicted date",
               "score = days overdue (minus the days until the predicted purchase): "
               "higher is more due, as every case's score is higher-first"])


CROSS_SELL_AUDIENCE = "cross-sell-datapack"


def cross_sell_campaign(silo_dir: Path, campaign_id: str, key: bytes, *,
                        audience: str = CROSS_SELL_AUDIENCE, as_of: str = "",
                        treated_share: float = 0.5, window_days: int = 3,
                        coupon_cost: float = 10.0, margin_per_conversion: float = 25.0,
                        use_scores: bool = True) -> tuple[CampaignPlan, Audience]:
    """Case 1: flyers abroad who buy no data pack from us get their destination's pack coupon.

    The candidates are the PSI audience sealed in this (flights) silo by
    ``fedprofile psi``: international flyers who are not data-pack customers,
    each with the destination of their latest international flight. The
    offer is that destination's pack; conversion is a data-pack order within
    ``window_days`` (3 by default, as the product's case says). Money is in
    the data-pack line's currency per redemption and per conversion.

    When ``fedprofile joint --set joint-audience=<audience>`` has scored the
    audience with the joint model (scores sealed next to it), candidates are
    ranked by that score, highest first, and carry it: the plan then supports
    targeting by score and the simulation reports Qini and uplift against
    random targeting. ``use_scores=False`` ignores them.
    """
    silo_dir = Path(silo_dir)
    payload = load_audience(silo_dir, audience, key)
    rows = [(str(k), str(d)) for k, d in payload["rows"]]  # type: ignore[union-attr]
    scores: list[float] | None = None
    ranked_by: list[str] = []
    scored = load_audience_scores(silo_dir, audience, key) if use_scores else None
    if scored is not None:
        if scored.get("audience_session") != payload.get("session"):
            raise ValueError(f"the scores of audience {audience!r} were made for PSI session "
                             f"{str(scored.get('audience_session'))[:8]}, but the audience is now "
                             f"from session {str(payload.get('session'))[:8]}: score it again "
                             f"(fedprofile joint --set joint-audience={audience})")
        by_key = {str(k): float(v) for k, v in scored["scores"]}
        missing = sum(1 for k, _ in rows if k not in by_key)
        if missing:
            raise ValueError(f"{missing} member(s) of audience {audience!r} have no joint-model "
                             "score: score the audience again")
        rows.sort(key=lambda r: (-by_key[r[0]], r[0]))
        scores = [by_key[k] for k, _ in rows]
        ranked_by = [f"ranked by {scored.get('model', 'the joint model')} (score: predicted "
                     "chance of a data-pack order; highest first)"]
    with SiloStore.open(silo_dir) as store:
        name = store.name
        opted_out = opted_out_pseudonyms(store)
        last = store.execute("SELECT MAX(order_time) FROM orders").fetchone()[0]
    created = as_of or (epoch_day(last + DAY) if last is not None else dt.date.today().isoformat())
    psi_opted_out = int(load_summary(silo_dir, audience).get("opted_out", 0))  # type: ignore[arg-type]
    return plan_campaign(
        campaign_id=campaign_id, case="cross-sell-datapack", silo=name,
        candidates=[k for k, _ in rows], opted_out=opted_out,
        offers=[f"data pack coupon: {d or 'any destination'}" for _, d in rows], scores=scores,
        treated_share=treated_share, window_days=window_days, created=created,
        coupon_cost=coupon_cost, margin_per_conversion=margin_per_conversion,
        notes=[f"candidates: the sealed PSI audience {audience!r} "
               f"(session {payload.get('session', '?')})",
               f"the PSI audience already left out {psi_opted_out:,} flyers who opted out of "
               "marketing",
               "conversion: a data-pack order within the window (measure on line 'datapacks')",
               *ranked_by])
