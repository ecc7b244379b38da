"""The silo's side of federated segmentation: noisy cluster statistics of its own customers.

Each release is one Gaussian mechanism over the silo's whole customer base
(see :mod:`fedprofile.models.kmeans` for the sensitivity argument): the silo
assigns its customers' profile vectors to the server's centroids, sums them
per cluster and adds noise drawn from OS entropy before anything leaves. The
server learns only noisy per-cluster sums and counts; it never sees a profile.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedprofile.models.dp import noise_rng
from fedprofile.models.kmeans import kmeans_privacy_steps, local_stats, noise_for_kmeans_target, privatize

from .node import DPPlan, cached_interactions, gaussian_plan, silo_and_stamp
from .profiles import (PROFILE_VECTOR_FEATURES, Profiles, as_of_epoch, compute_profiles,
                       profile_vectors)

SEGMENT_DIM = len(PROFILE_VECTOR_FEATURES)
CLIP_NORM = math.sqrt(SEGMENT_DIM) / 2.0
"""Centred profile vectors have norm at most sqrt(d)/2, so this clips nothing and is the
sensitivity's scale (see fedprofile.models.kmeans)."""


def segment_vectors(profiles: Profiles) -> np.ndarray:
    """The profile vectors segmentation uses: customers with a purchase who did not opt out.

    No purchase, no profile to segment; opted out of marketing, not segmented for it.
    """
    return profile_vectors(profiles)[(profiles.frequency > 0) & ~profiles.opt_out]


@functools.lru_cache(maxsize=16)
def _cached_vectors(silo_dir: str, stamp: tuple[tuple[int, int], ...], as_of: str
                    ) -> tuple[str, np.ndarray]:
    inter = cached_interactions(Path(silo_dir), stamp)
    return inter.name, segment_vectors(compute_profiles(inter, as_of=as_of_epoch(as_of)))


def silo_vectors(context: Context, as_of: str) -> tuple[str, np.ndarray]:
    """This silo's name and its customers' profile vectors (cached while the store is unchanged)."""
    silo_dir, stamp = silo_and_stamp(context)
    name, vectors = _cached_vectors(str(silo_dir), stamp, as_of)
    if len(vectors) == 0:
        raise ValueError(f"silo {name} has no customer with a purchase to segment")
    return name, vectors


def releases(config: ConfigRecord) -> int:
    """Noisy releases in one segmentation run: the seeding release plus one per iteration."""
    return kmeans_privacy_steps(1.0, int(config["segment-iterations"]))[0].steps


def segment_plan(name: str, customers: int, config: ConfigRecord) -> DPPlan:
    """The Gaussian mechanism this silo runs per release; every customer is in every release."""
    iterations = int(config["segment-iterations"])
    return gaussian_plan(name, customers, config, releases(config),
                         lambda eps, delta: noise_for_kmeans_target(eps, delta, iterations))


def plan(config: ConfigRecord, context: Context) -> DPPlan:
    name, vectors = silo_vectors(context, str(config["as-of"]))
    return segment_plan(name, len(vectors), config)


def stats_reply(msg: Message, context: Context) -> Message:
    """One release: noisy per-cluster sums and counts for the centroids in the message."""
    config = msg.content["config"]
    name, vectors = silo_vectors(context, str(config["as-of"]))
    centroids = msg.content["centroids"]["centroids"].numpy()
    if not bool(config["dp"]):
        # The silo protects itself whatever the server asks: a small cluster's
        # exact sums would be its customers' profiles.
        raise ValueError("this silo releases segmentation statistics with DP noise only "
                         "(the run asked for dp = false)")
    sigma = segment_plan(name, len(vectors), config).noise_multiplier
    # OS entropy, never a seed the server knows: otherwise it could subtract the noise.
    stats = privatize(local_stats(vectors, centroids, CLIP_NORM), sigma, CLIP_NORM,
                      noise_rng(name, np.ascontiguousarray(centroids).tobytes()))
    content = RecordDict({
        "stats": ArrayRecord({"sums": Array(stats.sums.astype(np.float64)),
                              "counts": Array(stats.counts.astype(np.float64))}),
        "silo": ConfigRecord({"name": name}),
    })
    return Message(content=content, reply_to=msg)
