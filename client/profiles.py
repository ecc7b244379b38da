"""Per-customer profiles computed inside a silo: RFM, rhythm, churn risk, CLV and tags.

What a marketer asks of a customer base (who is valuable, who is slipping
away, who is due to buy again) is answered here from the silo's own
:class:`~fedprofile.client.interactions.Interactions`. Nothing leaves the silo:
the profiles are keyed by the silo's pseudonymous customer keys, and the
federation only ever sees :func:`profile_vectors` through a DP mechanism.

Purchase occasions
    A customer's *occasions* are their distinct timestamps: one basket or
    invoice, however many lines it has. Its value is the sum of its lines'
    known values (NaN when none is known). Profiles count every interaction
    as a purchase; a silo whose interactions include views should pass
    ``inter.subset_rows(np.isfinite(inter.value))`` (or its own purchase
    filter) instead.

The as-of date
    Profiles describe customers as of ``as_of`` using only interactions before
    it; by default it is the start of the UTC day after the silo's last
    interaction (the same convention as :func:`fedprofile.client.features.resolve_as_of`).

Churn risk and CLV (see :mod:`fedprofile.models.clv`)
    ``churn_risk`` is the BG/NBD probability that the customer makes *no*
    purchase in the next ``churn_horizon_days`` (default 90). The more
    literal ``1 - P(alive)`` is kept as ``p_alive`` but is not used as the risk
    because BG/NBD makes it exactly 0 for every customer who has bought only
    once (dropout is only possible after a repeat purchase), which would call
    a customer last seen two years ago risk-free; the no-purchase probability
    equals ``1 - P(alive)`` plus the chance that a customer still alive stays
    silent, so it is never below it and it grows with silence for everyone.
    ``clv`` is the BG/NBD expected purchases over ``clv_horizon_days`` times
    the Gamma-Gamma expected spend per purchase (``clv_method`` =
    ``"bg-nbd+gamma-gamma"``). If the spend model cannot be fitted, the
    customer's own average order value replaces it
    (``"bg-nbd+own-average-spend"``). If BG/NBD itself cannot be fitted (too
    few repeat buyers, no convergence), the fallback ``"historic"`` is used:
    churn risk ``1 - exp(-recency / rhythm)`` (how unusual the silence is for
    a customer buying at their own mean interval; customers with no interval
    yet take the silo's median one, or the churn horizon when no customer has
    one) and CLV the historic value per day times the horizon, where the value
    per day is taken over at least the horizon (a customer seen for a week is
    not extrapolated from that week). ``fit_note`` says why a fallback ran.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from fedprofile.files import atomic_write_bytes
from fedprofile.models.clv import (BGNBDParams, CLVFitError, GammaGammaParams,
                                   discounted_purchases, expected_spend, fit_bgnbd,
                                   fit_gamma_gamma, p_alive, prob_no_purchase)

from .interactions import Interactions, load_interactions
from .store import SiloStore
from .tags import NUMERIC_FIELDS, TEXT_FIELDS, TagRule, apply_tags, load_tag_rules

__all__ = ["DAY", "CLV_MODEL", "CLV_OWN_SPEND", "CLV_HISTORIC", "ProfileConfig", "Profiles",
           "compute_profiles", "rfm_scores", "PROFILE_VECTOR_FEATURES", "PROFILE_VECTOR_NORM_BOUND",
           "profile_vectors", "decode_vector"]

DAY = 86_400
CLV_MODEL = "bg-nbd+gamma-gamma"
CLV_OWN_SPEND = "bg-nbd+own-average-spend"
CLV_HISTORIC = "historic"
_PERIOD_DAYS = 30.0


@dataclass(frozen=True)
class ProfileConfig:
    """How profiles are computed; every field has a stated default.

    ``discount_rate_per_period`` discounts CLV per 30-day period (0: none).
    ``penalizer`` is the ridge of :func:`fedprofile.models.clv.fit_bgnbd` (0:
    plain maximum likelihood). ``tag_rules`` None means the packaged
    ``default_tags.toml``.
    """

    clv_horizon_days: float = 365.0
    churn_horizon_days: float = 90.0
    discount_rate_per_period: float = 0.0
    penalizer: float = 0.0
    tag_rules: tuple[TagRule, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("clv_horizon_days", "churn_horizon_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"ProfileConfig.{name} must be a number > 0, got {value!r}")
        if not (math.isfinite(self.discount_rate_per_period) and self.discount_rate_per_period > -1):
            raise ValueError("ProfileConfig.discount_rate_per_period must be finite and > -1, "
                             f"got {self.discount_rate_per_period!r}")
        if not (math.isfinite(self.penalizer) and self.penalizer >= 0):
            raise ValueError(f"ProfileConfig.penalizer must be finite and >= 0, got {self.penalizer!r}")
        if self.tag_rules is not None:
            object.__setattr__(self, "tag_rules", tuple(self.tag_rules))


@dataclass(frozen=True, eq=False)
class Profiles:
    """One profile per user, every array aligned with ``users``. Never leaves the silo.

    ``predicted_next_purchase`` is the last occasion plus the customer's median
    interval (their own rhythm; a single interval is its own median), so it
    needs two occasions; ``periodicity`` (coefficient of variation of the
    intervals, population std) needs two intervals, since one interval has no
    spread to measure. RFM scores are :func:`rfm_scores` quintiles.

    Units: ``*_days`` in days; ``predicted_next_purchase`` in epoch seconds;
    money in the silo's currency. NaN means "not known" (e.g. intervals of a
    customer with one purchase). Users with no purchase before ``as_of`` have
    ``frequency == 0``, NaN everywhere else, RFM scores 0 and segment ``""``.
    Opted-out users (``opt_out``) are profiled for the silo's own aggregate
    figures but get no tags, since tags exist to target people.
    """

    users: np.ndarray  # object (str): pseudonymous keys
    opt_out: np.ndarray  # bool
    frequency: np.ndarray  # int64: purchase occasions
    recency_days: np.ndarray
    monetary: np.ndarray  # total known value
    avg_order_value: np.ndarray  # monetary / occasions with a known value
    tenure_days: np.ndarray
    mean_interval_days: np.ndarray
    median_interval_days: np.ndarray
    predicted_next_purchase: np.ndarray  # epoch s (float, NaN unknown)
    days_until_next: np.ndarray  # negative: overdue
    periodicity: np.ndarray  # CV of intervals; lower = more regular
    overdue_ratio: np.ndarray  # recency / mean interval
    p_alive: np.ndarray  # BG/NBD P(alive); NaN under the historic fallback
    churn_risk: np.ndarray
    clv: np.ndarray
    region: np.ndarray  # object (str), "" unknown
    r_score: np.ndarray  # int64 1-5, 0 = no purchase
    f_score: np.ndarray
    m_score: np.ndarray  # 0 also when no value is known
    rfm_segment: np.ndarray  # object (str) "R5F4M3", "" = no purchase
    tags: list[list[str]]
    as_of: int
    clv_method: str
    fit_note: str = ""
    bgnbd: BGNBDParams | None = None
    gamma_gamma: GammaGammaParams | None = None
    tag_names: tuple[str, ...] = ()
    config: ProfileConfig = field(default_factory=ProfileConfig)
    name: str = ""

    @property
    def n_users(self) -> int:
        return len(self.users)

    def field_arrays(self) -> dict[str, np.ndarray]:
        """The fields tag conditions may use, by name (numbers as float64)."""
        out: dict[str, np.ndarray] = {f: np.asarray(getattr(self, f), dtype=np.float64)
                                      for f in NUMERIC_FIELDS}
        out.update({f: getattr(self, f) for f in TEXT_FIELDS})
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One dict per user for CSV/JSON: NaN as None, the next purchase as an ISO date.

        The ``user`` values are pseudonymous keys of this silo: the rows are a
        silo-local output and must not be sent to the server or another silo.
        """
        columns = {name: self.users if name == "user" else getattr(self, name)
                   for name in _ROW_FIELDS}
        out: list[dict[str, Any]] = []
        for u in range(self.n_users):
            row: dict[str, Any] = {}
            for name, values in columns.items():
                value = values[u]
                if name == "predicted_next_purchase":
                    row[name] = None if not np.isfinite(value) else epoch_day(value)
                elif name in _INT_FIELDS:
                    row[name] = int(value)
                elif name == "opt_out":
                    row[name] = bool(value)
                elif isinstance(value, str):
                    row[name] = value
                else:
                    row[name] = float(value) if np.isfinite(value) else None
            row["tags"] = list(self.tags[u])
            out.append(row)
        return out

    def write_csv(self, path: Path) -> None:
        """All profiles as CSV (written atomically): tags joined by ``;``, unknown = empty."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*_ROW_FIELDS, "tags"])
        for row in self.rows():
            writer.writerow([_cell(row[name]) for name in _ROW_FIELDS] + [";".join(row["tags"])])
        atomic_write_bytes(Path(path), buffer.getvalue().encode("utf-8"))

    def summary(self) -> dict[str, Any]:
        """What a marketer reads first: counts per tag and RFM score, and typical values.

        Aggregates only (no user key); medians are over customers with a
        purchase where the value is known.
        """
        active = self.frequency > 0
        tag_counts = Counter(t for ts in self.tags for t in ts)

        def median(values: np.ndarray) -> float | None:
            known = np.asarray(values, dtype=np.float64)[active]
            known = known[np.isfinite(known)]
            return float(np.median(known)) if len(known) else None

        scores = {letter: {str(s): int(np.count_nonzero(arr == s)) for s in range(1, 6)}
                  for letter, arr in (("R", self.r_score), ("F", self.f_score),
                                      ("M", self.m_score))}
        segments = Counter(s for s in self.rfm_segment[active] if s)
        known_clv = self.clv[active & np.isfinite(self.clv)]
        return {
            "silo": self.name,
            "as_of": epoch_day(self.as_of),
            "users": self.n_users,
            "customers": int(np.count_nonzero(active)),
            "opted_out": int(np.count_nonzero(self.opt_out)),
            "clv_method": self.clv_method,
            "clv_horizon_days": self.config.clv_horizon_days,
            "churn_horizon_days": self.config.churn_horizon_days,
            "fit_note": self.fit_note,
            "bgnbd": None if self.bgnbd is None else asdict(self.bgnbd),
            "gamma_gamma": None if self.gamma_gamma is None else asdict(self.gamma_gamma),
            "tags": {name: tag_counts.get(name, 0) for name in self.tag_names},
            "rfm_scores": scores,
            "top_rfm_segments": dict(segments.most_common(10)),
            "clv_total": float(known_clv.sum()),
            "medians": {name: median(getattr(self, name)) for name in _SUMMARY_MEDIANS},
        }


_ROW_FIELDS: tuple[str, ...] = (
    "user", "opt_out", "region", "frequency", "recency_days", "monetary", "avg_order_value",
    "tenure_days", "mean_interval_days", "median_interval_days", "predicted_next_purchase",
    "days_until_next", "periodicity", "overdue_ratio", "p_alive", "churn_risk", "clv",
    "r_score", "f_score", "m_score", "rfm_segment",
)
_INT_FIELDS = frozenset({"frequency", "r_score", "f_score", "m_score"})
_SUMMARY_MEDIANS = ("recency_days", "frequency", "monetary", "avg_order_value", "tenure_days",
                    "median_interval_days", "periodicity", "churn_risk", "clv")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 4))
    return str(value)


# ---------------------------------------------------------------------------
# computing


@dataclass(frozen=True)
class _Occasions:
    """Purchase occasions (distinct (user, timestamp)), sorted like the interactions."""

    user: np.ndarray  # int64
    time: np.ndarray  # int64 epoch s
    value: np.ndarray  # float64, NaN = no known value


def _occasions(ui: np.ndarray, ts: np.ndarray, value: np.ndarray) -> _Occasions:
    if len(ui) == 0:
        return _Occasions(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    new = np.ones(len(ui), dtype=bool)
    new[1:] = (ui[1:] != ui[:-1]) | (ts[1:] != ts[:-1])
    starts = np.flatnonzero(new)
    known = np.isfinite(value)
    total = np.add.reduceat(np.where(known, value, 0.0), starts)
    valued = np.add.reduceat(known.astype(np.int64), starts) > 0
    return _Occasions(ui[starts], ts[starts], np.where(valued, total, np.nan))


def _main_region(ui: np.ndarray, region: np.ndarray, n: int) -> np.ndarray:
    """Each user's most frequent non-empty region; ties go to the most recent one."""
    out = np.full(n, "", dtype=object)
    keep = np.array([isinstance(r, str) and r != "" for r in region], dtype=bool)
    if not keep.any():
        return out
    rows = np.flatnonzero(keep)
    names, code = np.unique(region[keep].astype(str), return_inverse=True)
    pair = ui[keep] * len(names) + code
    pairs, counts = np.unique(pair, return_counts=True)
    latest = np.zeros(len(pairs), dtype=np.int64)
    np.maximum.at(latest, np.searchsorted(pairs, pair), rows)  # rows are time-ordered per user
    users = pairs // len(names)
    order = np.lexsort((latest, counts, users))  # the last of each user's run wins
    last_of_user = np.ones(len(order), dtype=bool)
    last_of_user[:-1] = users[order][1:] != users[order][:-1]
    best = order[last_of_user]
    out[users[best]] = names[pairs[best] % len(names)]
    return out


