"""A federated segmentation on one machine: the real Flower exchange, on the Simulation Engine.

It also computes what a simulation alone can: the same protocol run in process
on the pooled profile vectors without noise (:func:`federated_kmeans` with
``noise_multiplier=None``), so the cost of the noise is visible as the
distance between the private and the noise-free centroids.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedprofile.client.profiles import profile_silo
from fedprofile.client.segmenting import CLIP_NORM, segment_vectors
from fedprofile.client.silos import list_silos
from fedprofile.config import TrainConfig
from fedprofile.models.kmeans import assign, federated_kmeans
from fedprofile.server.segment import SEGMENTS_FILE

from .training import run_job


def noise_free_reference(silo_dirs: list[Path], cfg: TrainConfig) -> dict[str, Any]:
    """The same protocol without noise on every silo's vectors (simulation only)."""
    vectors = []
    for silo_dir in silo_dirs:
        vectors.append(segment_vectors(profile_silo(silo_dir, cfg.as_of)))
    ref = federated_kmeans(vectors, cfg.segments, cfg.segment_iterations, None, CLIP_NORM,
                           seed=cfg.seed)
    return {"centroids": ref.centroids}


def centroid_gap(private: np.ndarray, reference: np.ndarray) -> float:
    """Mean distance from each reference centroid to its nearest private one (in [0, 1]^d units)."""
    nearest = assign(reference, private)
    return float(np.linalg.norm(reference - private[nearest], axis=1).mean())


def segment_reference(silos: list[Path], cfg: TrainConfig, result: dict[str, Any]
                      ) -> dict[str, Any]:
    """How far the private centroids lie from the noise-free ones (simulation only).

    Only the gap is kept: the noise-free centroids and sizes are exact
    statistics of pooled customers, which no report may carry.
    """
    private = np.array([c for c in result["centroids"] if c is not None])
    ref = noise_free_reference(silos, cfg)["centroids"]
    return {"mean_centroid_gap": centroid_gap(private, ref) if len(private) else None,
            "note": "mean distance from each noise-free centroid (same protocol, pooled, no "
                    "noise; simulation only) to the nearest shown private centroid"}


def run_segment_job(cfg: TrainConfig, progress: Callable[[str], None] = print,
                    reference: bool = True) -> dict[str, Any]:
    """Run a federated segmentation over the silos under ``cfg.silos_path``."""
    _, result = run_job(
        cfg, "segment", SEGMENTS_FILE,
        f"federated segmentation on Flower's Simulation Engine: "
        f"{len(list_silos(cfg.silos_path))} silos, k={cfg.segments}, "
        f"{cfg.segment_iterations} iterations, DP", progress,
        ("noise_free_reference", segment_reference) if reference else None)
    return result
