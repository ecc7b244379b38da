"""Federated Lloyd's k-means with customer-level differential privacy per silo.

Customer segments are learned across business-line silos without pooling
profiles. Every iteration the server sends the current centroids; each silo
assigns its own customers to the nearest centroid, computes per-cluster sums
and counts, adds Gaussian noise *locally* and sends only the noisy statistics;
the server adds them up and moves each centroid to its cluster's noisy mean.
Because the noise is added before anything leaves the silo, a silo's
customers are protected from the server and from the other silos, not only
from whoever reads the final segments.

The release and its sensitivity
    A silo releases, per iteration, the vector
    ``(S_1, ..., S_k, C*n_1, ..., C*n_k)`` where ``S_j`` is the sum of the
    customers' *clipped, centred* vectors ``clip(x - 0.5, C)`` in cluster
    ``j``, ``n_j`` the cluster's size and ``C = clip_norm``. Adding or removing
    one customer (the neighbouring relation, as in Opacus's DP-SGD) changes
    exactly one cluster: its sum by a vector of L2 norm <= C and its scaled
    count by C. The whole vector therefore moves by at most
    ``sqrt(C**2 + C**2) = sqrt(2) * C`` in L2 (:func:`sensitivity`), whatever
    the centroids are (a customer's assignment depends only on their own
    vector and the public centroids). Adding ``N(0, (sigma * sqrt(2) * C)**2)``
    to every coordinate is then the Gaussian mechanism with noise multiplier
    ``sigma`` relative to its sensitivity; in count units the count noise has
    std ``sigma * sqrt(2)``. Iterations are adaptive compositions of that same
    mechanism on the whole silo (no subsampling), so ``R`` releases cost
    ``MechanismStep(sigma, 1.0, R)`` in :mod:`fedprofile.privacy.accounting`.

Why centre at 0.5 before clipping
    Features live in [0, 1]^d, so ``x - 0.5`` has norm at most ``sqrt(d)/2``:
    half the worst case of ``x`` itself, hence half the sensitivity for the
    same (absent) clipping, and when the clip does bite it shrinks a vector
    towards the middle of the box rather than towards the all-zero corner.
    :class:`ClusterStats` therefore holds sums of centred vectors;
    :func:`update_centroids` adds the 0.5 back.

Initialisation (seeding)
    Random data-independent centroids often start two centroids in one
    well-separated cluster and leave another cluster without one; with noisy
    counts an empty cluster can never recover. The default seeding spends one
    extra release of the *same* mechanism: silos report noisy statistics for
    ``k * candidates_per_cluster`` data-independent candidate centroids
    (:func:`init_centroids`), and the server condenses the candidates' noisy
    means, weighted by their noisy counts, into ``k`` centroids with weighted
    k-means++ (:func:`seed_centroids`), which is post-processing and free.
    The cost is one more step in the accounting (``seeding=True`` in
    :func:`kmeans_privacy_steps`).

Inertia is not released
    The within-cluster sum of squares is data-dependent too (one customer can
    move it by up to d in [0, 1]^d), so releasing it would need its own noise
    and budget, and Lloyd's iterations do not need it. :func:`local_inertia`
    exists for silo-local diagnostics and simulation oracles only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedprofile.privacy.accounting import AccountantName, MechanismStep, noise_for_target

__all__ = [
    "CENTER",
    "ClusterStats",
    "DPKMeansResult",
    "assign",
    "clip_rows",
    "count_noise_std",
    "default_min_count",
    "federated_kmeans",
    "init_centroids",
    "kmeans_privacy_steps",
    "local_inertia",
    "local_stats",
    "merge",
    "noise_for_kmeans_target",
    "privatize",
    "seed_centroids",
    "sensitivity",
    "update_centroids",
]

#: Features are centred at the middle of [0, 1] before clipping (see module docstring).
CENTER = 0.5

#: Default number of candidate centroids per cluster for the seeding release.
CANDIDATES_PER_CLUSTER = 8


# ---------------------------------------------------------------------------
# validation


def _positive(name: str, value: float) -> float:
    out = float(value)
    if not (math.isfinite(out) and out > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return out


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _matrix(name: str, x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, features) array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _profiles(x: np.ndarray, d: int | None = None) -> np.ndarray:
    """Profile vectors: finite, in [0, 1] (the fixed feature transforms' range)."""
    a = _matrix("x", x)
    if d is not None and a.shape[1] != d:
        raise ValueError(f"x has {a.shape[1]} features, centroids have {d}")
    if a.size and (a.min() < 0.0 or a.max() > 1.0):
        raise ValueError("profile vectors must lie in [0, 1]^d (apply the feature transforms first)")
    return a


# ---------------------------------------------------------------------------
# one silo, one iteration


@dataclass(frozen=True)
class ClusterStats:
    """Per-cluster sums of clipped centred vectors ``clip(x - CENTER, C)`` and counts.

    Plain or noisy: :func:`privatize` returns the same type, so the server-side
    code (:func:`merge`, :func:`update_centroids`) cannot tell, and need not.
    Counts are floats because noisy counts are.
    """

    sums: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        sums = _matrix("sums", self.sums)
        counts = np.asarray(self.counts, dtype=np.float64)
        if counts.shape != (sums.shape[0],):
            raise ValueError(f"counts must have shape ({sums.shape[0]},), got {counts.shape}")
        if not np.isfinite(counts).all():
            raise ValueError("counts contains NaN or infinite values")
        object.__setattr__(self, "sums", sums)
        object.__setattr__(self, "counts", counts)

    @property
    def k(self) -> int:
        return int(self.sums.shape[0])


def clip_rows(x: np.ndarray, clip_norm: float) -> np.ndarray:
    """Scale each row to L2 norm at most ``clip_norm`` (rows already within are unchanged).

    This is what bounds one customer's contribution to a cluster sum, and so
    the sensitivity; it is the same per-example clipping DP-SGD does.
    """
    a = _matrix("x", x)
    c = _positive("clip_norm", clip_norm)
    norms = np.linalg.norm(a, axis=1)
    scale = np.minimum(1.0, c / np.maximum(norms, np.finfo(np.float64).tiny))
    return a * scale[:, None]


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared Euclidean) for each row; ties go to the lowest index.

    Uses ``argmin(||c||^2 - 2 x.c)`` (``||x||^2`` is the same for every
    centroid), which needs O(n k) memory rather than O(n k d).
    """
    c = _matrix("centroids", centroids)
    a = _matrix("x", x)
    if a.shape[1] != c.shape[1]:
        raise ValueError(f"x has {a.shape[1]} features, centroids have {c.shape[1]}")
    if c.shape[0] < 1:
        raise ValueError("need at least one centroid")
    scores = (c * c).sum(axis=1)[None, :] - 2.0 * (a @ c.T)
    return np.argmin(scores, axis=1).astype(np.int64)


def local_stats(x: np.ndarray, centroids: np.ndarray, clip_norm: float) -> ClusterStats:
    """One silo's exact statistics for one iteration: what :func:`privatize` then noises.

    Assignment uses the raw vectors (it is the segment a customer belongs
    to); sums use the clipped centred vectors (what the sensitivity bounds).
    """
    c = _matrix("centroids", centroids)
    a = _profiles(x, c.shape[1])
    k, d = c.shape
    labels = assign(a, c)
    z = clip_rows(a - CENTER, clip_norm)
    sums = np.empty((k, d))
    for j in range(d):
        sums[:, j] = np.bincount(labels, weights=z[:, j], minlength=k)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return ClusterStats(sums, counts)


def sensitivity(clip_norm: float) -> float:
    """L2 sensitivity of the released ``(sums, clip_norm * counts)`` vector: ``sqrt(2) * C``."""
    return math.sqrt(2.0) * _positive("clip_norm", clip_norm)


def privatize(stats: ClusterStats, noise_multiplier: float, clip_norm: float,
              rng: np.random.Generator) -> ClusterStats:
    """The Gaussian mechanism on one silo's statistics (see the module docstring).

    Every sum coordinate gets noise of std ``noise_multiplier * sqrt(2) * C``;
    every count gets the same noise divided by ``C`` (i.e. the scaled count
    ``C * n`` gets the same std), so counts come back in count units with
    noise std ``noise_multiplier * sqrt(2)``.

    ``rng`` must be private to the silo: in deployment a generator seeded
    from OS entropy (``np.random.default_rng()``), never from a seed the
    server or run configuration knows, or the noise could be subtracted.
    numpy's sampler is not hardened against floating-point attacks on the
    Gaussian mechanism (Mironov 2012), the same known limit as Opacus with
    ``secure_mode=False``.
    """
    sigma = _positive("noise_multiplier", noise_multiplier)
    c = _positive("clip_norm", clip_norm)
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy Generator")
    std = sigma * sensitivity(c)
    sums = stats.sums + rng.normal(0.0, std, size=stats.sums.shape)
    counts = stats.counts + rng.normal(0.0, std, size=stats.counts.shape) / c
    return ClusterStats(sums, counts)


def local_inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances from each row to its nearest centroid.

    For silo-local diagnostics and simulation oracles only: it is never part
    of the protocol's releases (see the module docstring).
    """
    c = _matrix("centroids", centroids)
    a = _profiles(x, c.shape[1])
    labels = assign(a, c)
    return float(((a - c[labels]) ** 2).sum())