def rfm_scores(values: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Quintile scores 1-5 within the silo; 0 where the value is unknown (NaN).

    A value's score is ``ceil(5 * rank / n)`` with ``rank`` its average rank
    among the ``n`` known values (1 = worst), so score ``k`` covers ranks in
    ``((k-1) n/5, k n/5]`` and tied values always share a score (the usual
    quantile cut would split a block of identical frequencies arbitrarily).
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros(len(values), dtype=np.int64)
    known = np.isfinite(values)
    n = int(known.sum())
    if n == 0:
        return out
    ranks = rankdata(values[known] if higher_is_better else -values[known], method="average")
    out[known] = np.clip(np.ceil(5.0 * ranks / n - 1e-9), 1, 5).astype(np.int64)
    return out


def _resolve_as_of(inter: Interactions, as_of: int | None) -> int:
    if as_of is None:
        if len(inter) == 0:
            raise ValueError(f"interactions {inter.name or '(unnamed)'}: no interactions, so "
                             "there is no end of data; pass as_of")
        return (int(inter.timestamp.max()) // DAY + 1) * DAY
    if isinstance(as_of, bool) or not isinstance(as_of, int | np.integer):
        raise TypeError(f"as_of must be epoch seconds (int) or None, got {as_of!r}")
    return int(as_of)


def compute_profiles(inter: Interactions, as_of: int | None = None,
                     config: ProfileConfig = ProfileConfig()) -> Profiles:
    """Profiles of every user of ``inter`` as of ``as_of`` (see the module docstring)."""
    as_of = _resolve_as_of(inter, as_of)
    n = inter.n_users
    before = inter.timestamp < as_of
    ui = inter.user_index[before]
    occ = _occasions(ui, inter.timestamp[before], inter.value[before])

    frequency = np.bincount(occ.user, minlength=n).astype(np.int64)
    has = frequency > 0
    first_idx = np.searchsorted(occ.user, np.arange(n), side="left")
    last_idx = np.searchsorted(occ.user, np.arange(n), side="right") - 1
    safe_first = np.minimum(first_idx, max(len(occ.time) - 1, 0))
    safe_last = np.maximum(last_idx, 0)
    times = occ.time.astype(np.float64) if len(occ.time) else np.zeros(1)
    first = np.where(has, times[safe_first], np.nan)
    last = np.where(has, times[safe_last], np.nan)
    recency = (as_of - last) / DAY
    tenure = (as_of - first) / DAY

    valued = np.isfinite(occ.value)
    n_valued = np.bincount(occ.user[valued], minlength=n)
    value_sum = np.bincount(occ.user[valued], weights=occ.value[valued], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(n_valued > 0, value_sum, np.nan)
        aov = np.where(n_valued > 0, value_sum / np.maximum(n_valued, 1), np.nan)

    # Intervals between consecutive occasions of the same user.
    same = occ.user[1:] == occ.user[:-1]
    gaps = (np.diff(occ.time) / DAY)[same]
    gap_user = occ.user[1:][same]
    n_gaps = np.bincount(gap_user, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_gap = np.where(n_gaps > 0, np.bincount(gap_user, gaps, minlength=n) / n_gaps, np.nan)
        mean_sq = np.bincount(gap_user, gaps**2, minlength=n) / np.maximum(n_gaps, 1)
        std_gap = np.sqrt(np.maximum(mean_sq - mean_gap**2, 0.0))
        periodicity = np.where(n_gaps >= 2, std_gap / mean_gap, np.nan)
    median_gap = _medians(gap_user, gaps, n_gaps)
    predicted = last + median_gap * DAY
    days_until = (predicted - as_of) / DAY
    with np.errstate(invalid="ignore", divide="ignore"):
        overdue = recency / mean_gap

    model = _churn_and_clv(occ, has, frequency, first, last, recency, tenure, mean_gap,
                           monetary, aov, as_of, config)

    r_score = rfm_scores(np.where(has, -recency, np.nan))
    f_score = rfm_scores(np.where(has, frequency, np.nan))
    m_score = rfm_scores(np.where(has, monetary, np.nan))
    segment = np.array([f"R{r}F{f}M{m}" if ok else "" for r, f, m, ok
                        in zip(r_score, f_score, m_score, has, strict=True)], dtype=object)

    rules = config.tag_rules if config.tag_rules is not None else _default_rules()
    profiles = Profiles(
        users=inter.users, opt_out=inter.opt_out, frequency=frequency, recency_days=recency,
        monetary=monetary, avg_order_value=aov, tenure_days=tenure,
        mean_interval_days=mean_gap, median_interval_days=median_gap,
        predicted_next_purchase=predicted, days_until_next=days_until, periodicity=periodicity,
        overdue_ratio=overdue, p_alive=model.p_alive, churn_risk=model.churn_risk,
        clv=model.clv, region=_main_region(ui, inter.region[before], n), r_score=r_score,
        f_score=f_score, m_score=m_score, rfm_segment=segment, tags=[[] for _ in range(n)],
        as_of=as_of, clv_method=model.method, fit_note=model.note, bgnbd=model.bgnbd,
        gamma_gamma=model.gamma_gamma, tag_names=tuple(r.name for r in rules), config=config,
        name=inter.name)
    tags = apply_tags(profiles.field_arrays(), rules)
    for u in np.flatnonzero(inter.opt_out):
        tags[u] = []
    return replace(profiles, tags=tags)


@functools.lru_cache(maxsize=1)
def _default_rules() -> tuple[TagRule, ...]:
    """The packaged tag rules, parsed once per process (the file ships with the code)."""
    return tuple(load_tag_rules())


def _medians(owner: np.ndarray, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-owner median of ``values`` (NaN for owners with none), without a Python loop."""
    out = np.full(len(counts), np.nan)
    if len(values) == 0:
        return out
    order = np.lexsort((values, owner))
    sorted_values = values[order]
    start = np.searchsorted(owner[order], np.arange(len(counts)))
    some = counts > 0
    lo = start[some] + (counts[some] - 1) // 2
    hi = start[some] + counts[some] // 2
    out[some] = (sorted_values[lo] + sorted_values[hi]) / 2.0
    return out


@dataclass(frozen=True)
class _Model:
    p_alive: np.ndarray
    churn_risk: np.ndarray
    clv: np.ndarray
    method: str
    note: str
    bgnbd: BGNBDParams | None
    gamma_gamma: GammaGammaParams | None


def _churn_and_clv(occ: _Occasions, has: np.ndarray, frequency: np.ndarray, first: np.ndarray,
                   last: np.ndarray, recency: np.ndarray, tenure: np.ndarray,
                   mean_gap: np.ndarray, monetary: np.ndarray, aov: np.ndarray, as_of: int,
                   config: ProfileConfig) -> _Model:
    """BG/NBD (+ Gamma-Gamma) where the silo supports a fit, the stated fallback otherwise."""
    n = len(has)
    alive = np.full(n, np.nan)
    churn = np.full(n, np.nan)
    value = np.full(n, np.nan)
    x = (frequency - 1)[has].astype(np.float64)
    t_x = ((last - first) / DAY)[has]
    T = tenure[has]
    horizon = config.clv_horizon_days
    try:
        bg = fit_bgnbd(x, t_x, T, penalizer=config.penalizer)
    except CLVFitError as err:
        return _historic(has, recency, tenure, mean_gap, monetary, config, str(err))
    alive[has] = p_alive(bg, x, t_x, T)
    churn[has] = prob_no_purchase(bg, config.churn_horizon_days, x, t_x, T)
    purchases = discounted_purchases(bg, horizon, x, t_x, T, config.discount_rate_per_period,
                                     _PERIOD_DAYS)

    # Gamma-Gamma learns from repeat occasions only (the first is the acquisition).
    first_of_user = np.searchsorted(occ.user, occ.user, side="left") == np.arange(len(occ.user))
    repeat = ~first_of_user & np.isfinite(occ.value) & (occ.value > 0)
    x_spend = np.bincount(occ.user[repeat], minlength=n).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.bincount(occ.user[repeat], occ.value[repeat], minlength=n) / x_spend
    gg: GammaGammaParams | None = None
    try:
        gg = fit_gamma_gamma(x_spend[has], m[has], penalizer=config.penalizer)
        spend = expected_spend(gg, x_spend[has], m[has])
        method, note = CLV_MODEL, ""
    except CLVFitError as err:
        spend = aov[has]
        method, note = CLV_OWN_SPEND, str(err)
    # No known value at all: the spend model would answer with the population
    # mean, but nothing says this customer spends anything.
    value[has] = np.where(np.isfinite(monetary[has]), purchases * spend, np.nan)
    return _Model(alive, churn, value, method, note, bg, gg)


def _historic(has: np.ndarray, recency: np.ndarray, tenure: np.ndarray, mean_gap: np.ndarray,
              monetary: np.ndarray, config: ProfileConfig, note: str) -> _Model:
    """The fallback when BG/NBD cannot be fitted (module docstring)."""
    known = np.isfinite(mean_gap)
    if known.any():
        typical = float(np.median(mean_gap[known]))
    else:
        typical = config.churn_horizon_days
    rhythm = np.where(known, mean_gap, typical)
    with np.errstate(invalid="ignore", divide="ignore"):
        churn = np.where(has, -np.expm1(-recency / np.maximum(rhythm, 1e-9)), np.nan)
    horizon = config.clv_horizon_days
    per_day = monetary / np.maximum(tenure, horizon)
    value = np.where(has, per_day * horizon, np.nan)
    return _Model(np.full(len(has), np.nan), churn, value, CLV_HISTORIC, note, None, None)


# ---------------------------------------------------------------------------
# vectors for federated segmentation


@dataclass(frozen=True)
class _Transform:
    """A fixed map of one profile field to [0, 1], and back."""

    field: str
    kind: str  # "log": log1p(v)/log1p(scale); "linear": v/scale
    scale: float
    missing: float  # the coordinate a NaN maps to

    def forward(self, values: np.ndarray) -> np.ndarray:
        v = np.maximum(np.asarray(values, dtype=np.float64), 0.0)
        out = np.log1p(v) / math.log1p(self.scale) if self.kind == "log" else v / self.scale
        return np.where(np.isfinite(out), np.clip(out, 0.0, 1.0), self.missing)

    def inverse(self, coordinate: float) -> float:
        c = min(max(float(coordinate), 0.0), 1.0)
        return math.expm1(c * math.log1p(self.scale)) if self.kind == "log" else c * self.scale


_TRANSFORMS: tuple[_Transform, ...] = (
    _Transform("recency_days", "linear", 365.0, 1.0),  # never bought: as long ago as it gets
    _Transform("frequency", "log", 100.0, 0.0),
    _Transform("monetary", "log", 50_000.0, 0.0),  # no known value: nothing spent
    _Transform("avg_order_value", "log", 5_000.0, 0.0),
    _Transform("tenure_days", "linear", 730.0, 0.0),
    _Transform("mean_interval_days", "log", 365.0, 1.0),  # no second purchase: longest gap
    _Transform("periodicity", "linear", 3.0, 1.0),  # no rhythm shown yet: least regular
    _Transform("churn_risk", "linear", 1.0, 1.0),
    _Transform("clv", "log", 50_000.0, 0.0),
)

PROFILE_VECTOR_FEATURES: tuple[str, ...] = tuple(t.field for t in _TRANSFORMS)
"""The coordinates of :func:`profile_vectors`, in order (profile field names)."""

PROFILE_VECTOR_NORM_BOUND = math.sqrt(len(_TRANSFORMS))
"""Every coordinate is in [0, 1], so a vector's L2 norm is at most sqrt(d)."""


def profile_vectors(profiles: Profiles) -> np.ndarray:
    """``float32 [n_users, d]`` in [0, 1]: the profiles on a scale every silo shares.

    The transforms are fixed (bounds in ``_TRANSFORMS``: a year of recency, 100
    purchases, 50,000 spent, 5,000 per order, two years of tenure, a year
    between purchases, an interval CV of 3, a CLV of 50,000; log scales for
    heavy-tailed counts and money), never fitted to data, so silos map
    customers into the same space without exchanging statistics, and each
    vector's L2 norm is bounded by :data:`PROFILE_VECTOR_NORM_BOUND` (what the
    DP k-means needs). Values beyond a bound are clipped to it; an unknown
    value maps to the stated ``missing`` end. Rows align with ``profiles.users``;
    callers drop customers with no purchase (and opted-out customers where the
    use is personalisation).
    """
    columns = [t.forward(getattr(profiles, t.field)) for t in _TRANSFORMS]
    return np.column_stack(columns).astype(np.float32) if profiles.n_users else np.zeros(
        (0, len(_TRANSFORMS)), dtype=np.float32)


def decode_vector(v: Sequence[float] | np.ndarray) -> dict[str, float]:
    """A vector (e.g. a segment centroid) back in human units, by profile field name.

    Coordinates are clipped to [0, 1] first (DP noise can push a centroid
    outside). A clipped bound decodes to the bound ("365 days" means "a year or
    more"), and a centroid mixes the ``missing`` coordinates of customers with
    unknown values, so read decoded intervals of one-time-buyer segments with that in mind.
    """
    arr = np.asarray(v, dtype=np.float64).ravel()
    if arr.shape != (len(_TRANSFORMS),):
        raise ValueError(f"a profile vector has {len(_TRANSFORMS)} coordinates "
                         f"({', '.join(PROFILE_VECTOR_FEATURES)}), got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("a profile vector must be finite")
    return {t.field: t.inverse(c) for t, c in zip(_TRANSFORMS, arr, strict=True)}


def epoch_day(epoch: float) -> str:
    """The UTC date (YYYY-MM-DD) of epoch seconds: how dates are shown and planned."""
    return dt.datetime.fromtimestamp(float(epoch), dt.UTC).date().isoformat()


def as_of_epoch(as_of: str) -> int | None:
    """``as-of`` (YYYY-MM-DD, or "" for the end of the silo's data) as epoch seconds."""
    if not as_of:
        return None
    day = dt.date.fromisoformat(as_of)
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def profile_silo(silo_dir: Path, as_of: str = "", config: ProfileConfig | None = None
                 ) -> Profiles:
    """The profiles of a silo's customers, read from its store (commands, cases, the demo)."""
    with SiloStore.open(Path(silo_dir)) as store:
        inter = load_interactions(store)
    return compute_profiles(inter, as_of=as_of_epoch(as_of), config=config or ProfileConfig())


def format_summary(summary: dict[str, Any]) -> str:
    """:meth:`Profiles.summary` as the few lines a marketer reads in a terminal."""
    def num(value: float | None, unit: str = "") -> str:
        return "-" if value is None else f"{value:,.1f}{unit}"

    med = summary["medians"]
    lines = [
        f"silo {summary['silo']}: {summary['customers']:,} customers with a purchase "
        f"({summary['users']:,} known, {summary['opted_out']:,} opted out), as of {summary['as_of']}",
        f"  CLV ({summary['clv_horizon_days']:g} days, {summary['clv_method']}): total "
        f"{summary['clv_total']:,.0f}, median {num(med['clv'])}"
        + (f"  [{summary['fit_note']}]" if summary.get("fit_note") else ""),
        f"  median recency {num(med['recency_days'], ' d')}, orders {num(med['frequency'])}, "
        f"spend {num(med['monetary'])}, order value {num(med['avg_order_value'])}, "
        f"interval {num(med['median_interval_days'], ' d')}, churn risk "
        f"({summary['churn_horizon_days']:g} d) {num(med['churn_risk'])}",
        "  tags: " + (", ".join(f"{name} {count:,}" for name, count in summary["tags"].items())
                      or "none defined"),
        "  top RFM segments: " + ", ".join(f"{seg} {count:,}" for seg, count
                                            in summary["top_rfm_segments"].items()),
    ]
    return "\n".join(lines)
