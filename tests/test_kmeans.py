"""Federated DP k-means (models/kmeans.py) and segment reports (client/segments.py)."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from fedprofile.client.segments import assign_segments, segment_report
from fedprofile.models.kmeans import (
    CENTER,
    ClusterStats,
    assign,
    clip_rows,
    federated_kmeans,
    init_centroids,
    kmeans_privacy_steps,
    local_stats,
    merge,
    noise_for_kmeans_target,
    privatize,
    sensitivity,
    update_centroids,
)
from fedprofile.privacy.accounting import MechanismStep, epsilon

D = 10
CENTERS = np.array([
    np.full(D, 0.2),
    np.full(D, 0.8),
    np.tile([0.2, 0.8], D // 2),
])
SIZES = (500, 1200, 800)


def _blobs(seed: int = 5) -> tuple[np.ndarray, list[np.ndarray]]:
    """Three tight blobs in [0,1]^D, shuffled and split 15/35/50 % over three silos."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.clip(c + rng.normal(0.0, 0.05, (n, D)), 0.0, 1.0)
                        for c, n in zip(CENTERS, SIZES)])
    x = x[rng.permutation(len(x))]
    cuts = [int(0.15 * len(x)), int(0.5 * len(x))]
    return x, np.split(x, cuts)


def _pooled_lloyd(x: np.ndarray, start: np.ndarray, iterations: int) -> list[np.ndarray]:
    """Textbook Lloyd's on pooled data (an empty cluster keeps its centroid)."""
    c, out = start.copy(), []
    for _ in range(iterations):
        labels = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
        new = c.copy()
        for j in range(len(c)):
            if (labels == j).any():
                new[j] = x[labels == j].mean(axis=0)
        c = new
        out.append(c)
    return out


def _centroid_error(found: np.ndarray, truth: np.ndarray) -> float:
    """Largest coordinate error under the best matching of found centroids to true ones."""
    return min(float(np.abs(found[list(p)] - truth).max())
               for p in itertools.permutations(range(len(found))))


def _release_vector(stats: ClusterStats, clip_norm: float) -> np.ndarray:
    return np.concatenate([stats.sums.ravel(), clip_norm * stats.counts])


# ---------------------------------------------------------------------------
# the protocol


def test_without_noise_federated_equals_pooled_lloyd() -> None:
    x, silos = _blobs()
    result = federated_kmeans(silos, k=3, iterations=8, noise_multiplier=None, seed=3)
    reference = _pooled_lloyd(x, result.initial, 8)
    assert len(result.history) == 8
    for got, want in zip(result.history, reference):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert result.counts[-1].sum() == len(x)
    assert sorted(result.counts[-1].tolist()) == sorted(float(n) for n in SIZES)
    assert _centroid_error(result.centroids, CENTERS) < 0.01
    assert result.privacy_steps == []
    assert result.releases == 9  # the seeding release, then one per iteration


def test_explicit_initial_skips_seeding_and_matches_pooled() -> None:
    x, silos = _blobs()
    start = np.stack([x[0], x[1], x[2]])
    result = federated_kmeans(silos, 3, 5, None, initial=start)
    assert result.releases == 5
    np.testing.assert_allclose(result.centroids, _pooled_lloyd(x, start, 5)[-1], rtol=0, atol=1e-12)


def test_small_noise_recovers_blobs_and_records_its_cost() -> None:
    _, silos = _blobs()
    result = federated_kmeans(silos, 3, 10, noise_multiplier=1.0, seed=7)
    assert _centroid_error(result.centroids, CENTERS) < 0.05
    assert result.privacy_steps == [MechanismStep(1.0, 1.0, 11)]
    assert result.privacy_steps == kmeans_privacy_steps(1.0, 10)
    for per_silo, total in zip(result.per_silo_counts, result.counts):
        np.testing.assert_allclose(sum(per_silo.values()), total)
    assert set(result.per_silo_counts[-1]) == {"silo0", "silo1", "silo2"}