# ---------------------------------------------------------------------------
# accounting


def kmeans_privacy_steps(noise_multiplier: float, iterations: int, *,
                         seeding: bool = True) -> list[MechanismStep]:
    """What one silo spends: one Gaussian-mechanism step per noisy release, sample rate 1.

    ``iterations`` Lloyd releases, plus one for the seeding release when
    ``seeding`` (the default protocol of :func:`federated_kmeans`). Every
    customer is in every release, hence ``sample_rate=1.0``.
    """
    releases = _positive_int("iterations", iterations) + (1 if seeding else 0)
    return [MechanismStep(noise_multiplier, 1.0, releases)]


def noise_for_kmeans_target(epsilon: float, delta: float, iterations: int, *,
                            seeding: bool = True, accountant: AccountantName = "rdp") -> float:
    """Noise multiplier for which the whole run stays within ``(epsilon, delta)``.

    :func:`fedprofile.privacy.accounting.noise_for_target` with sample rate
    1.0 and the release count of :func:`kmeans_privacy_steps`. With
    ``sample_rate=1`` Opacus's PRV code takes ``log(1 - q) = log(0)``, which
    is harmless there (it only selects the whole range) but warns; that
    warning is silenced here.
    """
    releases = kmeans_privacy_steps(1.0, iterations, seeding=seeding)[0].steps
    return noise_for_target(epsilon, delta, 1.0, releases, accountant)


