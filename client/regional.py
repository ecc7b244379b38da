"""The silo's side of regional recommendation: what the customers of each region buy.

Marketing case 4 asks "what do users of a region prefer?". Each silo releases,
once, a noisy (regions x items) matrix of distinct-customer counts plus a
per-region customer count; the server adds the silos' matrices and lists each
region's top items (:mod:`fedprofile.server.regional`). Serving back in the
silo (:func:`regional_recommendations`) gives every customer their region's list.

What is counted
    A customer's region is their most frequent interaction region (ties: the
    first name in sort order); their items are their at most ``max_items``
    most frequently bought catalogue items (ties: the smaller item code).
    A customer adds 1 to their own region's customer-count cell and 1 to each
    of their items' cells *in their region's row only*. Opted-out customers
    (PIPL art. 24) and customers whose region is not on the agreed list add
    nothing, anywhere.

Sensitivity (add/remove one customer, the ledger's privacy unit)
    The agreed catalogue and region list are fixed inputs of the release, and
    the bounding is per customer: which row and which items customer ``c``
    fills depend on ``c``'s own interactions only (not a global top-m cut that
    one customer could shift). So adding ``c`` changes the release by exactly
    ``c``'s own vector: ``+1`` in at most ``max_items`` item cells and ``+1``
    in the count cell of one row, whose L2 norm is
    ``sqrt(|items(c)| + 1) <= sqrt(max_items + 1) =: Delta`` (:func:`sensitivity`);
    removing ``c`` is the negation. Gaussian noise of standard deviation
    ``sigma * Delta`` on every cell is then the Gaussian mechanism with noise
    multiplier ``sigma``: ``alpha / (2 sigma^2)``-RDP at every order, which is
    what the accountant computes for ``MechanismStep(sigma, 1.0, 1)`` (no
    sampling, one step). It is charged that way in the privacy-budget ledger.

What is not inside epsilon
    The agreement before the release (:func:`proposal`): item codes bought by,
    and region names home to, at least ``rec-min-customers`` of the silo's
    customers, sent without noise, as the recommender's catalogue proposal is.
    It names codes and places that many customers share, never who.

The noise comes from OS entropy, never from a seed the server knows (it could
subtract it). Releases are DP only: a silo refuses a run with ``dp = false``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.logger import log

from fedprofile.files import atomic_write_text
from fedprofile.models.dp import noise_rng
from fedprofile.privacy.accounting import noise_for_target

from .interactions import Interactions, encode_codes, load_interactions
from .node import DPPlan, gaussian_plan, silo_interactions
from .store import SiloStore

MECHANISM = "gaussian-region-counts"
RECOMMENDATIONS_FILE = "regional-recommendations.csv"

#: ``basis`` column values of the serving CSV: which list a customer got, and why.
BY_REGION = "region"
OVERALL_OPTED_OUT = "overall:opted-out"
OVERALL_WITHHELD = "overall:region-withheld"
OVERALL_NO_REGION = "overall:no-region"


# ---------------------------------------------------------------------------
# pure counting
# ---------------------------------------------------------------------------
def sensitivity(max_items: int) -> float:
    """L2 sensitivity of one release: ``max_items`` item cells and one count cell per customer."""
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    return math.sqrt(max_items + 1)


def customer_regions(inter: Interactions) -> np.ndarray:
    """Each user's most frequent non-empty region (ties: first in sort order); ``""`` if none.

    One region per customer is what bounds a customer to one row of the release.
    """
    out = np.full(inter.n_users, "", dtype=object)
    region = inter.region.astype(str)
    has = region != ""
    if not has.any():
        return out
    names, code = np.unique(region[has], return_inverse=True)
    pairs, counts = np.unique(np.stack([inter.user_index[has], code]), axis=1, return_counts=True)
    order = np.lexsort((pairs[1], -counts, pairs[0]))  # by user, count desc, name asc
    users, codes = pairs[0][order], pairs[1][order]
    first = np.r_[True, users[1:] != users[:-1]]
    out[users[first]] = names[codes[first]]
    return out


def customer_top_items(inter: Interactions, items: Sequence[str], max_items: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(user, item index)`` pairs: each user's at most ``max_items`` most bought items.

    Only items in the sorted list ``items`` count; the order is by purchase count
    (descending), ties by item code. Each pair appears once (distinct customers).
    """
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    if len(items) == 0 or len(inter) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pos = encode_codes(np.asarray(items, dtype=str), inter.item)
    found = pos >= 0
    pairs, counts = np.unique(np.stack([inter.user_index[found], pos[found]]), axis=1,
                              return_counts=True)
    if pairs.shape[1] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Catalogue indices follow code order, so "ties by item code" is the smaller index.
    order = np.lexsort((pairs[1], -counts, pairs[0]))
    users, item_idx = pairs[0][order], pairs[1][order]
    starts = np.searchsorted(users, users, side="left")
    keep = np.arange(len(users)) - starts < max_items
    return users[keep].astype(np.int64), item_idx[keep].astype(np.int64)


