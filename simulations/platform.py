"""Seeded generator of a synthetic multi-line travel platform.

Why this exists
---------------
fedprofile learns customer profiles across business-line silos that may not
pool raw data.  To develop and evaluate that honestly we need silos that look
like real line systems (each keyed by its own raw identifier, each holding only
its own customers and orders) *and* a ground truth that says who is who and
what each person really does next.  This module produces both, deterministically
from a seed, in a few seconds for 20,000 people.

The model
---------
*People* (ground truth only) live in a home city (:mod:`.geography`) and take
*trips* during the window ``[start, end]``:

* ``periodic_business`` people travel on a fixed cycle (14/30/60/90 days, e.g.
  Shenzhen -> Hong Kong every 30 days) anchored to a phase, each trip jittered
  by a few days.  Their trips are regular, so their orders are too.
* everybody (periodic people included, at a low rate) takes *leisure* trips as
  a seasonal Poisson process whose rate is gamma-distributed per person
  (``international_leisure``, ``domestic_leisure`` and ``occasional`` people
  differ in rate and in the share of trips that go abroad).

Destinations follow regional habits (Guangdong -> Hong Kong/Macau/Thailand,
Shanghai -> Japan/Korea, ...) plus a personal favourite.  Each person is a
customer of each *line* with some probability (data packs correlated with how
international the person travels) and, per trip, books it *with us* with a
personal probability: a flight on ``flights``, a hotel on ``hotels`` (only when
the trip has nights) and a roaming pack on ``datapacks`` (only abroad; many of
our pack customers often buy elsewhere).  An order is placed a lead time before
the trip (flights days to weeks, packs 0-3 days); orders outside the window, or
outside the person's active period with us (late joiners, churners), are
dropped.  Because orders are driven by a stationary per-person process, a
customer's past orders on a line (recency, frequency, regularity) predict their
future orders on it -- the premise of the per-line propensity models.

Ground truth also records latent spend level, price/coupon sensitivity,
preferred data-pack kind and the exact model probability of ordering on each
line in the 30 days after the window (``propensity_<line>_30d``).

Everything random flows from ``numpy.random.SeedSequence([seed, stream])`` with
one stream per step, so the output is byte-identical for a given config and a
line's data does not change when another line is switched off.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import json
import math
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Final, Mapping, Sequence

import numpy as np

from fedprofile.client.schema import CUSTOMERS, ORDERS

from . import geography as geo

GENERATOR_VERSION: Final = "1.0.0"

KNOWN_LINES: Final[tuple[str, ...]] = ("flights", "hotels", "datapacks")
SEGMENTS: Final[tuple[str, ...]] = (
    "periodic_business",
    "international_leisure",
    "domestic_leisure",
    "occasional",
)
# Silo files follow the one silo schema that ingestion validates against.
CUSTOMER_COLUMNS: Final[tuple[str, ...]] = CUSTOMERS.column_names
ORDER_COLUMNS: Final[tuple[str, ...]] = ORDERS.column_names
ACCOUNT_COLUMNS: Final[tuple[str, ...]] = ("line", "customer_id", "person_id")
ORDER_ID_PREFIX: Final[Mapping[str, str]] = {"flights": "F", "hotels": "H", "datapacks": "D"}

MAX_AMOUNT: Final = 200_000.0
MAX_LEAD_DAYS: Final = 90
"""No order is placed more than this many days before its trip."""
PROPENSITY_HORIZON_DAYS: Final = 30

# Monthly travel intensity (Jan..Dec): Spring Festival, May Day, summer and
# National Day peaks.  Normalised to a yearly mean of 1 in `_season_weights`.
_MONTH_FACTORS: Final = np.array([1.10, 1.25, 0.85, 0.95, 1.05, 0.85, 1.20, 1.25, 0.85, 1.20, 0.75, 0.85])
_DAYS_IN_MONTH: Final = np.array([31, 28.25, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])

# Hour-of-day profile of order placement (people shop in the day and evening).
_ORDER_HOUR_WEIGHTS: Final = np.array(
    [0.5, 0.3, 0.2, 0.2, 0.2, 0.3, 0.8, 1.5, 2.5, 3.5, 4.0, 4.0,
     3.5, 3.5, 3.5, 3.5, 3.5, 3.5, 3.5, 4.0, 4.5, 4.5, 3.5, 1.5]
)

# (cycle days, jitter half-width days, share of periodic travellers)
_PERIODIC_CYCLES: Final = ((14, 1, 0.15), (30, 2, 0.50), (60, 3, 0.20), (90, 4, 0.15))

_AGE_COUPON_BASE: Final = np.array([0.09, 0.06, 0.04, 0.04, 0.06, 0.08])
"""Young and retired customers respond to coupons more (per AGE_BANDS)."""

_PHONE_PREFIXES: Final = np.array(
    [130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 150, 151, 152, 153, 155, 156, 157, 158, 159,
     166, 170, 173, 175, 176, 177, 178, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 191, 198, 199]
)
_SURNAMES: Final = ("wang", "li", "zhang", "liu", "chen", "yang", "huang", "zhao", "wu", "zhou",
                    "xu", "sun", "ma", "zhu", "hu", "guo", "he", "lin", "luo", "gao")
_GIVEN: Final = ("wei", "fang", "na", "min", "jing", "li", "qiang", "lei", "jun", "yang", "yong",
                 "yan", "jie", "juan", "tao", "ming", "chao", "xiu", "xia", "hui", "hao", "yu",
                 "xin", "ting", "lin")
_EMAIL_DOMAINS: Final = ("qq.com", "163.com", "126.com", "gmail.com", "outlook.com", "sina.com",
                         "foxmail.com", "hotmail.com", "139.com")
_EMAIL_DOMAIN_WEIGHTS: Final = np.array([0.30, 0.22, 0.10, 0.08, 0.08, 0.06, 0.06, 0.05, 0.05])

_STREAMS: Final[Mapping[str, int]] = {
    "persons": 1, "identity": 2, "membership": 3, "trips": 4,
    "flights": 11, "hotels": 12, "datapacks": 13,
    "customers:flights": 21, "customers:hotels": 22, "customers:datapacks": 23,
}


# --------------------------------------------------------------------------- #
# Public configuration and result
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class PlatformConfig:
    """Everything that determines a generated platform.

    Two configs that compare equal produce byte-identical output, which is why
    every behaviour knob lives here rather than in module globals.  The whole
    config is written to ``manifest.json`` so a platform directory documents
    how it was made.
    """

    n_customers: int = 20_000
    """Number of people; each is a customer of at least one enabled line."""
    seed: int = 7
    start: datetime.date = datetime.date(2024, 1, 1)
    end: datetime.date = datetime.date(2025, 12, 31)
    """Last day of the window (inclusive)."""
    lines: tuple[str, ...] = KNOWN_LINES
    segment_shares: tuple[float, float, float, float] = (0.10, 0.22, 0.33, 0.35)
    """Shares of :data:`SEGMENTS`, in that order."""
    flights_customer_rate: float = 0.70
    hotels_customer_rate: float = 0.50
    datapacks_customer_rate: float = 0.35
    """Mean rate; the individual rate rises with how international a person travels."""
    opt_out_rate: float = 0.05
    """Share of people who objected to marketing (PIPL Art. 24)."""
    late_join_rate: float = 0.15
    """Share of people who only start using the platform during the window."""
    churn_rate: float = 0.10
    """Share of people who stop using the platform during the window."""
    coupon_base_rate: float = 0.03
    """Per-order coupon use of a person with zero coupon uplift."""
    email_noise_rate: float = 0.10
    """Share of hotel e-mail fields with stray case/whitespace (half that on flights)."""
    hotel_phone_missing_rate: float = 0.10
    seasonality: bool = True

    def __post_init__(self) -> None:
        for name, minimum in (("n_customers", 10), ("seed", 0)):
            _require_int(name, getattr(self, name), minimum=minimum)
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, datetime.date) or isinstance(value, datetime.datetime):
                raise ValueError(f"{name} must be a datetime.date, got {value!r}")
        if self.start >= self.end:
            raise ValueError(f"start ({self.start}) must be before end ({self.end})")
        self._validate_lines()
        shares = tuple(self.segment_shares)
        if len(shares) != len(SEGMENTS) or any(not _is_real(s) or s < 0 for s in shares):
            raise ValueError(f"segment_shares must be {len(SEGMENTS)} non-negative numbers for {SEGMENTS}")
        if not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
            raise ValueError(f"segment_shares must sum to 1, got {sum(shares)}")
        object.__setattr__(self, "segment_shares", shares)
        for f in dataclasses.fields(self):
            if f.name.endswith("_rate"):
                value = getattr(self, f.name)
                if not _is_real(value) or not 0.0 <= value <= 1.0:
                    raise ValueError(f"{f.name} must be a probability in [0, 1], got {value!r}")
        if not isinstance(self.seasonality, bool):
            raise ValueError(f"seasonality must be a bool, got {self.seasonality!r}")

    def _validate_lines(self) -> None:
        lines = self.lines
        if isinstance(lines, str) or not isinstance(lines, (tuple, list)):
            raise ValueError(f"lines must be a tuple of line names from {KNOWN_LINES}, got {lines!r}")
        if not lines:
            raise ValueError("lines must name at least one line")
        unknown = [line for line in lines if line not in KNOWN_LINES]
        if unknown:
            raise ValueError(f"lines contains unknown line(s) {unknown}; known: {KNOWN_LINES}")
        if len(set(lines)) != len(lines):
            raise ValueError(f"lines contains duplicates: {list(lines)}")
        object.__setattr__(self, "lines", tuple(lines))

    @property
    def n_days(self) -> int:
        """Number of days in the window, both ends included."""
        return (self.end - self.start).days + 1

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> PlatformConfig:
        """The inverse of :meth:`to_json`."""
        values = dict(raw)
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            if f.type in ("datetime.date", datetime.date):
                values[f.name] = datetime.date.fromisoformat(str(values[f.name]))
            elif isinstance(values[f.name], list):
                values[f.name] = tuple(values[f.name])
        return cls(**values)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict (dates as ISO strings, tuples as lists)."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime.date):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


@dataclass(frozen=True)
class PlatformSummary:
    """What :func:`generate_platform` wrote, for logs and callers' sanity checks."""

    out_dir: Path
    n_persons: int
    customers_per_line: dict[str, int]
    orders_per_line: dict[str, int]
    window_start: datetime.date
    window_end: datetime.date
    files: dict[str, str]
    """Relative path -> sha256 of every data file (manifest excluded)."""

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / "manifest.json"


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require_int(name: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


# --------------------------------------------------------------------------- #
# Behaviour model tables
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _SegmentModel:
    """Distributions of the latent parameters of one customer segment."""

    leisure_rate_gamma: tuple[float, float]  # (shape, scale), trips per year
    international_beta: tuple[float, float]
    spend_log_mean: float
    p_book_flight_beta: tuple[float, float]
    p_book_hotel_beta: tuple[float, float]
    price_sensitivity_beta: tuple[float, float]
    age_weights: tuple[float, ...]


_SEGMENT_MODELS: Final[tuple[_SegmentModel, ...]] = (
    # periodic_business: few leisure trips on top of the cycle, loyal bookers, big spenders
    _SegmentModel((1.5, 0.5), (1, 4), 0.25, (18, 1.6), (6, 2.5), (1.5, 5), (0.02, 0.30, 0.38, 0.22, 0.08, 0.0)),
    # international_leisure
    _SegmentModel((2.5, 1.6), (3, 2), 0.10, (4, 3), (3, 3), (2, 3), (0.14, 0.32, 0.26, 0.14, 0.09, 0.05)),
    # domestic_leisure
    _SegmentModel((2.0, 2.0), (1, 11), 0.0, (4, 3), (3, 3), (2.2, 2.8), (0.15, 0.30, 0.24, 0.15, 0.10, 0.06)),
    # occasional
    _SegmentModel((1.5, 1.0), (1, 4), -0.10, (3, 3), (2.5, 3.5), (2.5, 2.5), (0.16, 0.26, 0.22, 0.16, 0.12, 0.08)),
)
_PERIODIC: Final = 0
_LEISURE_RATE_RANGE: Final = (0.2, 24.0)
_DOMESTIC_NIGHTS_MEAN: Final = 2.2
_INTERNATIONAL_EXTRA_NIGHTS_MEAN: Final = 4.0


def _discretised_gamma(shape: float, scale: float, low: int, high: int) -> np.ndarray:
    """Lead-time pmf over 0..MAX_LEAD_DAYS: a gamma density on [low, high]."""
    days = np.arange(MAX_LEAD_DAYS + 1, dtype=float)
    x = days + 0.5
    density = x ** (shape - 1) * np.exp(-x / scale)
    density[(days < low) | (days > high)] = 0.0
    return density / density.sum()


def _explicit_pmf(weights: Sequence[float]) -> np.ndarray:
    pmf = np.zeros(MAX_LEAD_DAYS + 1)
    pmf[: len(weights)] = weights
    return pmf / pmf.sum()


_LEAD_PMFS: Final[Mapping[str, np.ndarray]] = {
    "flight_domestic": _discretised_gamma(1.6, 9.0, 0, 60),
    "flight_international": _discretised_gamma(2.2, 14.0, 1, MAX_LEAD_DAYS),
    "flight_business": _explicit_pmf([0, 0.12, 0.22, 0.25, 0.18, 0.10, 0.08, 0.05]),
    "hotel_leisure": _discretised_gamma(1.3, 8.0, 0, 60),
    "hotel_business": _explicit_pmf([0.10, 0.15, 0.20, 0.20, 0.15, 0.10, 0.05, 0.05]),
    "datapack": _explicit_pmf([0.35, 0.30, 0.20, 0.15]),
}
"""Days between placing an order and the trip start, by kind of order."""


# --------------------------------------------------------------------------- #
# Internal tables
# --------------------------------------------------------------------------- #


@dataclass
class _Persons:
    """Latent per-person parameters (ground truth); arrays indexed by person."""

    province: np.ndarray
    city: np.ndarray  # index into geo.home_cities()
    age: np.ndarray
    opt_out: np.ndarray
    segment: np.ndarray
    leisure_rate: np.ndarray
    leisure_intl_share: np.ndarray
    cycle: np.ndarray  # 0 when not periodic
    jitter: np.ndarray
    origin: np.ndarray  # day index of nominal periodic trip k=0 (before the window)
    periodic_dest: np.ndarray  # -1 when not periodic
    favourite_dest: np.ndarray
    spend: np.ndarray
    price_sensitivity: np.ndarray
    pack_pref: np.ndarray
    p_flight: np.ndarray
    p_hotel: np.ndarray
    p_datapack: np.ndarray
    coupon_uplift: np.ndarray
    coupon_prob: np.ndarray
    active_from: np.ndarray  # day index; 0 = active since before the window
    churn_day: np.ndarray  # day index; no orders on/after it; > window when no churn
    phone: np.ndarray  # int64, 11 national digits
    email: list[str]  # canonical lower-case
    member: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.segment.size)

    @property
    def is_periodic(self) -> np.ndarray:
        return self.cycle > 0