def count_noise_std(noise_multiplier: float | None, n_silos: int) -> float:
    """Std of a *merged* noisy count: ``sigma * sqrt(2)`` per silo, independent across silos."""
    if noise_multiplier is None:
        return 0.0
    return _positive("noise_multiplier", noise_multiplier) * math.sqrt(2.0 * _positive_int("n_silos", n_silos))


def default_min_count(noise_multiplier: float | None, n_silos: int) -> float:
    """Smallest merged noisy count trusted to move a centroid: 4 count-noise stds, at least 1.

    Below it a noisy mean is mostly noise (and a truly empty cluster passes
    only with probability ~3e-5); without noise it is 1, i.e. plain Lloyd's
    rule that an empty cluster keeps its centroid.
    """
    return max(1.0, 4.0 * count_noise_std(noise_multiplier, n_silos))


# ---------------------------------------------------------------------------
# the server


def merge(stats_list: Sequence[ClusterStats]) -> ClusterStats:
    """Element-wise sum of the silos' (noisy) statistics: what the server learns."""
    items = list(stats_list)
    if not items:
        raise ValueError("merge needs at least one silo's statistics")
    shape = items[0].sums.shape
    for s in items:
        if s.sums.shape != shape:
            raise ValueError(f"statistics shapes differ: {s.sums.shape} vs {shape}")
    return ClusterStats(np.sum([s.sums for s in items], axis=0),
                        np.sum([s.counts for s in items], axis=0))


def update_centroids(total: ClusterStats, previous: np.ndarray, min_count: float) -> np.ndarray:
    """Lloyd's update from merged statistics: each cluster's mean, clipped into [0, 1]^d.

    A cluster whose (noisy) count is below ``min_count`` keeps its previous
    centroid: its mean would be mostly noise, or a division by a count near
    zero or negative. Means are clipped into the box because features live
    there and noise can push a mean outside it.
    """
    prev = _matrix("previous", previous)
    if prev.shape != total.sums.shape:
        raise ValueError(f"previous centroids have shape {prev.shape}, statistics {total.sums.shape}")
    floor = _positive("min_count", min_count)
    ok = total.counts >= floor
    out = prev.copy()
    out[ok] = total.sums[ok] / total.counts[ok, None] + CENTER
    return np.clip(out, 0.0, 1.0)