@dataclass(frozen=True)
class RegionCounts:
    """One release: ``items[r, i]`` customers of region ``r`` with item ``i`` among their
    bounded items, and ``customers[r]`` customers of region ``r`` (exact, or noisy)."""

    items: np.ndarray  # float64 (regions, catalogue items)
    customers: np.ndarray  # float64 (regions,)

    def __post_init__(self) -> None:
        if self.items.ndim != 2 or self.customers.shape != (self.items.shape[0],):
            raise ValueError(f"region counts: items {self.items.shape} and customers "
                             f"{self.customers.shape} do not match")

    def flat(self) -> np.ndarray:
        """The whole release as one vector (for the sensitivity's L2 norm)."""
        return np.concatenate([self.items.ravel(), self.customers])

    def __add__(self, other: RegionCounts) -> RegionCounts:
        return RegionCounts(self.items + other.items, self.customers + other.customers)


def region_counts(inter: Interactions, regions: Sequence[str], items: Sequence[str],
                  max_items: int) -> RegionCounts:
    """Exact distinct-customer counts with per-customer contribution bounding (see module doc)."""
    region_names = np.asarray(regions, dtype=str)
    if list(region_names) != sorted(set(region_names)):
        raise ValueError("regions must be sorted and unique")
    if list(items) != sorted(set(items)):
        raise ValueError("items must be sorted and unique")
    counts = np.zeros((len(region_names), len(items)), dtype=np.float64)
    customers = np.zeros(len(region_names), dtype=np.float64)
    if len(region_names) == 0:
        return RegionCounts(counts, customers)
    home = customer_regions(inter).astype(str)
    row = np.minimum(np.searchsorted(region_names, home), len(region_names) - 1)
    row = np.where((region_names[row] == home) & ~inter.opt_out, row, -1)
    counted = row >= 0
    np.add.at(customers, row[counted], 1.0)
    users, item_idx = customer_top_items(inter, items, max_items)
    take = counted[users]
    np.add.at(counts, (row[users[take]], item_idx[take]), 1.0)
    return RegionCounts(counts, customers)


def privatize(exact: RegionCounts, noise_multiplier: float, max_items: int,
              rng: np.random.Generator) -> RegionCounts:
    """The Gaussian mechanism: every cell plus N(0, (sigma * sqrt(max_items + 1))^2)."""
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier!r}")
    std = noise_multiplier * sensitivity(max_items)
    return RegionCounts(exact.items + rng.normal(0.0, std, exact.items.shape),
                        exact.customers + rng.normal(0.0, std, exact.customers.shape))


