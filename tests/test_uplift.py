"""Qini / uplift curves against hand computation and a population with known uplift."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fedprofile.models.uplift import (auuc, qini_coefficient, qini_curve, uplift_at_k,
                                      uplift_curve)

# Six customers, already in score order:
#   score    0.9 0.8 0.7 0.6 0.5 0.4
#   treated   1   0   1   0   1   0
#   outcome   1   0   1   1   0   0
SCORE = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
TREATED = np.array([1, 0, 1, 0, 1, 0])
OUTCOME = np.array([1, 0, 1, 1, 0, 0])


def test_qini_curve_hand_computed() -> None:
    # t  N_T Y_T N_C Y_C   Q = Y_T - Y_C * N_T / N_C
    # 1   1   1   0   0    1 - 0           = 1   (no control yet: control term 0)
    # 2   1   1   1   0    1 - 0 * 1/1     = 1
    # 3   2   2   1   0    2 - 0           = 2
    # 4   2   2   2   1    2 - 1 * 2/2     = 1
    # 5   3   2   2   1    2 - 1 * 3/2     = 0.5
    # 6   3   2   3   1    2 - 1 * 3/3     = 1
    x, q = qini_curve(SCORE, TREATED, OUTCOME)
    assert x == pytest.approx(np.arange(7) / 6)
    assert q == pytest.approx([0, 1, 1, 2, 1, 0.5, 1])


def test_uplift_curve_hand_computed() -> None:
    # U = (Y_T/N_T - Y_C/N_C) * t, an empty group's rate counted as 0
    # t=1: (1 - 0) * 1 = 1;  t=2: (1 - 0/1) * 2 = 2;  t=3: (2/2 - 0) * 3 = 3
    # t=4: (1 - 1/2) * 4 = 2;  t=5: (2/3 - 1/2) * 5 = 5/6;  t=6: (2/3 - 1/3) * 6 = 2
    x, u = uplift_curve(SCORE, TREATED, OUTCOME)
    assert x == pytest.approx(np.arange(7) / 6)
    assert u == pytest.approx([0, 1, 2, 3, 2, 5 / 6, 2])


def test_areas_hand_computed() -> None:
    # Qini trapezoids, width 1/6: (0+1)/2 + (1+1)/2 + (1+2)/2 + (2+1)/2 + (1+.5)/2 + (.5+1)/2
    #   = 0.5 + 1 + 1.5 + 1.5 + 0.75 + 0.75 = 6 -> area 6/6 = 1; random line area Q(6)/2 = 0.5
    #   qini coefficient = (1 - 0.5) / 6 = 1/12
    assert qini_coefficient(SCORE, TREATED, OUTCOME) == pytest.approx(1 / 12)
    # uplift trapezoids: 0.5 + 1.5 + 2.5 + 2.5 + (2+5/6)/2 + (5/6+2)/2 = 7 + 17/6 = 59/6
    #   area = 59/6 * 1/6 = 59/36; per customer 59/216
    assert auuc(SCORE, TREATED, OUTCOME) == pytest.approx(59 / 216)


def test_normalised_areas_hand_computed() -> None:
    # Oracle order: treated converters (customers 1, 3) | customers 2, 5, 6 (tied) | control
    # converter 4. Qini at group ends: t=2: 2 - 0 = 2; t=5: N_T=3, Y_T=2, N_C=2, Y_C=0 -> 2;
    # t=6: 2 - 1 * 3/3 = 1. Area = (0+2)/2*(2/6) + (2+2)/2*(3/6) + (2+1)/2*(1/6) = 9.5/6,
    # minus 1/2 -> 6.5/6. Model: 0.5 (above) -> 0.5 / (6.5/6) = 6/13.
    assert qini_coefficient(SCORE, TREATED, OUTCOME, normalize=True) == pytest.approx(6 / 13)
    # Oracle uplift curve: t=2: (1 - 0) * 2 = 2; t=5: (2/3 - 0) * 5 = 10/3; t=6: 2.
    # Area = (0+2)/2*(2/6) + (2+10/3)/2*(3/6) + (10/3+2)/2*(1/6) = 19/9; minus U(6)/2 = 1 -> 10/9.
    # Model: 59/36 - 1 = 23/36 -> (23/36) / (10/9) = 23/40.
    assert auuc(SCORE, TREATED, OUTCOME, normalize=True) == pytest.approx(23 / 40)
    oracle = OUTCOME * TREATED - OUTCOME * (1 - TREATED)
    assert qini_coefficient(oracle, TREATED, OUTCOME, normalize=True) == pytest.approx(1.0)


def test_uplift_at_k_hand_computed() -> None:
    # top 3: treated 2 of 2 converted, control 0 of 1 -> 1 - 0 = 1
    assert uplift_at_k(SCORE, TREATED, OUTCOME, 0.5) == pytest.approx(1.0)
    # top 4: treated 2/2, control 1/2 -> 0.5
    assert uplift_at_k(SCORE, TREATED, OUTCOME, 4 / 6) == pytest.approx(0.5)
    # top ceil(0.1 * 6) = 1 customer: nobody in control -> undefined
    assert math.isnan(uplift_at_k(SCORE, TREATED, OUTCOME, 0.1))
    # everyone: 2/3 - 1/3
    assert uplift_at_k(SCORE, TREATED, OUTCOME, 1.0) == pytest.approx(1 / 3)


def test_uplift_at_k_rounds_float_noise_not_up() -> None:
    # 0.3 * 10 = 3.0000000000000004 in floating point: the cut must be 3 customers, not 4.
    # Top 3: treated 1/1, control 0/2 -> 1.0; a 4th customer (treated, not converted) would
    # give 1/2 - 0 = 0.5.
    score = np.arange(10, 0, -1)
    treated = np.array([1, 0, 0, 1, 0, 1, 0, 1, 0, 1])
    outcome = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    assert uplift_at_k(score, treated, outcome, 0.3) == pytest.approx(1.0)


def test_ties_are_grouped() -> None:
    # scores 1,1,0,0: one point after the tied pair: N_T=1, Y_T=1, N_C=1, Y_C=0 -> Q = 1;
    # then everyone: N_T=2, Y_T=1, N_C=2, Y_C=1 -> 1 - 1 * 2/2 = 0
    score, treated, outcome = [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]
    x, q = qini_curve(score, treated, outcome)
    assert x == pytest.approx([0, 0.5, 1]) and q == pytest.approx([0, 1, 0])
    # top 1 of a tied pair: half of each -> treated 0.5 converted of 0.5, control 0 of 0.5
    assert uplift_at_k(score, treated, outcome, 0.25) == pytest.approx(1.0)
    # the tied pair listed the other way round: same answer (taking the first row would
    # leave only a control customer in the top 1 and give NaN)
    assert uplift_at_k(score, [0, 1, 1, 0], [0, 1, 0, 1], 0.25) == pytest.approx(1.0)


def test_invariant_to_shuffling_within_ties() -> None:
    rng = np.random.default_rng(3)
    n = 600
    score = rng.integers(0, 5, n).astype(float)  # five heavily tied score values
    treated = rng.integers(0, 2, n)
    outcome = (rng.random(n) < 0.2 + 0.1 * treated * (score >= 3)).astype(int)
    base = (qini_curve(score, treated, outcome), uplift_curve(score, treated, outcome),
            qini_coefficient(score, treated, outcome), auuc(score, treated, outcome),
            uplift_at_k(score, treated, outcome, 0.3))
    for _ in range(5):
        p = rng.permutation(n)
        s, t, y = score[p], treated[p], outcome[p]
        assert qini_curve(s, t, y)[1] == pytest.approx(base[0][1], abs=1e-9)
        assert uplift_curve(s, t, y)[1] == pytest.approx(base[1][1], abs=1e-9)
        assert qini_coefficient(s, t, y) == pytest.approx(base[2], abs=1e-12)
        assert auuc(s, t, y) == pytest.approx(base[3], abs=1e-12)
        assert uplift_at_k(s, t, y, 0.3) == pytest.approx(base[4], abs=1e-12)
    assert len(base[0][0]) == 6  # 0 plus one point per distinct score


def test_n_points_resamples_linearly() -> None:
    # Q at x = 0, 1/2, 1 is 0, 2, 1 (the hand-computed curve above at t = 0, 3, 6)
    x, q = qini_curve(SCORE, TREATED, OUTCOME, n_points=3)
    assert x == pytest.approx([0, 0.5, 1]) and q == pytest.approx([0, 2, 1])
    # x = 1/12 lies halfway between t=0 (Q=0) and t=1 (Q=1)
    x, u = uplift_curve(SCORE, TREATED, OUTCOME, n_points=13)
    assert len(x) == 13 and u[1] == pytest.approx(0.5) and u[-1] == pytest.approx(2.0)


def _population(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature x ~ U(0,1); baseline rate 0.1; the campaign adds 0.2 for x > 0.8, nothing else."""
    x = rng.random(n)
    treated = (rng.random(n) < 0.5).astype(int)
    outcome = (rng.random(n) < 0.1 + 0.2 * treated * (x > 0.8)).astype(int)
    return x, treated, outcome