def init_centroids(k: int, d: int, seed: int, mean: np.ndarray | None = None,
                   spread: np.ndarray | float | None = None) -> np.ndarray:
    """``k`` data-independent points, uniform in ``mean +- spread`` clipped to [0, 1]^d.

    Deterministic in ``seed`` so that every party can rebuild them and tests
    can replay them. Without ``mean``/``spread`` they fill the whole feature
    box; a caller holding DP aggregates (e.g. a noisy mean and per-feature
    spread) may narrow the box to where customers are, at no further privacy
    cost. They are the *candidates* of the seeding release, not the final
    initialisation, because uniform points alone often start two centroids in
    one cluster (see the module docstring).
    """
    kk = _positive_int("k", k)
    dd = _positive_int("d", d)
    centre = np.full(dd, CENTER) if mean is None else np.asarray(mean, dtype=np.float64)
    half = np.full(dd, 0.5) if spread is None else np.broadcast_to(
        np.asarray(spread, dtype=np.float64), (dd,))
    if centre.shape != (dd,) or not np.isfinite(centre).all():
        raise ValueError(f"mean must be a finite vector of length {dd}")
    if not (np.isfinite(half).all() and (half >= 0).all()):
        raise ValueError("spread must be finite and >= 0")
    rng = np.random.default_rng(seed)
    points = centre + half * rng.uniform(-1.0, 1.0, size=(kk, dd))
    return np.clip(points, 0.0, 1.0)


def _weighted_kmeans(points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator,
                     restarts: int = 10, iterations: int = 50) -> np.ndarray:
    """Weighted k-means++ plus Lloyd's on a few weighted points; best of ``restarts`` by inertia."""
    best, best_cost = points[:k].copy(), np.inf
    for _ in range(restarts):
        chosen = [int(rng.choice(len(points), p=weights / weights.sum()))]
        for _ in range(1, k):
            d2 = ((points[:, None, :] - points[chosen][None, :, :]) ** 2).sum(axis=2).min(axis=1)
            mass = weights * d2
            if mass.sum() <= 0.0:  # every point coincides with a chosen one
                break
            chosen.append(int(rng.choice(len(points), p=mass / mass.sum())))
        centres = points[chosen]
        if len(centres) < k:
            continue
        for _ in range(iterations):
            labels = assign(points, centres)
            moved = centres.copy()
            for j in range(k):
                w = weights[labels == j]
                if w.sum() > 0.0:
                    moved[j] = (points[labels == j] * w[:, None]).sum(axis=0) / w.sum()
            if np.array_equal(moved, centres):
                break
            centres = moved
        labels = assign(points, centres)
        cost = float((weights * ((points - centres[labels]) ** 2).sum(axis=1)).sum())
        if cost < best_cost:
            best, best_cost = centres, cost
    return best


def seed_centroids(total: ClusterStats, candidates: np.ndarray, k: int, min_count: float,
                   seed: int) -> np.ndarray:
    """Server-side: ``k`` initial centroids from the seeding release (post-processing only).

    The candidates whose merged noisy count reaches ``min_count`` are
    replaced by their noisy means and weighted by their noisy counts; the
    best of several seeded weighted k-means++ runs on those points (by
    weighted inertia) gives the centroids. If fewer than ``k`` candidates
    qualify, the qualifying means are used and the rest is filled with the
    (data-independent) candidates that did not.
    """
    kk = _positive_int("k", k)
    cands = _matrix("candidates", candidates)
    means = update_centroids(total, cands, min_count)
    ok = total.counts >= _positive("min_count", min_count)
    if ok.sum() <= kk:
        return np.concatenate([means[ok], cands[~ok]])[:kk]
    rng = np.random.default_rng([seed, 1])
    return _weighted_kmeans(means[ok], total.counts[ok], kk, rng)


# ---------------------------------------------------------------------------
# the whole protocol, in process


