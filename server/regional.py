"""Regional recommendation (marketing case 4): per-region top products, learned federatedly.

The run, in order:

1. Budget: every silo's one release is reserved in the privacy-budget ledger
   (purpose ``recommendation-training``) before anything about its customers
   leaves it; a silo over its cap refuses the whole run.
2. Agreement: each silo proposes the item codes and region names at least
   ``rec-min-customers`` of its (opted-in) customers share; the run uses the
   unions, sorted (as the recommender's catalogue, :mod:`.recommend`).
3. Release: each silo sends one noisy (regions x items) matrix of
   distinct-customer counts and a noisy customer count per region (the
   mechanism and its sensitivity: :mod:`fedprofile.client.regional`).
4. Report: the server adds the matrices. A region whose noisy customer count
   rounds below ``regional-k-min`` is withheld (name only); in a shown region
   the top ``regional-top-k`` items by noisy count are listed, minus any whose
   count rounds below ``regional-k-min``. The overall list adds the *shown*
   regions only, so a withheld region's counts cannot be had by subtracting
   the shown ones from it. Suppression is a policy on top of DP, not counted
   in the ledger.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedprofile.client.regional import MECHANISM, RegionCounts, sensitivity
from fedprofile.config import TrainConfig
from fedprofile.files import atomic_write_json, atomic_write_text

from .budget import charged, gaussian_spent

REGIONAL_FILE = "regional.json"
REGIONAL_TEXT = "regional.txt"


def regional_config(cfg: TrainConfig) -> ConfigRecord:
    """What every silo needs for a regional run; no paths, no secrets."""
    return ConfigRecord({
        "job": "regional", "dp": cfg.dp, "dp-noise-multiplier": cfg.dp_noise_multiplier,
        "dp-target-epsilon": cfg.dp_target_epsilon, "dp-delta": cfg.dp_delta,
        "regional-max-items": cfg.regional_max_items, "rec-min-customers": cfg.rec_min_customers,
    })


@dataclass(frozen=True)
class Agreement:
    """The run's regions and catalogue: unions of the silos' proposals, sorted."""

    regions: tuple[str, ...]
    items: tuple[str, ...]


def collect_agreement(grid: Grid, nodes: Sequence[int], config: ConfigRecord,
                      cfg: TrainConfig) -> Agreement:
    """Ask every silo for its region and item proposal; a silo that fails stops the run."""
    messages = [Message(content=RecordDict({"config": config}),
                        message_type="query.regional_agree", dst_node_id=n) for n in nodes]
    items: set[str] = set()
    regions: set[str] = set()
    answered = 0
    for reply in grid.send_and_receive(messages, timeout=cfg.round_timeout):
        if reply.has_error():
            raise RuntimeError(f"a silo failed to propose regions and items: {reply.error.reason}")
        proposal = reply.content["proposal"]
        items.update(str(i) for i in proposal["items"])  # type: ignore[union-attr]
        regions.update(str(r) for r in proposal["regions"])  # type: ignore[union-attr]
        answered += 1
    if answered < max(cfg.min_silos, len(nodes)):
        raise RuntimeError(f"only {answered} of {len(nodes)} silos proposed regions and items "
                           f"within {cfg.round_timeout:.0f}s")
    if not items or not regions:
        raise RuntimeError(f"no {'item' if not items else 'region'} is shared by "
                           f"{cfg.rec_min_customers} customers of any silo: lower "
                           "rec-min-customers")
    log(INFO, "fedprofile: agreed on %d regions and %d items from %d silos", len(regions),
        len(items), answered)
    return Agreement(tuple(sorted(regions)), tuple(sorted(items)))


def _release(grid: Grid, nodes: Sequence[int], config: ConfigRecord, agreed: Agreement,
             timeout: float) -> dict[str, RegionCounts]:
    """The one noisy release from every silo; a silo that fails stops the run."""
    lists = ConfigRecord({"regions": list(agreed.regions), "items": list(agreed.items)})
    messages = [Message(content=RecordDict({"config": config, "agreed": lists}),
                        message_type="query.regional_counts", dst_node_id=n) for n in nodes]
    shape = (len(agreed.regions), len(agreed.items))
    out: dict[str, RegionCounts] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"a silo failed its regional release: {reply.error.reason}")
        counts = reply.content["counts"]
        release = RegionCounts(counts["items"].numpy().astype(np.float64),
                               counts["customers"].numpy().astype(np.float64))
        if release.items.shape != shape:
            raise RuntimeError(f"a silo released a {release.items.shape} matrix; expected {shape}")
        out[str(reply.content["silo"]["name"])] = release
    if len(out) != len(nodes):
        raise RuntimeError(f"only {len(out)} of {len(nodes)} silos answered the regional release "
                           f"within {timeout:.0f}s")
    return out


def spent(noise_multiplier: float, delta: float, max_items: int) -> dict[str, float]:
    """What one release cost a silo, in the form the ledger settles (one step, sample rate 1)."""
    return gaussian_spent(noise_multiplier, delta, 1, sensitivity(max_items))


def shown_count(noisy: float) -> int:
    """A noisy count as shown: rounded half up, never negative (noise can push it below 0)."""
    return max(0, math.floor(noisy + 0.5))


def top_items(noisy: np.ndarray, items: Sequence[str], k: int, k_min: int) -> list[dict[str, Any]]:
    """The ``k`` items with the largest noisy counts (ties: item code), minus those shown < k_min."""
    order = np.lexsort((np.arange(len(items)), -np.asarray(noisy, dtype=np.float64)))[:k]
    rows = [(items[i], shown_count(noisy[i])) for i in order]
    return [{"rank": rank, "item": item, "count": count}
            for rank, (item, count) in enumerate([r for r in rows if r[1] >= k_min], 1)]


def regional_report(total: RegionCounts, agreed: Agreement, k: int, k_min: int) -> dict[str, Any]:
    """Regions with their shown size and top list; withheld regions by name only; the overall list."""
    rows: list[dict[str, Any]] = []
    shown: list[int] = []
    for r, region in enumerate(agreed.regions):
        size = shown_count(total.customers[r])
        if size < k_min:
            rows.append({"region": region, "customers": None, "top": []})
            continue
        shown.append(r)
        rows.append({"region": region, "customers": size,
                     "top": top_items(total.items[r], agreed.items, k, k_min)})
    overall = total.items[shown].sum(axis=0) if shown else np.zeros(len(agreed.items))
    return {"regions": rows,
            "overall": {"regions": len(shown),
                        "customers": sum(row["customers"] for row in rows if row["customers"]),
                        "top": top_items(overall, agreed.items, k, k_min) if shown else []},
            "withheld_regions": len(rows) - len(shown)}


def report_text(report: dict[str, Any], k: int, k_min: int, noise_std: float | None = None) -> str:
    """The marketer's view: one block per region, withheld ones marked, then the overall list.

    ``noise_std`` (of one region's summed count) is printed so that a reader
    can tell a real difference between two counts from the noise.
    """
    lines = [f"Regional top-{k} (noisy distinct-customer counts; regions and items under "
             f"{k_min} customers withheld)"]
    if noise_std is not None:
        lines.append(f"noise: each region's counts carry Gaussian noise of std ~{noise_std:.1f}"
                     " (the overall ones more: they add the regions' noise)")

    def block(title: str, top: list[dict[str, Any]]) -> None:
        lines.append(title)
        lines.extend(f"  {row['rank']:>2}. {row['item']}  ~{row['count']:,}" for row in top)
        if not top:
            lines.append(f"  (no item reaches {k_min} customers)")

    for row in report["regions"]:
        if row["customers"] is None:
            lines.append(f"{row['region']}: withheld (<{k_min} customers)")
        else:
            block(f"{row['region']} (~{row['customers']:,} customers):", row["top"])
    overall = report["overall"]
    block(f"Overall, {overall['regions']} shown regions (~{overall['customers']:,} customers):",
          overall["top"])
    return "\n".join(lines)


def run_regional(grid: Grid, run_id: str, cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """Reserve, agree, release once, report; returns what ``regional.json`` holds.

    The release is charged when it is *sent*: a silo that answered spent its
    budget even if another silo failed and the run stopped there.
    """
    started = time.perf_counter()
    config = regional_config(cfg)
    nodes = sorted(grid.get_node_ids())
    log(INFO, "fedprofile: regional recommendation over %d silos with DP (top-%d, at most %d "
        "items per customer)", len(nodes), cfg.regional_top_k, cfg.regional_max_items)
    with charged(grid, cfg, config, run_id, run_dir.name) as budget:
        sigma = budget.single_sigma()
        sent = False
        try:
            agreed = collect_agreement(grid, nodes, config, cfg)
            sent = True
            per_silo = _release(grid, nodes, config, agreed, cfg.round_timeout)
        finally:
            budget.spent = {silo: spent(float(r.params["noise_multiplier"]), cfg.dp_delta,
                                        cfg.regional_max_items)
                            for silo, r in budget.reservations.items()} if sent else {}
    total = sum((per_silo[s] for s in sorted(per_silo)), RegionCounts(np.zeros((len(agreed.regions), len(agreed.items))),
                                                np.zeros(len(agreed.regions))))
    report = regional_report(total, agreed, cfg.regional_top_k, cfg.regional_k_min)
    delta_l2 = sensitivity(cfg.regional_max_items)
    summed_std = sigma * delta_l2 * math.sqrt(len(per_silo))  # a cell of the silos' sum
    result = {
        "config": {"top_k": cfg.regional_top_k, "max_items": cfg.regional_max_items,
                   "k_min": cfg.regional_k_min, "rec_min_customers": cfg.rec_min_customers,
                   "noise_multiplier": sigma, "sensitivity": delta_l2,
                   "noise_std_per_silo": sigma * delta_l2,
                   "noise_std_summed": summed_std},
        "agreed": {"regions": list(agreed.regions), "items": list(agreed.items)},
        **report,
        "privacy": {"purpose": cfg.effective_purpose, "delta": cfg.dp_delta,
                    "mechanism": f"{MECHANISM} (one noisy region x item count matrix and region "
                                 "sizes per silo)",
                    "privacy_unit": "customer", "silos": budget.spent},
        "seconds": time.perf_counter() - started,
    }
    atomic_write_json(run_dir / REGIONAL_FILE, result)
    atomic_write_text(run_dir / REGIONAL_TEXT, report_text(
        report, cfg.regional_top_k, cfg.regional_k_min, summed_std) + "\n")
    log(INFO, "fedprofile: regional lists written to %s", run_dir / REGIONAL_FILE)
    return result