def test_noise_std_matches_calibration() -> None:
    x, _ = _blobs()
    clip, sigma = 0.7, 1.5
    exact = local_stats(x, CENTERS, clip)
    rng = np.random.default_rng(2024)
    draws = 2000
    sum_noise = np.empty((draws, 3, D))
    count_noise = np.empty((draws, 3))
    for i in range(draws):
        noisy = privatize(exact, sigma, clip, rng)
        sum_noise[i] = noisy.sums - exact.sums
        count_noise[i] = noisy.counts - exact.counts
    want = sigma * math.sqrt(2.0) * clip  # noise multiplier x L2 sensitivity
    # 60,000 sum coordinates: the sample std is within 1 % of the truth with
    # overwhelming probability (its relative s.d. is 1/sqrt(2N) ~ 0.3 %).
    assert abs(sum_noise.std() / want - 1.0) < 0.012
    assert abs(sum_noise.mean()) < 4 * want / math.sqrt(sum_noise.size)
    # Counts in count units: the scaled count clip*n gets the same noise.
    assert abs(count_noise.std() / (want / clip) - 1.0) < 0.04
    assert abs(count_noise.std() / (sigma * math.sqrt(2.0)) - 1.0) < 0.04


def test_privatize_changes_nothing_but_adds_noise_of_zero_mean() -> None:
    stats = ClusterStats(np.zeros((2, 3)), np.zeros(2))
    a = privatize(stats, 1.0, 1.0, np.random.default_rng(1))
    b = privatize(stats, 1.0, 1.0, np.random.default_rng(1))
    np.testing.assert_array_equal(a.sums, b.sums)
    assert not np.array_equal(a.sums, stats.sums)
    with pytest.raises(ValueError):
        privatize(stats, 0.0, 1.0, np.random.default_rng(1))


# ---------------------------------------------------------------------------
# sensitivity


@pytest.mark.parametrize("clip_norm", [0.3, 1.0, math.sqrt(8) / 2])
def test_neighbouring_releases_differ_by_at_most_the_sensitivity(clip_norm: float) -> None:
    rng = np.random.default_rng(17)
    d, k = 8, 4
    worst = 0.0
    for _ in range(200):
        x = rng.uniform(0.0, 1.0, (int(rng.integers(2, 60)), d))
        centroids = rng.uniform(0.0, 1.0, (k, d))
        if rng.random() < 0.5:  # remove one customer
            neighbour = np.delete(x, int(rng.integers(len(x))), axis=0)
        else:  # add one customer
            neighbour = np.vstack([x, rng.uniform(0.0, 1.0, (1, d))])
        a = _release_vector(local_stats(x, centroids, clip_norm), clip_norm)
        b = _release_vector(local_stats(neighbour, centroids, clip_norm), clip_norm)
        worst = max(worst, float(np.linalg.norm(a - b)))
    assert sensitivity(clip_norm) == pytest.approx(math.sqrt(2.0) * clip_norm)
    assert worst <= sensitivity(clip_norm) * (1 + 1e-12)
    if clip_norm == 0.3:  # almost every centred vector is clipped: the bound is attained
        assert worst > sensitivity(clip_norm) * (1 - 1e-9)


def test_clip_rows_bounds_norms_and_keeps_short_rows() -> None:
    x = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    out = clip_rows(x, 1.0)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])