@dataclass
class _Trips:
    """All trips (also those not booked with us), arrays indexed by trip."""

    person: np.ndarray
    day: np.ndarray
    depart_second: np.ndarray
    dest: np.ndarray
    international: np.ndarray
    nights: np.ndarray
    periodic: np.ndarray

    def take(self, mask: np.ndarray) -> "_Trips":
        return _Trips(**{f.name: getattr(self, f.name)[mask] for f in dataclasses.fields(self)})


@dataclass
class _Orders:
    """Orders of one line, arrays indexed by order."""

    person: np.ndarray
    day: np.ndarray
    second: np.ndarray
    amount: np.ndarray
    category: np.ndarray
    product: np.ndarray
    destination: np.ndarray
    coupon: np.ndarray

    def take(self, index: np.ndarray) -> "_Orders":
        return _Orders(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})


@dataclass
class _Customers:
    """Customer table of one line; ``person`` is ground truth, never written to the silo."""

    person: np.ndarray
    customer_id: list[str]
    phone: list[str]
    email: list[str]
    signup_day: np.ndarray


_HOME = geo.home_cities()
_HOME_PROVINCE_OF_CITY: Final = np.array([geo.PROVINCES.index(p) for p, _ in _HOME])
_DEST_INDEX: Final = geo.destination_index()
_DEST_KEY: Final = np.array([d.key for d in geo.DESTINATIONS], dtype=object)
_DEST_IS_INTL: Final = np.array([d.kind == "international" for d in geo.DESTINATIONS])
_DEST_DAY_TRIP: Final = np.array([d.business_day_trip_share for d in geo.DESTINATIONS])


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAMS[stream]]))