def proposal(inter: Interactions, min_customers: int) -> tuple[list[str], list[str]]:
    """This silo's ``(items, regions)`` for the agreement, opted-out customers left out.

    An item is proposed when at least ``min_customers`` distinct customers
    bought it; a region when it is home (:func:`customer_regions`) to at least
    that many. Anything rarer stays in the silo: it could single people out.
    """
    active = inter.subset_users(~inter.opt_out)
    if len(active) == 0:
        return [], []
    home = customer_regions(active).astype(str)
    places, homes = np.unique(home[home != ""], return_counts=True)
    return active.items_bought_by(min_customers), [str(r) for r in places[homes >= min_customers]]


def noise_for_region_target(target_epsilon: float, delta: float) -> float:
    """Noise multiplier of the one release that spends at most ``target_epsilon``."""
    return noise_for_target(target_epsilon, delta, 1.0, 1)


def regional_plan(name: str, customers: int, config: Mapping[str, Any]) -> DPPlan:
    """The one Gaussian release this silo runs: sample rate 1, one step."""
    if not bool(config["dp"]):
        raise ValueError("this silo releases regional counts with DP noise only (the run asked "
                         "for dp = false)")
    return gaussian_plan(name, customers, config, 1, noise_for_region_target)


# ---------------------------------------------------------------------------
# Flower handlers (routed from fedprofile.client.app)
# ---------------------------------------------------------------------------
def plan(config: ConfigRecord, context: Context) -> DPPlan:
    """The ``dp_plan`` answer's mechanism; N = opted-in customers with a region."""
    inter = silo_interactions(context)
    homed = int(((customer_regions(inter) != "") & ~inter.opt_out).sum())
    return regional_plan(inter.name, homed, config)


def agree_reply(msg: Message, context: Context) -> Message:
    """This silo's item codes and region names for the agreement (no counts)."""
    inter = silo_interactions(context)
    items, regions = proposal(inter, int(msg.content["config"]["rec-min-customers"]))
    log(INFO, "silo %s: proposed its regions and catalogue items", inter.name)
    return Message(content=RecordDict({
        "proposal": ConfigRecord({"items": items, "regions": regions}),
        "silo": ConfigRecord({"name": inter.name})}), reply_to=msg)


def counts_reply(msg: Message, context: Context) -> Message:
    """The one noisy release: region x item counts and region sizes over the agreed lists."""
    config = msg.content["config"]
    inter = silo_interactions(context)
    dp_plan = plan(config, context)  # refuses dp = false, checks delta
    agreed = msg.content["agreed"]
    regions = [str(r) for r in agreed["regions"]]  # type: ignore[union-attr]
    items = [str(i) for i in agreed["items"]]  # type: ignore[union-attr]
    max_items = int(config["regional-max-items"])
    exact = region_counts(inter, regions, items, max_items)
    # OS entropy, never a seed the server knows: otherwise it could subtract the noise.
    noisy = privatize(exact, dp_plan.noise_multiplier, max_items,
                      noise_rng(inter.name, "regional", *regions, *items))
    return Message(content=RecordDict({
        "counts": ArrayRecord({"items": Array(noisy.items), "customers": Array(noisy.customers)}),
        "silo": ConfigRecord({"name": inter.name})}), reply_to=msg)


# ---------------------------------------------------------------------------
# serving, inside the silo
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RegionalServingSummary:
    """What a marketer reads about a batch of regional lists (aggregates only)."""

    path: Path
    customers: int
    by_region: int
    opted_out: int
    region_withheld: int
    no_region: int
    no_list: int
    k: int
    exclude_bought: bool

    def __str__(self) -> str:
        return (f"{self.customers:,} customers: {self.by_region:,} got their region's top-{self.k}"
                f"{' (items they bought left out)' if self.exclude_bought else ''}; the overall "
                f"list went to {self.opted_out:,} opted out of personalisation, "
                f"{self.region_withheld:,} whose region was withheld and {self.no_region:,} "
                f"without a listed region; {self.no_list:,} got no list; written to {self.path}")


