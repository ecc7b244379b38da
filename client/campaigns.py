"""Campaign plans inside a silo: who is targeted, who is held out, what it may cost.

Why this exists
---------------
A coupon campaign only tells us something if part of its audience is held out:
the difference in conversion between the treated group (A) and the control
group (B) is the campaign's lift, and lift, not conversion, is what pays for
the coupons. This module makes that split and writes the plan down, inside the
silo that owns the customers:

* :func:`ab_split` assigns each customer to A or B from a hash of the campaign
  id and the customer's pseudonym, so the assignment is reproducible without
  storing it, independent between campaigns (a customer held out once is not
  held out forever), and blind to row order (sorting the audience by score
  cannot leak into who is treated);
* :func:`drop_opted_out` removes customers who objected to marketing (PIPL
  Art. 24) before anything is targeted, and counts them so the plan shows it;
* :func:`plan_campaign` is the one builder every marketing case goes through:
  opt-outs dropped, split made, offers counted;
* :func:`save_audience_plan` writes the plan (counts only, safe to show an
  operator) next to the per-customer audience, which is personal data and is
  sealed with the silo's identity key in the same format, and under the same
  ``audiences/`` folder, as the PSI audience of :mod:`.audiences` (so
  :func:`.audiences.load_audience` opens it too).

Nothing here leaves the silo; the server never sees an audience.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedprofile.files import atomic_write_json

from .audiences import AUDIENCE_DIR, load_audience, seal_audience
from .store import SiloStore

__all__ = [
    "AUDIENCE_COLUMNS",
    "Audience",
    "AudienceRow",
    "CampaignPlan",
    "OptOutFilter",
    "ab_split",
    "audience_name",
    "drop_opted_out",
    "load_audience_plan",
    "opted_out_pseudonyms",
    "plan_campaign",
    "save_audience_plan",
]

TREATED, CONTROL = "A", "B"
AUDIENCE_COLUMNS: tuple[str, ...] = ("pseudonym", "group", "offer", "score", "send_at")
_CAMPAIGN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SPLIT_LABEL = b"fedprofile/ab-split/v1\0"


def _check_campaign_id(campaign_id: object) -> str:
    """Campaign ids name files in the silo and seed the split: keep them plain."""
    if not isinstance(campaign_id, str) or not _CAMPAIGN_ID.fullmatch(campaign_id):
        raise ValueError(f"campaign_id must be 1-100 characters of letters, digits, '.', '_' or "
                         f"'-' starting with a letter or digit, got {campaign_id!r}")
    return campaign_id


def _check_share(treated_share: object) -> float:
    if (isinstance(treated_share, bool) or not isinstance(treated_share, (int, float))
            or not math.isfinite(treated_share) or not 0.0 < treated_share < 1.0):
        raise ValueError(f"treated_share must be a number strictly between 0 and 1 "
                         f"(both groups need customers), got {treated_share!r}")
    return float(treated_share)


# --------------------------------------------------------------------------- A/B split


def ab_split(pseudonyms: Sequence[str], campaign_id: str, treated_share: float = 0.5) -> np.ndarray:
    """True where a customer is treated (group A), False where held out (group B).

    Each customer's position ``u`` in [0, 1) is the first 53 bits of
    SHA-256(label, campaign id, NUL, pseudonym); the customer is treated when
    ``u < treated_share``. Hence the split is

    * deterministic: the same campaign gives the same groups on every run and
      every machine, so it need not be stored to be audited;
    * per customer: a customer's group depends on nothing but their own
      pseudonym, so the order (or the rest) of the audience carries nothing;
    * independent across campaigns: another campaign id is another hash.

    The campaign id cannot contain NUL, so (campaign id, pseudonym) pairs never
    collide as byte strings.
    """
    _check_campaign_id(campaign_id)
    share = _check_share(treated_share)
    if isinstance(pseudonyms, (str, bytes)):
        raise TypeError("pseudonyms must be a sequence of strings, not a single string")
    prefix = _SPLIT_LABEL + campaign_id.encode() + b"\0"
    out = np.empty(len(pseudonyms), dtype=bool)
    for i, pseudonym in enumerate(pseudonyms):
        if not isinstance(pseudonym, str) or not pseudonym:
            raise ValueError(f"pseudonym #{i} must be a non-empty string")
        digest = hashlib.sha256(prefix + pseudonym.encode()).digest()
        out[i] = (int.from_bytes(digest[:8], "big") >> 11) / 2.0**53 < share
    return out


# --------------------------------------------------------------------------- opt-out


@dataclass(frozen=True)
class OptOutFilter:
    """The result of dropping opted-out customers from a candidate list.

    ``keep`` is a mask over the candidates, to filter any parallel column
    (scores, offers) the same way; ``excluded`` is how many were dropped.
    """

    kept: list[str]
    keep: np.ndarray
    excluded: int

    def apply(self, values: Sequence[Any]) -> list[Any]:
        """``values`` (one per candidate) restricted to the kept candidates."""
        if len(values) != len(self.keep):
            raise ValueError(f"got {len(values)} values for {len(self.keep)} candidates")
        return [v for v, k in zip(values, self.keep.tolist()) if k]


def opted_out_pseudonyms(store: SiloStore) -> frozenset[str]:
    """Customer keys of the silo's customers who objected to marketing (PIPL Art. 24)."""
    return frozenset(k for (k,) in store.execute(
        "SELECT customer_key FROM customers WHERE marketing_opt_out = 1"))