def _choice_by_group(
    rng: np.random.Generator, group: np.ndarray, weights_of: Callable[[int], np.ndarray], n_groups: int
) -> np.ndarray:
    """Draw one index per element from a categorical distribution chosen by its group."""
    out = np.zeros(group.size, dtype=np.int64)
    for g in range(n_groups):
        mask = group == g
        if mask.any():
            w = weights_of(g)
            out[mask] = rng.choice(w.size, size=int(mask.sum()), p=w / w.sum())
    return out


# --------------------------------------------------------------------------- #
# People
# --------------------------------------------------------------------------- #


def _sample_persons(cfg: PlatformConfig) -> _Persons:
    """Draw every person's home, demographics and latent behaviour."""
    rng = _rng(cfg.seed, "persons")
    n = cfg.n_customers
    n_days = cfg.n_days

    segment = rng.choice(len(SEGMENTS), size=n, p=np.array(cfg.segment_shares) / sum(cfg.segment_shares))
    province = rng.choice(len(geo.PROVINCES), size=n, p=_normalised([p.weight for p in geo.PROVINCES]))
    city = _choice_by_group(rng, province, _city_weights, len(geo.PROVINCES))
    age = _choice_by_group(rng, segment, lambda s: np.array(_SEGMENT_MODELS[s].age_weights), len(SEGMENTS))

    leisure_rate = np.empty(n)
    intl_share = np.empty(n)
    spend_mean = np.empty(n)
    p_flight = np.empty(n)
    p_hotel = np.empty(n)
    price_sens = np.empty(n)
    for s, model in enumerate(_SEGMENT_MODELS):
        m = segment == s
        k = int(m.sum())
        leisure_rate[m] = rng.gamma(*model.leisure_rate_gamma, size=k)
        intl_share[m] = rng.beta(*model.international_beta, size=k)
        spend_mean[m] = model.spend_log_mean
        p_flight[m] = rng.beta(*model.p_book_flight_beta, size=k)
        p_hotel[m] = rng.beta(*model.p_book_hotel_beta, size=k)
        price_sens[m] = rng.beta(*model.price_sensitivity_beta, size=k)
    leisure_rate = np.clip(leisure_rate, *_LEISURE_RATE_RANGE)
    spend = np.clip(np.exp(spend_mean - 0.3 * (price_sens - 0.4) + 0.35 * rng.standard_normal(n)), 0.5, 3.0)

    # Many of our pack customers are loyal; the rest usually buy their roaming elsewhere.
    loyal = rng.random(n) < 0.6
    p_datapack = np.where(loyal, rng.beta(8, 2, size=n), rng.beta(1.5, 4, size=n))

    cycle, jitter, origin, periodic_dest = _sample_periodic(rng, segment == _PERIODIC, city)
    favourite = _choice_by_group(rng, province, _intl_weights, len(geo.PROVINCES))
    regional_pack = np.array([geo.PACK_KINDS.index(p.preferred_pack_kind) for p in geo.PROVINCES])[province]
    pack_pref = np.where(rng.random(n) < 0.7, regional_pack, rng.integers(0, len(geo.PACK_KINDS), size=n))

    uplift = _AGE_COUPON_BASE[age] + 0.12 * price_sens + 0.02 * rng.standard_normal(n)
    uplift = np.clip(uplift - 0.03 * (segment == _PERIODIC), 0.0, 0.25)
    coupon_prob = np.clip(cfg.coupon_base_rate + 0.8 * uplift, 0.0, 1.0)

    opt_out = rng.random(n) < cfg.opt_out_rate
    active_from, churn_day = _sample_activity(rng, cfg, n, n_days)

    return _Persons(
        province=province, city=city, age=age, opt_out=opt_out, segment=segment,
        leisure_rate=leisure_rate, leisure_intl_share=intl_share, cycle=cycle, jitter=jitter,
        origin=origin, periodic_dest=periodic_dest, favourite_dest=favourite, spend=spend,
        price_sensitivity=price_sens, pack_pref=pack_pref, p_flight=p_flight, p_hotel=p_hotel,
        p_datapack=p_datapack, coupon_uplift=uplift, coupon_prob=coupon_prob,
        active_from=active_from, churn_day=churn_day,
        phone=np.zeros(n, dtype=np.int64), email=[],
    )


