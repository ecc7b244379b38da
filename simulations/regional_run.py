"""A regional recommendation run on one machine: the real Flower exchange, Simulation Engine.

It also computes what a simulation alone can: the same counts without noise,
pooled over the silos with the run's agreed lists
(:func:`noise_free_reference`), so the cost of the noise is visible as how
much of each shown region's top list the noise-free list shares. Only that
overlap is kept: the exact counts are statistics of pooled customers, which
no report may carry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedprofile.client.interactions import load_interactions
from fedprofile.client.regional import RegionCounts, region_counts
from fedprofile.client.silos import list_silos
from fedprofile.client.store import SiloStore
from fedprofile.config import TrainConfig
from fedprofile.server.regional import REGIONAL_FILE

from .training import run_job


def noise_free_reference(silo_dirs: Sequence[Path], regions: Sequence[str],
                         items: Sequence[str], max_items: int) -> RegionCounts:
    """The silos' exact counts over the agreed lists, added up (simulation only)."""
    parts = []
    for silo_dir in silo_dirs:
        with SiloStore.open(silo_dir) as store:
            parts.append(region_counts(load_interactions(store), regions, items, max_items))
    if not parts:
        raise ValueError("no silo to count")
    return sum(parts[1:], parts[0])


def top_overlap(result: dict[str, Any], reference: RegionCounts) -> float | None:
    """Mean share of each shown region's private top list found in its noise-free top-K."""
    items = result["agreed"]["items"]
    k = int(result["config"]["top_k"])
    shares = []
    for r, row in enumerate(result["regions"]):
        if row["customers"] is None or not row["top"]:
            continue
        exact = sorted(range(len(items)), key=lambda i: (-reference.items[r, i], items[i]))[:k]
        listed = {items[i] for i in exact}
        shares.append(sum(t["item"] in listed for t in row["top"]) / len(row["top"]))
    return sum(shares) / len(shares) if shares else None


def regional_reference(silos: list[Path], cfg: TrainConfig, result: dict[str, Any]
                       ) -> dict[str, Any]:
    """How much of each shown list the noise-free counting would also list (simulation only)."""
    exact = noise_free_reference(silos, result["agreed"]["regions"], result["agreed"]["items"],
                                 cfg.regional_max_items)
    return {"mean_top_overlap": top_overlap(result, exact),
            "note": "mean share of each shown region's list that is also in the noise-free "
                    "top-K (same counting, pooled, no noise; simulation only)"}


def run_regional_job(cfg: TrainConfig, progress: Callable[[str], None] = print,
                     reference: bool = True) -> dict[str, Any]:
    """Run a regional recommendation over the silos under ``cfg.silos_path``."""
    _, result = run_job(
        cfg, "regional", REGIONAL_FILE,
        f"regional recommendation on Flower's Simulation Engine: "
        f"{len(list_silos(cfg.silos_path))} silos, top-{cfg.regional_top_k}, at most "
        f"{cfg.regional_max_items} items per customer, DP", progress,
        ("noise_free_reference", regional_reference) if reference else None)
    return result