def drop_opted_out(pseudonyms: Sequence[str], opted_out: Collection[str]) -> OptOutFilter:
    """Candidates minus those who opted out of marketing, and how many that was.

    A model-targeted audience may not include anyone who objected to
    marketing (PIPL Art. 24), whatever their score; counting them keeps the
    plan honest about the audience it could not reach.
    """
    if isinstance(pseudonyms, (str, bytes)):
        raise TypeError("pseudonyms must be a sequence of strings, not a single string")
    blocked = opted_out if isinstance(opted_out, (set, frozenset, dict)) else set(opted_out)
    keep = np.array([p not in blocked for p in pseudonyms], dtype=bool)
    kept = [p for p, k in zip(pseudonyms, keep.tolist()) if k]
    return OptOutFilter(kept=kept, keep=keep, excluded=int((~keep).sum()))


# --------------------------------------------------------------------------- plan and audience


@dataclass(frozen=True)
class AudienceRow:
    """One customer of a campaign; stays in the silo (sealed at rest).

    On a control (B) row ``offer`` is the offer the customer *would* have got:
    holding it lets lift be measured per offer (per tier, per pack kind).
    """

    pseudonym: str
    group: str
    offer: str | None = None
    score: float | None = None
    send_at: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pseudonym, str) or not self.pseudonym:
            raise ValueError("an audience row needs a non-empty pseudonym")
        if self.group not in (TREATED, CONTROL):
            raise ValueError(f"group must be {TREATED!r} (treated) or {CONTROL!r} (control), "
                             f"got {self.group!r}")
        if self.score is not None and (isinstance(self.score, bool)
                                       or not isinstance(self.score, (int, float))
                                       or not math.isfinite(self.score)):
            raise ValueError(f"score must be a finite number or None, got {self.score!r}")
        if self.send_at is not None:
            _parse_datetime("send_at", self.send_at)

    def to_list(self) -> list[Any]:
        return [self.pseudonym, self.group, self.offer,
                None if self.score is None else float(self.score), self.send_at]


@dataclass(frozen=True)
class Audience:
    """A campaign's customers with their group and offer: personal data, silo-only."""

    campaign_id: str
    rows: tuple[AudienceRow, ...]

    def __post_init__(self) -> None:
        _check_campaign_id(self.campaign_id)
        object.__setattr__(self, "rows", tuple(self.rows))
        seen: set[str] = set()
        for row in self.rows:
            if not isinstance(row, AudienceRow):
                raise TypeError(f"audience rows must be AudienceRow, got {type(row).__name__}")
            if row.pseudonym in seen:
                raise ValueError("a customer appears twice in the audience (would be contacted twice)")
            seen.add(row.pseudonym)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def pseudonyms(self) -> list[str]:
        return [r.pseudonym for r in self.rows]

    def treated_mask(self) -> np.ndarray:
        """True for group A rows, in row order."""
        return np.array([r.group == TREATED for r in self.rows], dtype=bool)

    def to_payload(self) -> dict[str, Any]:
        return {"campaign_id": self.campaign_id, "columns": list(AUDIENCE_COLUMNS),
                "rows": [r.to_list() for r in self.rows]}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Audience:
        if list(payload.get("columns", [])) != list(AUDIENCE_COLUMNS):
            raise ValueError(f"not a campaign audience: columns {payload.get('columns')!r}")
        return cls(campaign_id=payload["campaign_id"],
                   rows=tuple(AudienceRow(*row) for row in payload["rows"]))