def _normalised(weights: Sequence[float] | np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    return w / w.sum()


def _city_weights(province: int) -> np.ndarray:
    return np.array([c.weight if p_idx == province else 0.0
                     for p_idx, (_, c) in zip(_HOME_PROVINCE_OF_CITY, _HOME)])


def _intl_weights(province: int) -> np.ndarray:
    w = np.zeros(len(geo.DESTINATIONS))
    for code, weight in geo.PROVINCES[province].international_destinations:
        w[_DEST_INDEX[code]] = weight
    return w


def _domestic_weights(province: int) -> np.ndarray:
    """Domestic leisure destinations: popular cities outside one's own province."""
    own = geo.PROVINCES[province].name
    return np.array([d.popularity if d.kind == "domestic" and d.province != own else 0.0
                     for d in geo.DESTINATIONS])


def _business_weights(city: int) -> np.ndarray:
    w = np.zeros(len(geo.DESTINATIONS))
    for key, weight in geo.BUSINESS_ROUTES[_HOME[city][1].name]:
        w[_DEST_INDEX[key]] = weight
    return w


def _sample_periodic(
    rng: np.random.Generator, periodic: np.ndarray, city: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cycle length, jitter, schedule origin and route of periodic travellers."""
    n = periodic.size
    option = rng.choice(len(_PERIODIC_CYCLES), size=n, p=_normalised([c[2] for c in _PERIODIC_CYCLES]))
    cycle = np.where(periodic, np.array([c[0] for c in _PERIODIC_CYCLES])[option], 0)
    jitter = np.where(periodic, np.array([c[1] for c in _PERIODIC_CYCLES])[option], 0)
    phase = (rng.random(n) * np.maximum(cycle, 1)).astype(np.int64)
    origin = phase - cycle  # nominal trip k sits on day origin + k * cycle
    route = _choice_by_group(rng, city, _business_weights, len(_HOME))
    periodic_dest = np.where(periodic, route, -1)
    return cycle, jitter, origin, periodic_dest


def _sample_activity(
    rng: np.random.Generator, cfg: PlatformConfig, n: int, n_days: int
) -> tuple[np.ndarray, np.ndarray]:
    """When each person starts and stops ordering from us (day indices)."""
    active_from = np.zeros(n, dtype=np.int64)
    late = rng.random(n) < cfg.late_join_rate
    late_high = n_days - 60
    if late_high > 30:
        active_from[late] = rng.integers(30, late_high, size=int(late.sum()))
    churn_day = np.full(n, n_days + 10_000, dtype=np.int64)
    churns = rng.random(n) < cfg.churn_rate
    low = active_from + 30
    can_churn = churns & (low < n_days)
    churn_day[can_churn] = low[can_churn] + (
        rng.random(int(can_churn.sum())) * (n_days - low[can_churn])
    ).astype(np.int64)
    return active_from, churn_day


def _assign_identity(cfg: PlatformConfig, persons: _Persons) -> None:
    """Unique mainland mobile numbers and e-mail addresses."""
    rng = _rng(cfg.seed, "identity")
    n = persons.n

    def draw_phone(k: int) -> np.ndarray:
        prefix = _PHONE_PREFIXES[rng.integers(0, _PHONE_PREFIXES.size, size=k)]
        return prefix.astype(np.int64) * 10**8 + rng.integers(0, 10**8, size=k)

    persons.phone = _unique_draws(draw_phone, n)
    persons.email = _make_emails(rng, n, persons.age)


def _unique_draws(draw: Callable[[int], np.ndarray], n: int) -> np.ndarray:
    """Draw n values, redrawing later duplicates until all are distinct."""
    values = draw(n)
    while True:
        _, first = np.unique(values, return_index=True)
        duplicate = np.ones(n, dtype=bool)
        duplicate[first] = False
        if not duplicate.any():
            return values
        values[duplicate] = draw(int(duplicate.sum()))


def _make_emails(rng: np.random.Generator, n: int, age: np.ndarray) -> list[str]:
    """Plausible Chinese consumer e-mails (pinyin names, QQ numbers), all distinct."""
    style = rng.choice(4, size=n, p=[0.35, 0.25, 0.15, 0.25])
    sur = rng.integers(0, len(_SURNAMES), size=n)
    given = rng.integers(0, len(_GIVEN), size=n)
    number = rng.integers(1, 1000, size=n)
    birth_year = 2025 - (np.array([21, 29, 39, 49, 59, 70])[age] + rng.integers(-3, 4, size=n))
    qq = rng.integers(10**7, 3 * 10**9, size=n)
    domain = rng.choice(len(_EMAIL_DOMAINS), size=n, p=_EMAIL_DOMAIN_WEIGHTS / _EMAIL_DOMAIN_WEIGHTS.sum())
    seen: set[str] = set()
    emails: list[str] = []
    for i in range(n):
        s, g = _SURNAMES[sur[i]], _GIVEN[given[i]]
        if style[i] == 0:
            local = f"{s}.{g}{number[i]}"
        elif style[i] == 1:
            local = f"{g}{s}{birth_year[i]}"
        elif style[i] == 2:
            local = f"{s}{g}_{number[i]:03d}"
        else:
            local = str(qq[i])
        dom = "qq.com" if style[i] == 3 else _EMAIL_DOMAINS[domain[i]]
        email = f"{local}@{dom}"
        suffix = 2
        while email in seen:
            email = f"{local}{suffix}@{dom}"
            suffix += 1
        seen.add(email)
        emails.append(email)
    return emails


def _assign_membership(cfg: PlatformConfig, persons: _Persons) -> None:
    """Which lines each person has an account on (at least one enabled line)."""
    rng = _rng(cfg.seed, "membership")
    n = persons.n
    draws = {line: rng.random(n) for line in KNOWN_LINES}
    fallback = rng.random(n)
    intl = _overall_international_share(persons)
    rate = {
        # Periodic business travellers are flights customers more often than others.
        "flights": np.where(persons.is_periodic, min(1.0, 1.3 * cfg.flights_customer_rate), cfg.flights_customer_rate),
        "hotels": np.full(n, cfg.hotels_customer_rate),
        "datapacks": np.clip(
            cfg.datapacks_customer_rate * (0.25 + 0.75 * intl / max(intl.mean(), 1e-9)), 0.0, 0.95
        ),
    }
    member = {line: (draws[line] < rate[line]) & (line in cfg.lines) for line in KNOWN_LINES}
    # Everybody generated is somebody's customer: give account-less people one enabled line.
    none = ~np.logical_or.reduce([member[line] for line in cfg.lines])
    base = _normalised([max(float(rate[line].mean()), 1e-3) for line in cfg.lines])
    pick = np.searchsorted(np.cumsum(base), fallback, side="right").clip(max=len(cfg.lines) - 1)
    for j, line in enumerate(cfg.lines):
        member[line] |= none & (pick == j)
    persons.member = member


def _periodic_rate(persons: _Persons) -> np.ndarray:
    return np.where(persons.is_periodic, 365.0 / np.maximum(persons.cycle, 1), 0.0)


def _overall_international_share(persons: _Persons) -> np.ndarray:
    periodic_rate = _periodic_rate(persons)
    periodic_intl = persons.is_periodic & _DEST_IS_INTL[np.maximum(persons.periodic_dest, 0)]
    intl_rate = persons.leisure_rate * persons.leisure_intl_share + periodic_rate * periodic_intl
    return intl_rate / (persons.leisure_rate + periodic_rate)


# --------------------------------------------------------------------------- #
# Trips
# --------------------------------------------------------------------------- #


def _season_weights(cfg: PlatformConfig, days: np.ndarray) -> np.ndarray:
    """Relative travel intensity of each day (yearly mean 1)."""
    if not cfg.seasonality:
        return np.ones(days.size)
    dates = np.datetime64(cfg.start, "D") + days
    month = dates.astype("datetime64[M]").astype(np.int64) % 12
    mean = float((_MONTH_FACTORS * _DAYS_IN_MONTH).sum() / _DAYS_IN_MONTH.sum())
    return _MONTH_FACTORS[month] / mean


def _sample_trips(cfg: PlatformConfig, persons: _Persons) -> _Trips:
    """All trips whose orders could fall in the window (trip days 0 .. window + max lead)."""
    rng = _rng(cfg.seed, "trips")
    last_day = cfg.n_days - 1 + MAX_LEAD_DAYS
    leisure_person, leisure_day = _leisure_trip_days(cfg, rng, persons, last_day)
    periodic_person, periodic_day = _periodic_trip_days(rng, persons, last_day)

    person = np.concatenate([periodic_person, leisure_person])
    day = np.concatenate([periodic_day, leisure_day])
    periodic = np.concatenate([np.ones(periodic_person.size, bool), np.zeros(leisure_person.size, bool)])
    n = person.size

    international = np.where(periodic, False, rng.random(n) < persons.leisure_intl_share[person])
    intl_dest = np.where(
        rng.random(n) < 0.45,
        persons.favourite_dest[person],
        _choice_by_group(rng, persons.province[person], _intl_weights, len(geo.PROVINCES)),
    )
    dom_dest = _choice_by_group(rng, persons.province[person], _domestic_weights, len(geo.PROVINCES))
    dest = np.where(periodic, persons.periodic_dest[person], np.where(international, intl_dest, dom_dest))
    international = _DEST_IS_INTL[dest]

    leisure_nights = np.where(
        international,
        1 + rng.poisson(_INTERNATIONAL_EXTRA_NIGHTS_MEAN, size=n).clip(max=20),
        rng.poisson(_DOMESTIC_NIGHTS_MEAN, size=n).clip(max=14),
    )
    business_nights = np.where(rng.random(n) < _DEST_DAY_TRIP[dest], 0, rng.integers(1, 4, size=n))
    nights = np.where(periodic, business_nights, leisure_nights)
    depart_second = rng.integers(6 * 3600, 23 * 3600, size=n)
    return _Trips(person=person, day=day, depart_second=depart_second, dest=dest,
                  international=international, nights=nights, periodic=periodic)


def _leisure_trip_days(
    cfg: PlatformConfig, rng: np.random.Generator, persons: _Persons, last_day: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seasonal Poisson process per person: counts, then days by inverse CDF."""
    weights = _season_weights(cfg, np.arange(last_day + 1))
    expected = persons.leisure_rate * weights.sum() / 365.0
    counts = rng.poisson(expected)
    person = np.repeat(np.arange(persons.n), counts)
    cdf = np.cumsum(weights) / weights.sum()
    day = np.searchsorted(cdf, rng.random(person.size), side="right").clip(max=last_day)
    return person, day.astype(np.int64)


def _periodic_trip_days(
    rng: np.random.Generator, persons: _Persons, last_day: int
) -> tuple[np.ndarray, np.ndarray]:
    """Nominal schedule origin + k*cycle, each trip jittered independently."""
    idx = np.flatnonzero(persons.is_periodic)
    cycle, origin, jitter = persons.cycle[idx], persons.origin[idx], persons.jitter[idx]
    counts = (last_day + jitter.max(initial=0) - origin) // cycle + 1
    person = np.repeat(idx, counts)
    k = np.arange(person.size) - np.repeat(np.cumsum(counts) - counts, counts)
    j = persons.jitter[person]
    offset = (rng.random(person.size) * (2 * j + 1)).astype(np.int64) - j  # uniform on -j..j
    day = persons.origin[person] + k * persons.cycle[person] + offset
    keep = (day >= 0) & (day <= last_day)
    return person[keep], day[keep]


# --------------------------------------------------------------------------- #
# Orders
# --------------------------------------------------------------------------- #


def _sample_leads(rng: np.random.Generator, kind: np.ndarray, kinds: Sequence[str]) -> np.ndarray:
    """Lead time (days before the trip) per order, from the pmf of its kind."""
    return _choice_by_group(rng, kind, lambda k: _LEAD_PMFS[kinds[k]], len(kinds))


def _order_seconds(rng: np.random.Generator, lead: np.ndarray, depart_second: np.ndarray) -> np.ndarray:
    """Time of day of each order; same-day orders happen before departure."""
    n = lead.size
    hour = rng.choice(24, size=n, p=_normalised(_ORDER_HOUR_WEIGHTS))
    second = hour * 3600 + rng.integers(0, 3600, size=n)
    same_day = (rng.random(n) * depart_second).astype(np.int64)
    return np.where(lead == 0, same_day, second)


def _uniform_in(rng: np.random.Generator, ranges: np.ndarray) -> np.ndarray:
    """One uniform draw per row of an (n, 2) array of [low, high] ranges."""
    return ranges[:, 0] + rng.random(ranges.shape[0]) * (ranges[:, 1] - ranges[:, 0])


def _finish_orders(
    rng: np.random.Generator,
    cfg: PlatformConfig,
    persons: _Persons,
    trips: _Trips,
    lead: np.ndarray,
    amount_before_coupon: np.ndarray,
    category: np.ndarray,
    product: np.ndarray,
    amount_bounds: tuple[float, float] = (1.0, MAX_AMOUNT),
) -> _Orders:
    """Apply coupons, place orders in time and keep those in the window and active period."""
    coupon = rng.random(trips.person.size) < persons.coupon_prob[trips.person]
    discount = np.where(coupon, 1.0 - rng.uniform(0.05, 0.15, size=coupon.size), 1.0)
    amount = np.round(np.clip(amount_before_coupon * discount, *amount_bounds), 2)
    day = trips.day - lead
    orders = _Orders(
        person=trips.person, day=day, second=_order_seconds(rng, lead, trips.depart_second),
        amount=amount, category=category, product=product,
        destination=_DEST_KEY[trips.dest], coupon=coupon,
    )
    p = orders.person
    keep = (day >= 0) & (day < cfg.n_days) & (day >= persons.active_from[p]) & (day < persons.churn_day[p])
    kept = orders.take(keep)
    return kept.take(np.lexsort((kept.person, kept.second, kept.day)))


def _booked(rng: np.random.Generator, persons: _Persons, trips: _Trips, line: str, p_book: np.ndarray,
            eligible: np.ndarray) -> _Trips:
    """Trips this line gets an order for: customer of the line, eligible, books with us."""
    chosen = persons.member[line][trips.person] & eligible & (rng.random(trips.person.size) < p_book[trips.person])
    return trips.take(chosen)


def _flight_orders(cfg: PlatformConfig, persons: _Persons, trips: _Trips) -> _Orders:
    rng = _rng(cfg.seed, "flights")
    t = _booked(rng, persons, trips, "flights", persons.p_flight, np.ones(trips.person.size, bool))
    kinds = ("flight_domestic", "flight_international", "flight_business")
    lead = _sample_leads(rng, np.where(t.periodic, 2, t.international.astype(np.int64)), kinds)
    fare = _uniform_in(rng, np.array([d.flight_price for d in geo.DESTINATIONS], float)[t.dest])
    late_premium = 1.0 + 0.25 * np.exp(-lead / 5.0)
    amount = fare * late_premium * persons.spend[t.person]
    category = np.where(t.international, "flight_international", "flight_domestic").astype(object)
    routes = np.array([[f"{c.airport}-{d.airport}" for d in geo.DESTINATIONS] for _, c in _HOME], dtype=object)
    product = routes[persons.city[t.person], t.dest]
    return _finish_orders(rng, cfg, persons, t, lead, amount, category, product)


def _hotel_orders(cfg: PlatformConfig, persons: _Persons, trips: _Trips) -> _Orders:
    rng = _rng(cfg.seed, "hotels")
    t = _booked(rng, persons, trips, "hotels", persons.p_hotel, trips.nights > 0)
    lead = _sample_leads(rng, t.periodic.astype(np.int64), ("hotel_leisure", "hotel_business"))
    nightly = _uniform_in(rng, np.array([d.hotel_night_price for d in geo.DESTINATIONS], float)[t.dest])
    amount = nightly * t.nights * persons.spend[t.person]
    category = np.where(t.international, "hotel_international", "hotel_domestic").astype(object)
    product = np.array([f"hotel:{d.city}" for d in geo.DESTINATIONS], dtype=object)[t.dest]
    return _finish_orders(rng, cfg, persons, t, lead, amount, category, product)


def _datapack_orders(cfg: PlatformConfig, persons: _Persons, trips: _Trips) -> _Orders:
    rng = _rng(cfg.seed, "datapacks")
    t = _booked(rng, persons, trips, "datapacks", persons.p_datapack, trips.international)
    lead = _sample_leads(rng, np.zeros(t.person.size, np.int64), ("datapack",))
    n_kinds = len(geo.PACK_KINDS)
    other = (persons.pack_pref[t.person] + rng.integers(1, n_kinds, size=t.person.size)) % n_kinds
    kind = np.where(rng.random(t.person.size) < 0.8, persons.pack_pref[t.person], other)
    base = np.array([p.base_price for p in geo.PACKS])[kind]
    per_day = np.array([p.per_day for p in geo.PACKS])[kind]
    price = np.where(per_day, base * np.minimum(t.nights + 1, 10), base)
    factor = np.array([d.pack_price_factor for d in geo.DESTINATIONS])[t.dest]
    amount = price * factor * persons.spend[t.person] ** 0.3 * rng.uniform(0.95, 1.05, size=t.person.size)
    category = np.full(t.person.size, "datapack", dtype=object)
    products = np.array([[f"datapack:{d.key}:{k}" for k in geo.PACK_KINDS] for d in geo.DESTINATIONS], dtype=object)
    return _finish_orders(rng, cfg, persons, t, lead, amount, category, products[t.dest, kind],
                          amount_bounds=(25.0, 300.0))


_ORDER_BUILDERS: Final[Mapping[str, Callable[[PlatformConfig, _Persons, _Trips], _Orders]]] = {
    "flights": _flight_orders,
    "hotels": _hotel_orders,
    "datapacks": _datapack_orders,
}


# --------------------------------------------------------------------------- #
# Customer tables (raw identifiers per line)
# --------------------------------------------------------------------------- #


def _phone_str(digits: int, style: str) -> str:
    s = f"{digits:011d}"
    if style == "flights":
        return f"+86 {s[:3]} {s[3:7]} {s[7:]}"
    if style == "hotels":
        return f"{s[:3]}-{s[3:7]}-{s[7:]}"
    return s


def _noisy_email(email: str, variant: int) -> str:
    """One of the ways people's e-mails get mangled by forms and imports."""
    if variant == 0:
        return f" {email}"
    if variant == 1:
        return f"{email} "
    if variant == 2:
        return email.upper()
    local, _, domain = email.partition("@")
    return f"{local[:1].upper()}{local[1:]}@{domain.upper()}"


def _signup_days(
    rng: np.random.Generator, cfg: PlatformConfig, persons: _Persons, person: np.ndarray, orders: _Orders
) -> np.ndarray:
    """Sign-up day per customer: on or before the first order, possibly before the window."""
    n_days = cfg.n_days
    first = np.full(persons.n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, orders.person, orders.day)
    first = first[person]
    has_order = first < n_days
    active_from = persons.active_from[person]
    late = active_from > 0
    last_possible = np.minimum(persons.churn_day[person], n_days) - 1
    long_lag = np.floor(rng.exponential(365.0, size=person.size)).astype(np.int64)
    short_lag = np.floor(rng.exponential(7.0, size=person.size)).astype(np.int64)
    with_order = np.where(
        late, first - np.minimum(short_lag, np.maximum(first - active_from, 0)), np.maximum(first - long_lag, -3650)
    )
    low = np.where(late, active_from, -1500)
    u = rng.random(person.size)
    without_order = low + (u * np.maximum(last_possible - low + 1, 1)).astype(np.int64)
    return np.where(has_order, with_order, without_order)


def _build_customers(cfg: PlatformConfig, persons: _Persons, line: str, orders: _Orders) -> _Customers:
    """The line's customer table keyed by its own raw identifier, sorted by key."""
    rng = _rng(cfg.seed, f"customers:{line}")
    person = np.flatnonzero(persons.member[line])
    k = person.size
    phones = persons.phone[person].tolist()
    emails = [persons.email[i] for i in person]
    noise = rng.random(k)
    variant = rng.integers(0, 4, size=k)
    if line == "flights":
        ids = _unique_draws(lambda m: rng.integers(0, 10**8, size=m), k)
        customer_id = [f"FL{v:08d}" for v in ids.tolist()]
        phone = [_phone_str(p, "flights") for p in phones]
        email = [_noisy_email(e, 2 + v % 2) if x < cfg.email_noise_rate / 2 else e
                 for e, v, x in zip(emails, variant.tolist(), noise.tolist())]
    elif line == "hotels":
        customer_id = emails
        missing = rng.random(k) < cfg.hotel_phone_missing_rate
        phone = ["" if m else _phone_str(p, "hotels") for p, m in zip(phones, missing.tolist())]
        email = [_noisy_email(e, v) if x < cfg.email_noise_rate else e
                 for e, v, x in zip(emails, variant.tolist(), noise.tolist())]
    else:
        customer_id = [f"86{p:011d}" for p in phones]
        phone = [_phone_str(p, "datapacks") for p in phones]
        email = [""] * k
    signup = _signup_days(rng, cfg, persons, person, orders)
    order = sorted(range(k), key=customer_id.__getitem__)
    return _Customers(
        person=person[order],
        customer_id=[customer_id[i] for i in order],
        phone=[phone[i] for i in order],
        email=[email[i] for i in order],
        signup_day=signup[order],
    )


# --------------------------------------------------------------------------- #
# True propensities
# --------------------------------------------------------------------------- #


def horizon_exposure(cfg: PlatformConfig, lead_kind: str, h0: int | None = None,
                     days: int = PROPENSITY_HORIZON_DAYS) -> float:
    """Expected orders in days ``[h0, h0 + days)`` per unit of yearly trip rate, for one lead pmf.

    An order lands on day d of the window when its trip is on d + lead, so the
    trip intensity (season weights) is averaged over the window shifted by the
    lead. ``h0`` defaults to the day after the generated data. The campaign
    simulator uses this too, with its own window: both must agree.
    """
    h0 = cfg.n_days if h0 is None else h0
    pmf = _LEAD_PMFS[lead_kind]
    weights = _season_weights(cfg, np.arange(h0, h0 + days + MAX_LEAD_DAYS))
    window_sums = np.convolve(weights, np.ones(days), mode="valid")[: MAX_LEAD_DAYS + 1]
    return float((pmf * window_sums).sum() / 365.0)


def periodic_no_order(origin: np.ndarray, cycle: int, jitter: int, prob: np.ndarray,
                      lead_pmf: np.ndarray, h0: int, h1: int) -> np.ndarray:
    """P(no order on days ``[h0, h1]``) for people on one periodic schedule.

    Trip k is on origin + k*cycle + J (J uniform on +-jitter), its order a lead
    L (pmf ``lead_pmf``) earlier, each trip booked independently with
    probability ``prob`` (per person): a product over the trips near the
    window of 1 - prob * P(order day in window). Shared by the generator's true
    propensities and the campaign simulator.
    """
    # D = J - L: offset of the order day from the nominal trip day, on low..jitter.
    pmf = np.convolve(np.full(2 * jitter + 1, 1.0 / (2 * jitter + 1)), lead_pmf[::-1])
    low = -jitter - MAX_LEAD_DAYS
    cdf = np.concatenate([[0.0], np.cumsum(pmf)])  # cdf[i] = P(D < low + i)

    def below(x: np.ndarray) -> np.ndarray:
        return cdf[np.clip(x - low, 0, pmf.size)]  # P(D < x)

    k0 = (h0 - origin - MAX_LEAD_DAYS - jitter) // cycle - 1
    no_order = np.ones(len(origin))
    for m in range((h1 - h0 + 1 + 2 * MAX_LEAD_DAYS + 2 * jitter) // cycle + 4):
        nominal = origin + (k0 + m) * cycle
        no_order *= 1.0 - prob * (below(h1 + 1 - nominal) - below(h0 - nominal))
    return no_order


def _leisure_intensity(cfg: PlatformConfig, persons: _Persons) -> dict[str, np.ndarray]:
    """Expected orders per line in the horizon from the Poisson (leisure) trips."""
    s = persons.leisure_intl_share
    rate = persons.leisure_rate
    dom_has_night = 1.0 - math.exp(-_DOMESTIC_NIGHTS_MEAN)
    return {
        "flights": rate * persons.p_flight * (
            (1 - s) * horizon_exposure(cfg, "flight_domestic") + s * horizon_exposure(cfg, "flight_international")
        ),
        "hotels": rate * persons.p_hotel * ((1 - s) * dom_has_night + s) * horizon_exposure(cfg, "hotel_leisure"),
        "datapacks": rate * persons.p_datapack * s * horizon_exposure(cfg, "datapack"),
    }


def _periodic_no_order(cfg: PlatformConfig, persons: _Persons, line: str) -> np.ndarray:
    """P(no order on the line in the horizon from the periodic schedule), per person."""
    lead_kind = {"flights": "flight_business", "hotels": "hotel_business", "datapacks": "datapack"}[line]
    dest = np.maximum(persons.periodic_dest, 0)
    p_book = {"flights": persons.p_flight, "hotels": persons.p_hotel, "datapacks": persons.p_datapack}[line]
    eligible = {
        "flights": np.ones(persons.n),
        "hotels": 1.0 - _DEST_DAY_TRIP[dest],
        "datapacks": _DEST_IS_INTL[dest].astype(float),
    }[line]
    h0, h1 = cfg.n_days, cfg.n_days + PROPENSITY_HORIZON_DAYS - 1
    no_order = np.ones(persons.n)
    for cycle, jitter, _ in _PERIODIC_CYCLES:
        mask = persons.cycle == cycle
        if mask.any():
            no_order[mask] = periodic_no_order(persons.origin[mask], cycle, jitter,
                                               p_book[mask] * eligible[mask],
                                               _LEAD_PMFS[lead_kind], h0, h1)
    return no_order


def _true_propensities(cfg: PlatformConfig, persons: _Persons) -> dict[str, np.ndarray]:
    """Model probability of >= 1 order per line in the 30 days after the window."""
    leisure = _leisure_intensity(cfg, persons)
    still_active = persons.churn_day >= cfg.n_days
    out = {}
    for line in KNOWN_LINES:
        p_none = np.exp(-leisure[line]) * _periodic_no_order(cfg, persons, line)
        out[line] = np.where(persons.member[line] & still_active, 1.0 - p_none, 0.0)
    return out


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def _write_csv(path: Path, header: Sequence[str], columns: Sequence[Sequence[str]]) -> int:
    """Write columns of strings as a CSV with LF line ends; returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n_rows = len(columns[0]) if columns else 0
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(zip(*columns))
    return n_rows


def _dates(cfg: PlatformConfig, days: np.ndarray) -> list[str]:
    return np.datetime_as_string(np.datetime64(cfg.start, "D") + days).tolist()


def _bools(values: np.ndarray) -> list[str]:
    return np.where(values, "true", "false").tolist()


def _fixed(values: np.ndarray, digits: int) -> list[str]:
    return [f"{v:.{digits}f}" for v in values.tolist()]


def _write_silo(cfg: PlatformConfig, root: Path, line: str, persons: _Persons,
                customers: _Customers, orders: _Orders) -> tuple[int, int]:
    """customers.csv and orders.csv of one line: raw line data, no ground truth."""
    silo = root / "silos" / line
    p = customers.person
    province = [geo.PROVINCES[i].name for i in persons.province[p].tolist()]
    city = [_HOME[i][1].name for i in persons.city[p].tolist()]
    age = [geo.AGE_BANDS[i] for i in persons.age[p].tolist()]
    n_customers = _write_csv(silo / "customers.csv", CUSTOMER_COLUMNS, [
        customers.customer_id, customers.phone, customers.email, province, city, age,
        _dates(cfg, customers.signup_day), _bools(persons.opt_out[p]),
    ])
    key_of_person = np.empty(persons.n, dtype=object)
    key_of_person[customers.person] = customers.customer_id
    width = max(9, len(str(orders.person.size)))
    order_id = [f"{ORDER_ID_PREFIX[line]}{i:0{width}d}" for i in range(1, orders.person.size + 1)]
    seconds = orders.day.astype(np.int64) * 86_400 + orders.second
    order_time = np.datetime_as_string(np.datetime64(cfg.start, "s") + seconds, unit="s").tolist()
    n_orders = _write_csv(silo / "orders.csv", ORDER_COLUMNS, [
        order_id, key_of_person[orders.person].tolist(), order_time, _fixed(orders.amount, 2),
        orders.category.tolist(), orders.product.tolist(), orders.destination.tolist(), _bools(orders.coupon),
    ])
    return n_customers, n_orders


def _blank_unless(mask: np.ndarray, values: Sequence[str]) -> list[str]:
    """Values where mask is true, empty strings elsewhere (CSV "not applicable")."""
    return [v if m else "" for v, m in zip(values, mask.tolist())]


def _person_ids(n: int) -> list[str]:
    width = max(7, len(str(n)))
    return [f"P{i:0{width}d}" for i in range(1, n + 1)]


def _write_persons(cfg: PlatformConfig, path: Path, persons: _Persons,
                   propensity: Mapping[str, np.ndarray]) -> int:
    """Ground truth: identity, home, latent parameters and true propensities."""
    periodic = persons.is_periodic
    periodic_rate = _periodic_rate(persons)
    anchor = persons.origin + persons.cycle
    columns: dict[str, list[str]] = {
        "person_id": _person_ids(persons.n),
        "phone": [f"+86{p:011d}" for p in persons.phone.tolist()],
        "email": persons.email,
        "province": [geo.PROVINCES[i].name for i in persons.province.tolist()],
        "city": [_HOME[i][1].name for i in persons.city.tolist()],
        "age_band": [geo.AGE_BANDS[i] for i in persons.age.tolist()],
        "marketing_opt_out": _bools(persons.opt_out),
        "segment": [SEGMENTS[i] for i in persons.segment.tolist()],
        "trips_per_year": _fixed(persons.leisure_rate + periodic_rate, 4),
        "leisure_trips_per_year": _fixed(persons.leisure_rate, 4),
        "international_share": _fixed(_overall_international_share(persons), 4),
        "leisure_international_share": _fixed(persons.leisure_intl_share, 4),
        "cycle_days": _blank_unless(periodic, [str(c) for c in persons.cycle.tolist()]),
        "cycle_jitter_days": _blank_unless(periodic, [str(j) for j in persons.jitter.tolist()]),
        "cycle_anchor_date": _blank_unless(periodic, _dates(cfg, anchor)),
        "periodic_destination": _blank_unless(periodic, _DEST_KEY[np.maximum(persons.periodic_dest, 0)].tolist()),
        "favourite_destination": _DEST_KEY[persons.favourite_dest].tolist(),
        "spend_multiplier": _fixed(persons.spend, 4),
        "price_sensitivity": _fixed(persons.price_sensitivity, 4),
        "preferred_pack_kind": [geo.PACK_KINDS[i] for i in persons.pack_pref.tolist()],
        "p_book_flight": _fixed(persons.p_flight, 4),
        "p_book_hotel": _fixed(persons.p_hotel, 4),
        "p_buy_datapack": _fixed(persons.p_datapack, 4),
        "coupon_uplift": _fixed(persons.coupon_uplift, 4),
        "coupon_use_prob": _fixed(persons.coupon_prob, 4),
        "active_from": _blank_unless(persons.active_from > 0, _dates(cfg, persons.active_from)),
        "churn_date": _blank_unless(persons.churn_day < cfg.n_days,
                                   _dates(cfg, np.minimum(persons.churn_day, cfg.n_days))),
    }
    for line in KNOWN_LINES:
        columns[f"customer_{line}"] = _bools(persons.member[line])
    for line in KNOWN_LINES:
        columns[f"propensity_{line}_30d"] = _fixed(propensity[line], 6)
    return _write_csv(path, list(columns), list(columns.values()))


def _write_accounts(path: Path, persons: _Persons, customers: Mapping[str, _Customers]) -> int:
    person_id = np.array(_person_ids(persons.n), dtype=object)
    line_col: list[str] = []
    key_col: list[str] = []
    pid_col: list[str] = []
    for line, table in customers.items():
        line_col += [line] * len(table.customer_id)
        key_col += table.customer_id
        pid_col += person_id[table.person].tolist()
    return _write_csv(path, ACCOUNT_COLUMNS, [line_col, key_col, pid_col])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- #
# Atomic directory install
# --------------------------------------------------------------------------- #


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if _is_nonempty_dir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True to replace it)")


def _install(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished temporary directory into place (replacing old output if allowed)."""
    _check_target(out_dir, overwrite)
    if _is_nonempty_dir(out_dir):
        old = out_dir.with_name(f".{out_dir.name}.old-{secrets.token_hex(4)}")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)  # an empty existing directory is replaced atomically


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #


def generate_platform(
    config: PlatformConfig,
    out_dir: Path,
    progress: Callable[[str], None] | None = None,
    *,
    overwrite: bool = False,
) -> PlatformSummary:
    """Generate a platform directory for ``config`` at ``out_dir``.

    The directory is built in a temporary sibling and renamed into place at the
    end, so readers never see a half-written platform.  A non-empty ``out_dir``
    raises :class:`FileExistsError` unless ``overwrite`` is true.  The output is
    a pure function of ``config`` (byte-identical files for equal configs).
    """
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    say = progress or (lambda _msg: None)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        summary = _generate_into(config, tmp, say)
        say("installing")
        _install(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say("done")
    return dataclasses.replace(summary, out_dir=out_dir)


def _generate_into(cfg: PlatformConfig, root: Path, say: Callable[[str], None]) -> PlatformSummary:
    say("persons")
    persons = _sample_persons(cfg)
    _assign_identity(cfg, persons)
    _assign_membership(cfg, persons)
    say("trips")
    trips = _sample_trips(cfg, persons)

    rows: dict[str, int] = {}
    customers: dict[str, _Customers] = {}
    customers_per_line: dict[str, int] = {}
    orders_per_line: dict[str, int] = {}
    for line in cfg.lines:
        say(f"orders {line}")
        orders = _ORDER_BUILDERS[line](cfg, persons, trips)
        customers[line] = _build_customers(cfg, persons, line, orders)
        say(f"writing {line}")
        n_cust, n_ord = _write_silo(cfg, root, line, persons, customers[line], orders)
        rows[f"silos/{line}/customers.csv"] = customers_per_line[line] = n_cust
        rows[f"silos/{line}/orders.csv"] = orders_per_line[line] = n_ord

    say("propensities")
    propensity = _true_propensities(cfg, persons)
    say("writing ground truth")
    truth = root / "ground_truth"
    rows["ground_truth/persons.csv"] = _write_persons(cfg, truth / "persons.csv", persons, propensity)
    rows["ground_truth/accounts.csv"] = _write_accounts(truth / "accounts.csv", persons, customers)

    say("manifest")
    files = {rel: _sha256(root / rel) for rel in rows}
    manifest = {
        "generator": "fedprofile.simulations.platform",
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "config": cfg.to_json(),
        "n_persons": persons.n,
        "customers_per_line": customers_per_line,
        "orders_per_line": orders_per_line,
        "files": {rel: {"rows": rows[rel], "sha256": files[rel]} for rel in sorted(rows)},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return PlatformSummary(
        out_dir=root, n_persons=persons.n, customers_per_line=customers_per_line,
        orders_per_line=orders_per_line, window_start=cfg.start, window_end=cfg.end, files=files,
    )