def test_random_targeting_has_zero_qini_in_expectation() -> None:
    # Under a random order E[Y_C(t) N_T(t)/N_C(t) | N_T, N_C] = N_T(t) p_C, so E[Q(t)] is on the
    # straight line t/n * Q(n) (up to the N_C = 0 start) and the coefficient averages 0.
    rng = np.random.default_rng(11)
    x, treated, outcome = _population(rng, 2000)
    draws = np.array([qini_coefficient(rng.random(2000), treated, outcome) for _ in range(400)])
    se = draws.std(ddof=1) / math.sqrt(len(draws))
    assert abs(draws.mean()) < 4 * se
    truth = qini_coefficient(x, treated, outcome)
    assert truth > np.quantile(draws, 0.99) and truth > 0.003  # clearly positive


def test_true_ranking_beats_random_and_recovers_top_group_uplift() -> None:
    rng = np.random.default_rng(5)
    n = 20000
    x, treated, outcome = _population(rng, n)
    random_score = rng.random(n)
    assert qini_coefficient(x, treated, outcome) > qini_coefficient(random_score, treated, outcome) + 0.005
    assert auuc(x, treated, outcome) > auuc(random_score, treated, outcome) + 0.01
    assert qini_coefficient(x, treated, outcome, normalize=True) > \
        qini_coefficient(random_score, treated, outcome, normalize=True) + 0.05
    assert auuc(x, treated, outcome, normalize=True) > auuc(random_score, treated, outcome, normalize=True)
    # top 20% by x is the x > 0.8 group, true uplift 0.3 - 0.1 = 0.2. About 2000 per arm there:
    # SE = sqrt(0.3*0.7/2000 + 0.1*0.9/2000) = 0.0122; allow 4 SE.
    assert uplift_at_k(x, treated, outcome, 0.2) == pytest.approx(0.2, abs=4 * 0.0122)
    # the bottom 80% has no uplift: the top 100% dilutes it to 0.2 * 0.2 = 0.04 (SE ~0.0051)
    assert uplift_at_k(x, treated, outcome, 1.0) == pytest.approx(0.04, abs=4 * 0.0051)


