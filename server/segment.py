"""Federated segmentation: DP k-means over the silos' customer profiles, and its report.

The server holds centroids only. Each release it sends them to every silo and
receives noisy per-cluster sums and counts (see :mod:`fedprofile.client.segmenting`);
it merges them and moves the centroids (Lloyd's update). The first release
seeds the centroids from data-independent candidates (:func:`seed_centroids`).
Segmentation is DP only (the silos refuse to release exact statistics): every
silo's releases are reserved in the privacy-budget ledger under purpose
``segmentation`` before the first one, and settled with those actually sent. The report
withholds any segment or per-silo cell under ``segment-k-min`` customers.
"""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedprofile.client.profiles import PROFILE_VECTOR_FEATURES, decode_vector
from fedprofile.client.segmenting import CLIP_NORM, SEGMENT_DIM, releases
from fedprofile.client.segments import segment_report
from fedprofile.config import TrainConfig
from fedprofile.files import atomic_write_json, atomic_write_text
from fedprofile.models.kmeans import (CANDIDATES_PER_CLUSTER, ClusterStats, default_min_count,
                                      init_centroids, merge, seed_centroids, update_centroids)

from .budget import charged, gaussian_spent

SEGMENTS_FILE = "segments.json"
SEGMENTS_TEXT = "segments.txt"


def segment_config(cfg: TrainConfig) -> ConfigRecord:
    """What every silo needs for a segmentation run; no paths, no secrets."""
    return ConfigRecord({
        "job": "segment", "as-of": cfg.as_of, "dp": cfg.dp,
        "dp-noise-multiplier": cfg.dp_noise_multiplier,
        "dp-target-epsilon": cfg.dp_target_epsilon, "dp-delta": cfg.dp_delta,
        "segment-iterations": cfg.segment_iterations,
    })


def _release(grid: Grid, nodes: list[int], centroids: np.ndarray, config: ConfigRecord,
             timeout: float) -> dict[str, ClusterStats]:
    """One noisy release from every silo; a silo that fails stops the run (no partial segments)."""
    messages = [Message(content=RecordDict({"config": config, "centroids": ArrayRecord(
                            {"centroids": Array(np.asarray(centroids, dtype=np.float64))})}),
                        message_type="query.segment_stats", dst_node_id=n) for n in nodes]
    out: dict[str, ClusterStats] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"a silo failed its segmentation release: {reply.error.reason}")
        stats = reply.content["stats"]
        out[str(reply.content["silo"]["name"])] = ClusterStats(stats["sums"].numpy(),
                                                               stats["counts"].numpy())
    if len(out) != len(nodes):
        raise RuntimeError(f"only {len(out)} of {len(nodes)} silos answered a segmentation "
                           f"release within {timeout:.0f}s")
    return out


def spent(plan_sigma: float, delta: float, n_releases: int) -> dict[str, float]:
    """What a silo spent, in the form the ledger settles (sample rate 1: no subsampling)."""
    return gaussian_spent(plan_sigma, delta, n_releases, CLIP_NORM)


def run_segmentation(grid: Grid, run_id: str, cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """Reserve, seed, iterate, report; returns what ``segments.json`` holds.

    Every release is charged, counted when it is *sent*: a silo that answered
    spent budget on it even if another silo failed and the run stopped there.
    """
    started = time.perf_counter()
    config = segment_config(cfg)
    nodes = sorted(grid.get_node_ids())
    k = cfg.segments
    log(INFO, "fedprofile: federated segmentation, k=%d, %d iterations over %d silos with DP",
        k, cfg.segment_iterations, len(nodes))
    history: list[dict[str, Any]] = []
    with charged(grid, cfg, config, run_id, run_dir.name) as budget:
        sigma = budget.single_sigma()
        floor = default_min_count(sigma, len(nodes))
        sent = 0
        try:
            candidates = init_centroids(k * CANDIDATES_PER_CLUSTER, SEGMENT_DIM, cfg.seed)
            sent += 1
            seeding = _release(grid, nodes, candidates, config, cfg.round_timeout)
            centroids = seed_centroids(merge(list(seeding.values())), candidates, k, floor, cfg.seed)
            for iteration in range(1, cfg.segment_iterations + 1):
                sent += 1
                per_silo = _release(grid, nodes, centroids, config, cfg.round_timeout)
                total = merge([per_silo[s] for s in sorted(per_silo)])  # same sums every run
                moved = update_centroids(total, centroids, floor)
                shift = float(np.abs(moved - centroids).max())
                # Sizes per iteration are not kept: only the final report's
                # k-suppressed sizes are released to readers of the run.
                history.append({"iteration": iteration, "max_shift": shift})
                log(INFO, "fedprofile: segmentation iteration %d/%d: centroids moved by at most "
                    "%.4f", iteration, cfg.segment_iterations, shift)
                sizes = total.counts
                centroids = moved
        finally:
            budget.spent = {silo: spent(float(r.params["noise_multiplier"]), cfg.dp_delta, sent)
                            for silo, r in budget.reservations.items()} if sent else {}
    if sent != releases(config):
        raise RuntimeError(f"segmentation stopped after {sent} releases")
    # The last release's counts are the segment sizes under the centroids it was
    # computed for; one more update moved them, so the sizes describe the
    # segments up to that last (small) move.
    report = segment_report(centroids, sizes, {s: per_silo[s].counts for s in sorted(per_silo)},
                            PROFILE_VECTOR_FEATURES, decode_vector, k_min=cfg.segment_k_min)
    shown = [row.size is not None for row in report.rows]
    result = {
        "config": {"segments": k, "iterations": cfg.segment_iterations,
                   "noise_multiplier": sigma, "clip_norm": CLIP_NORM, "releases": sent,
                   "min_count": floor, "k_min": cfg.segment_k_min, "seed": cfg.seed},
        "features": list(PROFILE_VECTOR_FEATURES),
        # In [0, 1]^d feature space, for labelling customers inside the silos;
        # a suppressed segment's centroid is withheld here as in the report.
        "centroids": [c.tolist() if ok else None for c, ok in zip(centroids, shown, strict=True)],
        "report": report.to_dict(),
        "history": history,
        "privacy": {"purpose": cfg.effective_purpose, "delta": cfg.dp_delta,
                    "mechanism": "gaussian (noisy cluster sums and counts per silo)",
                    "privacy_unit": "customer", "silos": budget.spent},
        "seconds": time.perf_counter() - started,
    }
    atomic_write_json(run_dir / SEGMENTS_FILE, result)
    atomic_write_text(run_dir / SEGMENTS_TEXT, report.to_text() + "\n")
    log(INFO, "fedprofile: segments written to %s", run_dir / SEGMENTS_FILE)
    return result