def _ranked(entry: Mapping[str, Any]) -> list[str]:
    return [str(row["item"]) for row in sorted(entry.get("top") or [], key=lambda r: r["rank"])]


def read_regional_report(path: Path) -> tuple[int, dict[str, list[str] | None], list[str]]:
    """``(k, region -> ranked items or None when withheld, overall ranked items)`` of a report."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no regional report at {path}: run `fedprofile regional` first")
    try:
        report = json.loads(path.read_text())
        k = int(report["config"]["top_k"])
        regions = {str(r["region"]): (None if r["customers"] is None else _ranked(r))
                   for r in report["regions"]}
        overall = _ranked(report["overall"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a regional report ({type(err).__name__}: {err})") from None
    return k, regions, overall


def serve_lists(inter: Interactions, k: int, regions: Mapping[str, list[str] | None],
                overall: list[str], exclude_bought: bool = False,
                home: np.ndarray | None = None) -> list[tuple[str, list[str]]]:
    """Each user's ``(basis, items)``: their region's list, else the overall one.

    Opted-out customers get the overall list, which uses nothing about them:
    a region is a personal characteristic, and PIPL art. 24 lets them refuse
    marketing targeted by one; their purchases are not used either. With
    ``exclude_bought`` an opted-in customer's list drops what they already
    bought (a region list is filled up from the overall one). ``home``: each
    user's region when the caller already has it (:func:`customer_regions`).
    """
    home = (customer_regions(inter) if home is None else home).astype(str)
    bought: list[set[str]] = [set() for _ in range(inter.n_users)]
    if exclude_bought:
        for u, item in zip(inter.user_index, inter.item.astype(str), strict=True):
            bought[u].add(item)
    out: list[tuple[str, list[str]]] = []
    for u in range(inter.n_users):
        if inter.opt_out[u]:
            out.append((OVERALL_OPTED_OUT, overall[:k]))
            continue
        listed = regions.get(home[u]) if home[u] else None
        if listed is None:
            basis = OVERALL_WITHHELD if home[u] in regions else OVERALL_NO_REGION
            items = [i for i in overall if i not in bought[u]]
            out.append((basis, items[:k]))
            continue
        items = [i for i in listed if i not in bought[u]]
        items += [i for i in overall if i not in bought[u] and i not in items]
        out.append((BY_REGION, items[:k]))
    return out


def regional_recommendations(silo_dir: Path, regional_json: Path, exclude_bought: bool = False,
                             out: Path | None = None) -> RegionalServingSummary:
    """Write every customer's regional top-K into the silo (keyed by pseudonym; stays there).

    Columns: ``customer_key, region, rank, item, basis``; ``region`` is the
    customer's own (the silo's data), ``basis`` says which list they got
    (:data:`BY_REGION` or one of the ``overall:*`` reasons).
    """
    silo_dir = Path(silo_dir)
    k, regions, overall = read_regional_report(Path(regional_json))
    with SiloStore.open(silo_dir) as store:
        inter = load_interactions(store)
    home = customer_regions(inter)
    lists = serve_lists(inter, k, regions, overall, exclude_bought, home)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["customer_key", "region", "rank", "item", "basis"])
    for u, (basis, items) in enumerate(lists):
        for rank, item in enumerate(items, 1):
            writer.writerow([inter.users[u], home[u], rank, item, basis])
    path = Path(out) if out else silo_dir / RECOMMENDATIONS_FILE
    atomic_write_text(path, buffer.getvalue())
    bases = [b for b, _ in lists]
    return RegionalServingSummary(
        path=path, customers=len(lists), by_region=bases.count(BY_REGION),
        opted_out=bases.count(OVERALL_OPTED_OUT), region_withheld=bases.count(OVERALL_WITHHELD),
        no_region=bases.count(OVERALL_NO_REGION),
        no_list=sum(1 for _, items in lists if not items), k=k, exclude_bought=exclude_bought)
