"""Ground-truth responses to a coupon campaign on the synthetic platform (simulation only).

Why this exists
---------------
A silo can measure a campaign's lift with its A/B split, and can train uplift
models on the results, but it can never know whether the measured lift is the
*true* one. The generator knows: it wrote each person's latent trip process,
booking probabilities and coupon uplift to ``ground_truth/persons.csv``. This
module turns those into the probability that a person converts during a
campaign window with and without the coupon, and draws outcomes from them, so
a caller can compare a measured lift with the true average treatment effect on
the audience and an uplift model's scores with the true per-person uplift.

Only the simulator may do this. It reads the generator's ground truth, which
no silo may, and it maps a silo's audience (customer pseudonyms) to persons by
opening the silo's sealed raw identifiers with the silo's own keys and joining
``ground_truth/accounts.csv`` (line, customer id -> person id). Nothing in the
production path calls it.

The response model
------------------
A *conversion* on line L is at least one order on L placed in the window
``[as_of, as_of + window_days)``. As in the generator, an order belongs to a
*relevant trip* (flights: any trip; hotels: a trip with a night; data packs: an
international trip) and is placed a lead time before the trip (the generator's
lead-time distributions), and each relevant trip is booked with us
independently with a per-trip probability ``b``. For person i:

* leisure trips are a seasonal Poisson process, so the number of leisure
  orders in the window is Poisson with mean
  ``mu_i(b) = leisure_trips_per_year_i * b * E_L(s_i)``, where ``E_L`` is the
  expected number of relevant trips per unit yearly rate whose order day falls
  in the window (season weights of the trip days, averaged over the lead time;
  flights mix domestic and international lead times by the leisure
  international share ``s_i``; hotels count a domestic trip with probability
  ``1 - exp(-2.2)`` of having a night; data packs count the share ``s_i``);
* periodic business trips (cycle, jitter, anchor date, route) give scheduled
  trips k, whose order falls in the window with probability ``q_k`` (jitter
  uniform, lead from the business lead-time distribution), each relevant with
  ``e_i`` (1 for flights, the route's share of overnight trips for hotels,
  1/0 for an international/domestic route for data packs);

and ``P(convert | b) = 1 - exp(-mu_i(b)) * prod_k (1 - b * e_i * q_k)``.

The arms differ only in ``b``:

* control: ``b0 = p_book_L`` for an *active customer* of L (a customer of the
  line, joined and not churned by ``as_of``); for anybody else (acquisition,
  as in case 1, or win-back of a churned customer) ``b0 = acquisition_share *
  p_book_L``: the same person books with us far less often when they have no
  account with us, and more often the more they would as a customer;
* treated: ``b1 = min(1, b0 + coupon_uplift)``: the coupon adds the person's
  coupon uplift to the chance that a relevant trip is booked with us.

So ``p_treated >= p_control`` for everyone, both grow with the trip rate and
the booking probability, and ``p_control`` of an active customer over a
30-day window starting the day after the data equals the generator's
``propensity_<line>_30d`` (the tests check this).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from fedprofile.client.store import SiloStore
from fedprofile.privacy.silo_keys import SiloKeys

from . import geography as geo
from .shards import silo_line
# The generator's own lead-time pmfs, season weights and night model: the response
# model must use exactly these to agree with the orders it generated.
from .platform import (
    _DOMESTIC_NIGHTS_MEAN,
    _LEAD_PMFS,
    KNOWN_LINES,
    PlatformConfig,
    horizon_exposure,
    periodic_no_order,
)

__all__ = [
    "ACQUISITION_SHARE",
    "GroundTruth",
    "PersonTruth",
    "ResponseProbabilities",
    "SimulatedOutcome",
    "audience_persons",
    "default_as_of",
    "load_ground_truth",
    "response_probabilities",
    "simulate_outcomes",
]

ACQUISITION_SHARE: Final = 0.1
"""Per-trip booking probability of a non-customer, as a share of their latent one."""

_BOOK_COLUMN: Final = {"flights": "p_book_flight", "hotels": "p_book_hotel",
                       "datapacks": "p_buy_datapack"}
_BUSINESS_LEAD: Final = {"flights": "flight_business", "hotels": "hotel_business",
                         "datapacks": "datapack"}
_LINE_STREAM: Final = {"flights": 1, "hotels": 2, "datapacks": 3}
_DEST: Final = {d.key: d for d in geo.DESTINATIONS}
_NO_CHURN: Final = np.iinfo(np.int64).max // 4


# --------------------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class PersonTruth:
    """Ground-truth parameters of some persons, as aligned arrays (one entry per person).

    Day indices count from the platform's first day (``config.start``).
    """

    config: PlatformConfig
    person_id: np.ndarray  # object (str)
    opt_out: np.ndarray  # bool
    leisure_rate: np.ndarray  # leisure trips per year
    leisure_intl_share: np.ndarray
    cycle: np.ndarray  # int, 0 when not periodic
    jitter: np.ndarray  # int
    anchor_day: np.ndarray  # int: day of one nominal periodic trip (0 when not periodic)
    periodic_dest: np.ndarray  # object (str), "" when not periodic
    p_book: dict[str, np.ndarray]  # by line: per-trip probability of booking with us
    coupon_uplift: np.ndarray
    active_from: np.ndarray  # int day index, 0 when active since before the window
    churn_day: np.ndarray  # int day index, huge when the person never churns
    customer: dict[str, np.ndarray]  # by line: bool
    propensity_30d: dict[str, np.ndarray]  # by line: the generator's 30-day propensity

    def __len__(self) -> int:
        return len(self.person_id)

    def take(self, index: np.ndarray) -> PersonTruth:
        """The persons at ``index`` (an int array or a boolean mask), in that order."""
        def pick(value: object) -> object:
            if isinstance(value, dict):
                return {k: v[index] for k, v in value.items()}
            if isinstance(value, np.ndarray):
                return value[index]
            return value
        return PersonTruth(**{name: pick(getattr(self, name))
                              for name in self.__dataclass_fields__})

    def select(self, person_ids: Sequence[str]) -> PersonTruth:
        """The named persons, in the order given; an unknown id raises KeyError."""
        position = {p: i for i, p in enumerate(self.person_id.tolist())}
        missing = [p for p in person_ids if p not in position]
        if missing:
            raise KeyError(f"{len(missing)} person id(s) not in the ground truth, e.g. {missing[0]!r}")
        return self.take(np.array([position[p] for p in person_ids], dtype=np.int64))


@dataclass(frozen=True)
class GroundTruth:
    """A generated platform's ground truth: every person and every line account."""

    config: PlatformConfig
    persons: PersonTruth
    accounts: dict[tuple[str, str], str]  # (line, raw customer id) -> person id