def test_local_stats_sums_centred_vectors_per_cluster() -> None:
    x = np.array([[0.0, 0.0], [0.1, 0.0], [1.0, 1.0]])
    centroids = np.array([[0.0, 0.0], [1.0, 1.0]])
    stats = local_stats(x, centroids, clip_norm=10.0)
    np.testing.assert_allclose(stats.counts, [2, 1])
    np.testing.assert_allclose(stats.sums, [[0.1 - 2 * CENTER, -2 * CENTER], [CENTER, CENTER]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        local_stats(x * 2.0, centroids, 1.0)


# ---------------------------------------------------------------------------
# server side


def test_update_centroids_keeps_small_clusters_and_clips_into_the_box() -> None:
    total = merge([ClusterStats(np.array([[10.0, -20.0], [1.0, 1.0]]), np.array([40.0, 1.0])),
                   ClusterStats(np.array([[10.0, -40.0], [0.0, 0.0]]), np.array([60.0, 0.5]))])
    previous = np.array([[0.5, 0.5], [0.9, 0.1]])
    out = update_centroids(total, previous, min_count=5.0)
    np.testing.assert_allclose(out[0], [20.0 / 100 + 0.5, 0.0])  # -0.6 + 0.5 clipped to 0
    np.testing.assert_array_equal(out[1], previous[1])
    with pytest.raises(ValueError):
        update_centroids(total, previous, min_count=0.0)


def test_init_centroids_is_deterministic_and_in_the_box() -> None:
    a = init_centroids(24, 10, seed=9)
    np.testing.assert_array_equal(a, init_centroids(24, 10, seed=9))
    assert not np.array_equal(a, init_centroids(24, 10, seed=10))
    assert a.min() >= 0.0 and a.max() <= 1.0
    narrow = init_centroids(50, 3, seed=1, mean=np.array([0.2, 0.5, 0.9]), spread=0.05)
    assert np.all(np.abs(narrow - [0.2, 0.5, 0.9]) <= 0.05 + 1e-12)


def test_assign_picks_the_nearest_centroid() -> None:
    rng = np.random.default_rng(3)
    x, c = rng.uniform(size=(300, 6)), rng.uniform(size=(5, 6))
    brute = ((x[:, None, :] - c[None]) ** 2).sum(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(assign(x, c), brute)
    np.testing.assert_array_equal(assign_segments(x, c), brute)


# ---------------------------------------------------------------------------
# accounting


def _rdp_epsilon_by_hand(sigma: float, steps: int, delta: float) -> float:
    """Gaussian mechanism RDP, alpha * steps / (2 sigma^2), converted as Opacus does
    (Balle et al. 2020 conversion) over Opacus's default orders."""
    alphas = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)), dtype=float)
    rdp = steps * alphas / (2 * sigma ** 2)
    eps = rdp - (np.log(delta) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas)
    return float(eps.min())