@pytest.mark.parametrize("kwargs, name", [
    ({"treated": [1, 0, 1]}, "treated"),
    ({"treated": [1, 1, 1, 1]}, "treated"),
    ({"treated": [1, 0, 2, 0]}, "treated"),
    ({"outcome": [0, 1, 0.5, 0]}, "outcome"),
    ({"score": [0.1, np.nan, 0.3, 0.4]}, "score"),
    ({"score": []}, "score"),
    ({"score": ["a", "b", "c", "d"]}, "score"),
])
def test_bad_input_raises(kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"score": [0.4, 0.3, 0.2, 0.1], "treated": [1, 0, 1, 0],
                               "outcome": [1, 0, 0, 1]}
    args.update(kwargs)
    for fn in (qini_curve, uplift_curve, qini_coefficient, auuc):
        with pytest.raises(ValueError, match=name):
            fn(args["score"], args["treated"], args["outcome"])  # type: ignore[arg-type]


def test_bad_k_and_n_points_raise() -> None:
    for k in (0.0, 1.5, -0.2, True):
        with pytest.raises(ValueError, match="k_fraction"):
            uplift_at_k(SCORE, TREATED, OUTCOME, k)  # type: ignore[arg-type]
    for n_points in (1, 2.5):
        with pytest.raises(ValueError, match="n_points"):
            qini_curve(SCORE, TREATED, OUTCOME, n_points=n_points)  # type: ignore[arg-type]


def test_qini_plot_is_written(tmp_path: Path) -> None:
    from fedprofile.simulations.campaign_plots import plot_qini

    rng = np.random.default_rng(2)
    x, treated, outcome = _population(rng, 3000)
    curves = {"true uplift": qini_curve(x, treated, outcome, n_points=101),
              "random": qini_curve(rng.random(3000), treated, outcome, n_points=101)}
    out = plot_qini(curves, tmp_path / "qini.png")
    assert out == tmp_path / "qini.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    # curves from different populations end in different places: one random line each
    other = plot_qini({"a": ([0, 1], [0, 3]), "b": ([0, 0.5, 1], [0, 2, 5])}, tmp_path / "two.png")
    assert other.stat().st_size > 5000
    for bad in ({}, {"a": ([0, 1], [0, 1, 2])}, {"a": (["x", "y"], [0, 1])}):
        with pytest.raises(ValueError, match="curves"):
            plot_qini(bad, tmp_path / "bad.png")  # type: ignore[arg-type]
    assert not (tmp_path / "bad.png").exists()