@dataclass(frozen=True)
class CampaignPlan:
    """What a campaign does, in counts only: safe to show an operator or log.

    ``offers`` counts the offers the *treated* group gets. ``send_at`` is the
    one send time of the campaign, or None when sends are timed per customer,
    in which case ``send_schedule`` counts treated sends per day.
    ``coupon_cost`` is the cost of one redeemed coupon and
    ``margin_per_conversion`` the margin of one conversion before coupon, so
    a campaign pays when lift * treated * margin exceeds the coupons redeemed.
    """

    campaign_id: str
    case: str
    silo: str
    created: str
    treated_share: float
    audience_size: int
    treated: int
    control: int
    excluded_opted_out: int
    window_days: int = 3
    offers: dict[str, int] = field(default_factory=dict)
    send_at: str | None = None
    send_schedule: dict[str, int] = field(default_factory=dict)
    coupon_cost: float = 0.0
    margin_per_conversion: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_campaign_id(self.campaign_id)
        for name in ("case", "silo"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string")
        try:
            dt.date.fromisoformat(self.created)
        except (TypeError, ValueError):
            raise ValueError(f"created must be an ISO date (YYYY-MM-DD), got {self.created!r}") from None
        _check_share(self.treated_share)
        for name in ("audience_size", "treated", "control", "excluded_opted_out"):
            _check_count(name, getattr(self, name))
        if self.treated + self.control != self.audience_size:
            raise ValueError(f"treated ({self.treated}) + control ({self.control}) must equal "
                             f"audience_size ({self.audience_size})")
        if isinstance(self.window_days, bool) or not isinstance(self.window_days, int) \
                or self.window_days < 1:
            raise ValueError(f"window_days must be a positive int, got {self.window_days!r}")
        for name in ("offers", "send_schedule"):
            counts = getattr(self, name)
            for key, n in counts.items():
                _check_count(f"{name}[{key!r}]", n)
            if sum(counts.values()) > self.treated:
                raise ValueError(f"{name} counts {sum(counts.values())} sends for only "
                                 f"{self.treated} treated customers")
        if self.send_at is not None:
            _parse_datetime("send_at", self.send_at)
        for name in ("coupon_cost", "margin_per_conversion"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, shares and money only; no customer appears in it."""
        return {"campaign_id": self.campaign_id, "case": self.case, "silo": self.silo,
                "created": self.created, "window_days": self.window_days,
                "treated_share": self.treated_share, "audience_size": self.audience_size,
                "treated": self.treated, "control": self.control,
                "excluded_opted_out": self.excluded_opted_out, "offers": dict(self.offers),
                "send_at": self.send_at, "send_schedule": dict(self.send_schedule),
                "coupon_cost": self.coupon_cost,
                "margin_per_conversion": self.margin_per_conversion, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CampaignPlan:
        return cls(**data)


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _parse_datetime(name: str, value: object) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an ISO date or date-time, got {value!r}") from None


def _per_customer(name: str, value: Any, n: int) -> list[Any]:
    """A per-customer column from one value for everybody or one value per customer."""
    if value is None or isinstance(value, str):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} values for {n} candidates")
    return values


def plan_campaign(
    *,
    campaign_id: str,
    case: str,
    silo: str,
    candidates: Sequence[str],
    opted_out: Collection[str],
    offers: str | Sequence[str | None] | None,
    scores: Sequence[float] | None = None,
    send_at: str | Sequence[str | None] | None = None,
    treated_share: float = 0.5,
    window_days: int = 3,
    created: str | None = None,
    coupon_cost: float = 0.0,
    margin_per_conversion: float = 0.0,
    notes: Iterable[str] = (),
) -> tuple[CampaignPlan, Audience]:
    """The plan and audience of a campaign over model- or rule-selected candidates.

    Every marketing case builds its audience here so that the same rules hold
    everywhere: opted-out customers are dropped (and counted) before the
    split, the split is :func:`ab_split`, and control customers keep the offer
    they would have received. ``offers``, ``scores`` and ``send_at`` are one
    value for everybody or one per candidate (aligned with ``candidates``).
    A candidate listed twice is refused: they would be contacted twice.
    """
    if isinstance(candidates, (str, bytes)):
        raise TypeError("candidates must be a sequence of pseudonyms, not a single string")
    n = len(candidates)
    offer_col = _per_customer("offers", offers, n)
    score_col = _per_customer("scores", scores, n)
    send_col = _per_customer("send_at", send_at, n)
    filtered = drop_opted_out(candidates, opted_out)
    offer_col, score_col, send_col = (filtered.apply(c) for c in (offer_col, score_col, send_col))
    treated = ab_split(filtered.kept, campaign_id, treated_share)
    rows = tuple(
        AudienceRow(pseudonym=p, group=TREATED if t else CONTROL, offer=o,
                    score=None if s is None else float(s), send_at=w)
        for p, t, o, s, w in zip(filtered.kept, treated.tolist(), offer_col, score_col, send_col))
    audience = Audience(campaign_id=campaign_id, rows=rows)
    offer_counts: dict[str, int] = {}
    schedule: dict[str, int] = {}
    for row in rows:
        if row.group != TREATED:
            continue
        if row.offer is not None:
            offer_counts[row.offer] = offer_counts.get(row.offer, 0) + 1
        if row.send_at is not None:
            day = _parse_datetime("send_at", row.send_at).date().isoformat()
            schedule[day] = schedule.get(day, 0) + 1
    single_send = send_at if isinstance(send_at, str) else None
    plan = CampaignPlan(
        campaign_id=campaign_id, case=case, silo=silo,
        created=created or dt.date.today().isoformat(), treated_share=float(treated_share),
        audience_size=len(rows), treated=int(treated.sum()), control=int((~treated).sum()),
        excluded_opted_out=filtered.excluded, window_days=window_days,
        offers=dict(sorted(offer_counts.items())), send_at=single_send,
        send_schedule={} if single_send else dict(sorted(schedule.items())),
        coupon_cost=float(coupon_cost), margin_per_conversion=float(margin_per_conversion),
        notes=list(notes))
    return plan, audience


# --------------------------------------------------------------------------- files


def audience_name(campaign_id: str) -> str:
    """File stem of a campaign's audience under ``audiences/`` (apart from PSI audiences)."""
    return f"campaign-{_check_campaign_id(campaign_id)}"


def save_audience_plan(silo_dir: Path, plan: CampaignPlan, audience: Audience,
                       key: bytes | None) -> tuple[Path, Path]:
    """Write the plan (counts, in clear) and the audience (sealed) into the silo.

    ``key`` is the silo's identity key (:func:`fedprofile.privacy.silo_keys.
    read_identity_key`); the audience is sealed as :mod:`.audiences` seals the
    PSI audience (AES-GCM, bound to ``audience:<name>``), so it can be opened
    with :func:`.audiences.load_audience`. Returns (plan path, audience path).
    """
    if audience.campaign_id != plan.campaign_id:
        raise ValueError(f"audience of campaign {audience.campaign_id!r} does not belong to "
                         f"plan {plan.campaign_id!r}")
    treated = int(audience.treated_mask().sum())
    if (len(audience), treated) != (plan.audience_size, plan.treated):
        raise ValueError(f"the plan counts {plan.audience_size} customers ({plan.treated} treated) "
                         f"but the audience has {len(audience)} ({treated} treated)")
    if key is None:
        raise ValueError("an audience list is personal data: the silo's identity key is needed "
                         "to seal it")
    name = audience_name(plan.campaign_id)
    sealed = seal_audience(silo_dir, name, {"name": name, "created": plan.created,
                                            **audience.to_payload()}, key)
    plan_path = Path(silo_dir) / AUDIENCE_DIR / f"{name}.plan.json"
    atomic_write_json(plan_path, plan.to_dict())
    return plan_path, sealed


def load_audience_plan(silo_dir: Path, campaign_id: str, key: bytes) -> tuple[CampaignPlan, Audience]:
    """Read back a saved plan and open its sealed audience (tampering raises)."""
    name = audience_name(campaign_id)
    plan = CampaignPlan.from_dict(
        json.loads((Path(silo_dir) / AUDIENCE_DIR / f"{name}.plan.json").read_text()))
    audience = Audience.from_payload(load_audience(silo_dir, name, key))
    return plan, audience