def _exact_gaussian_epsilon(sigma: float, steps: int, delta: float) -> float:
    """Tight epsilon of ``steps`` Gaussian mechanisms = one with mu = sqrt(steps)/sigma
    (Balle & Wang 2018): delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    mu = math.sqrt(steps) / sigma

    def gap(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return float(brentq(gap, 0.0, 100.0, xtol=1e-12))


def test_privacy_steps_match_rdp_by_hand() -> None:
    steps = kmeans_privacy_steps(2.0, 10)
    assert steps == [MechanismStep(2.0, 1.0, 11)]
    assert kmeans_privacy_steps(2.0, 10, seeding=False) == [MechanismStep(2.0, 1.0, 10)]
    got = epsilon(steps, 1e-5, "rdp")
    assert got == pytest.approx(_rdp_epsilon_by_hand(2.0, 11, 1e-5), rel=1e-9)


def test_prv_epsilon_brackets_the_exact_gaussian_epsilon() -> None:
    exact = _exact_gaussian_epsilon(2.0, 11, 1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Opacus PRV: log(1 - q) at q = 1
        prv = epsilon(kmeans_privacy_steps(2.0, 10), 1e-5, "prv")
    assert exact <= prv <= exact + 0.05
    assert prv <= epsilon(kmeans_privacy_steps(2.0, 10), 1e-5, "rdp")


def test_noise_for_kmeans_target_meets_the_target() -> None:
    sigma = noise_for_kmeans_target(2.0, 1e-5, 10)
    spent = epsilon(kmeans_privacy_steps(sigma, 10), 1e-5, "rdp")
    assert 1.99 < spent <= 2.0
    assert _exact_gaussian_epsilon(sigma, 11, 1e-5) <= spent


# ---------------------------------------------------------------------------
# segment reports


def _report(k_min: int, sizes=(3.4, 250.0, 40.0), per_silo=None):
    centroids = np.array([[0.1, 0.2], [0.5, 0.5], [0.9, 0.7]])
    if per_silo is None:
        per_silo = {"flights": np.array([1.0, 120.0, 35.0]),
                    "datapack": np.array([2.4, 130.0, 5.2])}
    return segment_report(centroids, np.array(sizes), per_silo, ["recency", "spend"], k_min=k_min)


def test_small_segment_suppressed_at_k_min_10_and_shown_at_2() -> None:
    strict = _report(10)
    assert strict.rows[0].suppressed and strict.rows[0].size is None
    assert strict.rows[0].centroid is None
    assert strict.rows[0].per_silo == {"flights": None, "datapack": None}
    assert strict.suppressed_segments == 1
    assert strict.rows[1].size == 250 and strict.rows[1].centroid == {"recency": 0.5, "spend": 0.5}
    text = strict.to_text()
    assert "<10" in text and "Segment 0" not in text and "Segment 1" in text
    row0 = next(line for line in text.splitlines() if line.startswith("0 "))
    assert row0.split() == ["0", "<10", "n/s", "n/s"]

    loose = _report(2)
    assert loose.rows[0].size == 3 and loose.rows[0].centroid == {"recency": 0.1, "spend": 0.2}
    assert loose.suppressed_segments == 0


def test_per_silo_cells_suppressed_with_their_complement() -> None:
    strict = _report(10)
    # segment 2: datapack has 5 (< 10), so flights' 35 would give it away (40 - 35)
    assert strict.rows[2].size == 40
    assert strict.rows[2].per_silo == {"flights": None, "datapack": None}
    assert strict.rows[1].per_silo == {"flights": 120, "datapack": 130}
    assert strict.suppressed_cells == 2 + 2 and strict.complementary_cells == 1
    table = strict.to_text().splitlines()
    row2 = next(line for line in table if line.startswith("2 "))
    assert row2.split() == ["2", "40", "n/s", "n/s"]  # the complement is not marked "<10"

    loose = _report(2)
    assert loose.rows[2].per_silo == {"flights": 35, "datapack": 5}
    assert loose.rows[0].per_silo == {"flights": None, "datapack": None}  # 1 < 2, then 2 as its complement
    assert loose.complementary_cells == 1


def test_counts_are_rounded_and_never_negative() -> None:
    report = _report(1, sizes=(-3.2, 250.4, 39.6),
                     per_silo={"a": np.array([-1.0, 100.5, 20.2]), "b": np.array([0.0, 150.0, 19.4])})
    assert report.rows[0].suppressed  # rounded to 0 < 1
    assert report.rows[1].size == 250 and report.rows[2].size == 40
    assert report.rows[1].per_silo == {"a": 100, "b": 150}  # banker's rounding of 100.5
    assert report.rows[2].per_silo == {"a": 20, "b": 19}


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_invalid_k_min_rejected(bad) -> None:
    with pytest.raises(ValueError, match="k_min"):
        _report(bad)


def test_report_decodes_to_feature_units_and_serialises() -> None:
    def decode(c: np.ndarray) -> dict[str, float]:
        return {"days since last order": 365 * c[0], "yearly spend (CNY)": 20000 * c[1]}

    report = segment_report(np.array([[0.1, 0.2], [0.5, 0.5]]), np.array([50.0, 80.0]), None,
                            ["recency", "spend"], decode=decode)
    assert report.rows[0].centroid == pytest.approx(
        {"days since last order": 36.5, "yearly spend (CNY)": 4000.0})
    assert report.silos == () and report.rows[0].per_silo == {}
    data = json.loads(json.dumps(report.to_dict()))
    assert data["segments"][1]["size"] == 80 and data["k_min"] == 10
    assert "10,000" in report.to_text()
    with pytest.raises(ValueError, match="feature_names"):
        segment_report(np.zeros((2, 2)), np.ones(2), None, ["only one"])


def test_two_small_cells_are_not_recoverable_from_the_total() -> None:
    """b and c are hidden, but 507 - 500 = 7 would give their (small) total away."""
    from fedprofile.client.segments import segment_report

    report = segment_report(np.full((1, 2), 0.5), np.array([507.0]),
                            {"a": np.array([500.0]), "b": np.array([3.0]),
                             "c": np.array([4.0])}, ["x", "y"], k_min=10)
    assert report.to_dict()["segments"][0]["per_silo"] == {"a": None, "b": None, "c": None}
    # hidden cells that add up to at least k_min need no complement
    report = segment_report(np.full((1, 2), 0.5), np.array([520.0]),
                            {"a": np.array([500.0]), "b": np.array([3.0]),
                             "c": np.array([17.0])}, ["x", "y"], k_min=10)
    assert report.to_dict()["segments"][0]["per_silo"] == {"a": 500, "b": None, "c": None}
    assert report.complementary_cells == 1