def _config_from_manifest(platform_dir: Path) -> PlatformConfig:
    path = Path(platform_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a generated platform (no manifest)")
    return PlatformConfig.from_json(json.loads(path.read_text())["config"])


def _day_index(cfg: PlatformConfig, values: list[str], empty: int) -> np.ndarray:
    return np.array([empty if not v else (dt.date.fromisoformat(v) - cfg.start).days
                     for v in values], dtype=np.int64)


def load_ground_truth(platform_dir: Path) -> GroundTruth:
    """Read ``ground_truth/persons.csv``, ``accounts.csv`` and the manifest's config."""
    platform_dir = Path(platform_dir)
    cfg = _config_from_manifest(platform_dir)
    with open(platform_dir / "ground_truth" / "persons.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    col = {name: [r[name] for r in rows] for name in (rows[0] if rows else {})}

    def num(name: str) -> np.ndarray:
        return np.array(col[name], dtype=np.float64)

    def flag(name: str) -> np.ndarray:
        return np.array([v == "true" for v in col[name]], dtype=bool)

    periodic = np.array([bool(v) for v in col["cycle_days"]], dtype=bool)
    persons = PersonTruth(
        config=cfg,
        person_id=np.array(col["person_id"], dtype=object),
        opt_out=flag("marketing_opt_out"),
        leisure_rate=num("leisure_trips_per_year"),
        leisure_intl_share=num("leisure_international_share"),
        cycle=np.array([int(v or 0) for v in col["cycle_days"]], dtype=np.int64),
        jitter=np.array([int(v or 0) for v in col["cycle_jitter_days"]], dtype=np.int64),
        anchor_day=np.where(periodic, _day_index(cfg, col["cycle_anchor_date"], 0), 0),
        periodic_dest=np.array(col["periodic_destination"], dtype=object),
        p_book={line: num(_BOOK_COLUMN[line]) for line in KNOWN_LINES},
        coupon_uplift=num("coupon_uplift"),
        active_from=_day_index(cfg, col["active_from"], 0),
        churn_day=_day_index(cfg, col["churn_date"], _NO_CHURN),
        customer={line: flag(f"customer_{line}") for line in KNOWN_LINES},
        propensity_30d={line: num(f"propensity_{line}_30d") for line in KNOWN_LINES},
    )
    with open(platform_dir / "ground_truth" / "accounts.csv", newline="", encoding="utf-8") as fh:
        accounts = {(r["line"], r["customer_id"]): r["person_id"] for r in csv.DictReader(fh)}
    return GroundTruth(config=cfg, persons=persons, accounts=accounts)


def audience_persons(truth: GroundTruth, keys: SiloKeys, pseudonyms: Sequence[str],
                     line: str | None = None) -> PersonTruth:
    """The ground-truth persons behind a silo's customer pseudonyms, in the same order.

    Simulation only: it opens the silo's sealed raw identifiers with the
    silo's identity key (``keys``, from :func:`fedprofile.privacy.silo_keys.
    load_silo_keys`) and joins them to the generator's accounts, which is
    exactly the re-identification a production job must never do. ``line``
    defaults to the silo's line (its name, less a shard suffix such as ``-03``).
    """
    if keys.identity_key is None:
        raise ValueError(f"silo {keys.silo_dir} keeps no raw identifiers; its audience cannot "
                         "be mapped to ground-truth persons")
    wanted = list(pseudonyms)
    with SiloStore.open(keys.silo_dir) as store:
        line = line or silo_line(store.name)
        sealed = dict(store.execute("SELECT customer_key, sealed FROM identities").fetchall())
    if line not in KNOWN_LINES:
        raise ValueError(f"unknown line {line!r}; known: {', '.join(KNOWN_LINES)}")
    person_ids = []
    for key in wanted:
        if key not in sealed:
            raise KeyError(f"customer {key[:8]}... has no sealed identity in silo {keys.silo_dir.name}")
        raw_id = keys.open_identity(key, sealed[key])["customer_id"]
        person = truth.accounts.get((line, str(raw_id)))
        if person is None:
            raise KeyError(f"customer {key[:8]}... of silo {keys.silo_dir.name} has no {line} "
                           "account in the ground truth (is this the platform the silo came from?)")
        person_ids.append(person)
    return truth.persons.select(person_ids)


# --------------------------------------------------------------------------- response model


def default_as_of(config: PlatformConfig) -> dt.date:
    """The day after the generated data ends: where a campaign would start."""
    return config.end + dt.timedelta(days=1)


@dataclass(frozen=True)
class ResponseProbabilities:
    """Per-person conversion probabilities under each arm (see the module docstring)."""

    p_control: np.ndarray
    p_treated: np.ndarray

    @property
    def uplift(self) -> np.ndarray:
        return self.p_treated - self.p_control


def _leisure_exposure(persons: PersonTruth, line: str, h0: int, window_days: int) -> np.ndarray:
    """Expected relevant leisure orders in the window per trip/year and unit booking probability."""
    cfg, s = persons.config, persons.leisure_intl_share
    if line == "flights":
        return ((1 - s) * horizon_exposure(cfg, "flight_domestic", h0, window_days)
                + s * horizon_exposure(cfg, "flight_international", h0, window_days))
    if line == "hotels":
        has_night = (1 - s) * (1.0 - math.exp(-_DOMESTIC_NIGHTS_MEAN)) + s
        return has_night * horizon_exposure(cfg, "hotel_leisure", h0, window_days)
    return s * horizon_exposure(cfg, "datapack", h0, window_days)


def _periodic_relevance(persons: PersonTruth, line: str) -> np.ndarray:
    """Share of a periodic traveller's scheduled trips that concern the line."""
    if line == "flights":
        return (persons.cycle > 0).astype(float)
    out = np.zeros(len(persons))
    for i, key in enumerate(persons.periodic_dest.tolist()):
        if key:
            dest = _DEST[key]
            out[i] = (1.0 - dest.business_day_trip_share if line == "hotels"
                      else float(dest.kind == "international"))
    return out


def _periodic_no_order(persons: PersonTruth, line: str, h0: int, window_days: int,
                       book: np.ndarray) -> np.ndarray:
    """P(no order from the periodic schedule in the window) with per-trip booking ``book``."""
    h1 = h0 + window_days - 1
    lead = _LEAD_PMFS[_BUSINESS_LEAD[line]]
    prob = book * _periodic_relevance(persons, line)
    out = np.ones(len(persons))
    pairs = {(int(c), int(j)) for c, j in zip(persons.cycle.tolist(), persons.jitter.tolist()) if c}
    for cycle, jitter in sorted(pairs):
        mask = (persons.cycle == cycle) & (persons.jitter == jitter)
        out[mask] = periodic_no_order(persons.anchor_day[mask], cycle, jitter, prob[mask], lead,
                                      h0, h1)
    return out


def _check_line_window(line: str, window_days: int) -> None:
    if line not in KNOWN_LINES:
        raise ValueError(f"unknown line {line!r}; known: {', '.join(KNOWN_LINES)}")
    if isinstance(window_days, bool) or not isinstance(window_days, (int, np.integer)) \
            or window_days < 1:
        raise ValueError(f"window_days must be a positive int, got {window_days!r}")


def response_probabilities(persons: PersonTruth, line: str, window_days: int = 3, *,
                           as_of: dt.date | None = None,
                           acquisition_share: float = ACQUISITION_SHARE) -> ResponseProbabilities:
    """P(convert on ``line`` in the window | control) and (| treated), per person.

    The formula is the module docstring's: ``1 - exp(-mu(b)) * prod_k(1 - b e q_k)``
    with ``b`` the per-trip booking probability of the arm.
    """
    _check_line_window(line, window_days)
    if not 0.0 <= acquisition_share <= 1.0:
        raise ValueError(f"acquisition_share must be in [0, 1], got {acquisition_share!r}")
    cfg = persons.config
    as_of = default_as_of(cfg) if as_of is None else as_of
    h0 = (as_of - cfg.start).days
    active = persons.customer[line] & (persons.active_from <= h0) & (persons.churn_day > h0)
    b0 = np.where(active, 1.0, acquisition_share) * persons.p_book[line]
    b1 = np.minimum(1.0, b0 + persons.coupon_uplift)
    exposure = persons.leisure_rate * _leisure_exposure(persons, line, h0, window_days)

    def convert(book: np.ndarray) -> np.ndarray:
        p = 1.0 - np.exp(-exposure * book) * _periodic_no_order(persons, line, h0, window_days, book)
        return np.clip(p, 0.0, 1.0)

    return ResponseProbabilities(p_control=convert(b0), p_treated=convert(b1))


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class SimulatedOutcome:
    """Who converted in one simulated run, next to the true probabilities behind it."""

    person_id: np.ndarray
    treated: np.ndarray  # bool
    converted: np.ndarray  # bool
    p_control: np.ndarray
    p_treated: np.ndarray
    line: str
    window_days: int
    as_of: str
    seed: int

    @property
    def true_uplift(self) -> np.ndarray:
        """Per person: P(convert | coupon) - P(convert | no coupon)."""
        return self.p_treated - self.p_control

    @property
    def true_lift(self) -> float:
        """The true average treatment effect on the whole audience."""
        return float(self.true_uplift.mean()) if len(self.person_id) else float("nan")

    @property
    def expected_observed_lift(self) -> float:
        """What the A/B difference estimates for *this* split (equals true_lift on average over splits)."""
        t = self.treated
        if not t.any() or t.all():
            return float("nan")
        return float(self.p_treated[t].mean() - self.p_control[~t].mean())

    def conversion_rates(self) -> tuple[float, float]:
        """(treated conversion rate, control conversion rate); NaN for an empty group."""
        t = self.treated
        rate_t = float(self.converted[t].mean()) if t.any() else float("nan")
        rate_c = float(self.converted[~t].mean()) if (~t).any() else float("nan")
        return rate_t, rate_c

    @property
    def observed_lift(self) -> float:
        """Treated minus control conversion rate: what the campaign would measure."""
        rate_t, rate_c = self.conversion_rates()
        return rate_t - rate_c


def simulate_outcomes(audience_persons: PersonTruth, treated_mask: np.ndarray, line: str,
                      window_days: int = 3, seed: int = 0, *, as_of: dt.date | None = None,
                      acquisition_share: float = ACQUISITION_SHARE) -> SimulatedOutcome:
    """Draw each person's conversion (Bernoulli of their arm's probability), seeded.

    The draws depend on ``seed`` and ``line`` only, so reruns are identical
    and two lines simulated with one seed are not correlated.
    """
    treated = np.asarray(treated_mask)
    if treated.dtype != bool or treated.shape != (len(audience_persons),):
        raise ValueError(f"treated_mask must be a boolean array of one entry per person "
                         f"({len(audience_persons)}), got dtype {treated.dtype} shape {treated.shape}")
    probs = response_probabilities(audience_persons, line, window_days, as_of=as_of,
                                   acquisition_share=acquisition_share)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _LINE_STREAM[line]]))
    p = np.where(treated, probs.p_treated, probs.p_control)
    as_of = default_as_of(audience_persons.config) if as_of is None else as_of
    return SimulatedOutcome(
        person_id=audience_persons.person_id.copy(), treated=treated.copy(),
        converted=rng.random(len(p)) < p, p_control=probs.p_control, p_treated=probs.p_treated,
        line=line, window_days=int(window_days), as_of=as_of.isoformat(), seed=int(seed))