@dataclass(frozen=True)
class DPKMeansResult:
    """A federated k-means run: what the server learned, iteration by iteration.

    ``counts[t]`` and ``per_silo_counts[t][silo]`` are the (noisy) counts
    released in iteration ``t``, i.e. cluster sizes under the centroids
    *before* that iteration's update (``history[t-1]``, or ``initial``); at
    convergence they are the sizes of the final segments. ``privacy_steps``
    is what each silo spent (empty without noise).
    """

    centroids: np.ndarray
    initial: np.ndarray
    history: list[np.ndarray]
    counts: list[np.ndarray]
    per_silo_counts: list[dict[str, np.ndarray]]
    releases: int
    noise_multiplier: float | None
    clip_norm: float
    min_count: float
    privacy_steps: list[MechanismStep] = field(default_factory=list)


def _silo_release(x: np.ndarray, centroids: np.ndarray, noise_multiplier: float | None,
                  clip_norm: float, rng: np.random.Generator) -> ClusterStats:
    stats = local_stats(x, centroids, clip_norm)
    if noise_multiplier is None:
        return stats
    return privatize(stats, noise_multiplier, clip_norm, rng)


def federated_kmeans(silo_vectors: Sequence[np.ndarray], k: int, iterations: int,
                     noise_multiplier: float | None, clip_norm: float | None = None,
                     seed: int = 0, *, initial: np.ndarray | None = None,
                     candidates_per_cluster: int = CANDIDATES_PER_CLUSTER,
                     min_count: float | None = None,
                     silo_names: Sequence[str] | None = None) -> DPKMeansResult:
    """Run the protocol in process: the reference a networked version must reproduce.

    Each silo's only outputs are its :func:`privatize`-d statistics; the
    server uses only their :func:`merge`. ``noise_multiplier=None`` runs
    without noise (no privacy; for tests and baselines). ``clip_norm=None``
    uses ``sqrt(d)/2``, the largest norm of a centred [0, 1]^d vector, so
    nothing is clipped. ``initial`` skips the seeding release (and its
    privacy cost); it must not be derived from the data without DP.
    ``min_count`` defaults to :func:`default_min_count`.

    The silos' noise generators are derived from ``seed`` for
    reproducibility; a deployed silo must draw its own (see :func:`privatize`).
    """
    silos = [_profiles(x) for x in silo_vectors]
    if not silos:
        raise ValueError("need at least one silo")
    d = silos[0].shape[1]
    for x in silos:
        _profiles(x, d)
    kk = _positive_int("k", k)
    n_iter = _positive_int("iterations", iterations)
    names = [f"silo{i}" for i in range(len(silos))] if silo_names is None else list(silo_names)
    if len(names) != len(silos) or len(set(names)) != len(names):
        raise ValueError("silo_names must name each silo once")
    sigma = None if noise_multiplier is None else _positive("noise_multiplier", noise_multiplier)
    clip = math.sqrt(d) / 2.0 if clip_norm is None else _positive("clip_norm", clip_norm)
    floor = default_min_count(sigma, len(silos)) if min_count is None else _positive("min_count", min_count)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(silos))]

    releases = 0
    if initial is None:
        cands = init_centroids(kk * _positive_int("candidates_per_cluster", candidates_per_cluster),
                               d, seed)
        total = merge([_silo_release(x, cands, sigma, clip, r) for x, r in zip(silos, rngs)])
        releases += 1
        start = seed_centroids(total, cands, kk, floor, seed)
    else:
        start = _matrix("initial", initial)
        if start.shape != (kk, d):
            raise ValueError(f"initial must have shape ({kk}, {d}), got {start.shape}")
        start = start.copy()

    centroids = start
    history: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    per_silo: list[dict[str, np.ndarray]] = []
    for _ in range(n_iter):
        released = [_silo_release(x, centroids, sigma, clip, r) for x, r in zip(silos, rngs)]
        releases += 1
        total = merge(released)
        centroids = update_centroids(total, centroids, floor)
        history.append(centroids)
        counts.append(total.counts)
        per_silo.append({name: s.counts for name, s in zip(names, released)})

    steps = [] if sigma is None else [MechanismStep(sigma, 1.0, releases)]
    return DPKMeansResult(centroids=centroids, initial=start, history=history, counts=counts,
                          per_silo_counts=per_silo, releases=releases, noise_multiplier=sigma,
                          clip_norm=clip, min_count=floor, privacy_steps=steps)
