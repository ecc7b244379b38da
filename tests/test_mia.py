"""fedprofile.simulations.mia: the membership-inference audit and its statistics.

The key property: on a mechanism whose true epsilon is known (Gaussian DP,
where the member and non-member score distributions are N(mu, 1) and N(0, 1)),
the audited bound must be positive when there is signal and never exceed the
true epsilon.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import optimize, stats

from fedprofile.simulations.mia import (
    AttackResult,
    clopper_pearson,
    epsilon_lower_bound,
    hanley_mcneil_se,
    loss_threshold_attack,
)

DELTA = 1e-5


def gdp_epsilon(mu: float, delta: float) -> float:
    """True epsilon of mu-GDP at delta (Dong, Roth and Su 2019, Cor. 2.13)."""
    def excess(eps: float) -> float:
        return (stats.norm.cdf(-eps / mu + mu / 2)
                - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta)
    return optimize.brentq(excess, 0.0, 100.0)


def place(cal: np.ndarray, evl: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Arrange scores so that the documented split puts `cal` in calibration, `evl` in evaluation."""
    out = np.empty(len(cal) + len(evl))
    out[perm[: len(cal)]] = cal
    out[perm[len(cal):]] = evl
    return out


def split_perms(n_members: int, n_non_members: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The module's documented split: members' permutation first, then non-members'."""
    rng = np.random.default_rng(seed)
    return rng.permutation(n_members), rng.permutation(n_non_members)


# --- Clopper-Pearson ---------------------------------------------------------

@pytest.mark.parametrize("x, n, expected", [
    (0, 10, (0.0, 0.3085)),
    (5, 10, (0.1871, 0.8129)),
    (10, 10, (0.6915, 1.0)),
    (1, 20, (0.0013, 0.2487)),
])
def test_clopper_pearson_published_values(x, n, expected):
    assert clopper_pearson(x, n) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("x, n", [(1, 7), (3, 50), (49, 50), (0, 1000)])
def test_clopper_pearson_inverts_binomial_tails(x, n):
    """Independent check: each end puts exactly alpha/2 of binomial mass beyond x."""
    lo, hi = clopper_pearson(x, n, confidence=0.9)
    assert stats.binom.cdf(x, n, hi) == pytest.approx(0.05, abs=1e-9)
    if x > 0:
        assert stats.binom.sf(x - 1, n, lo) == pytest.approx(0.05, abs=1e-9)
    else:
        assert lo == 0.0


def test_clopper_pearson_zero_successes_closed_form():
    assert clopper_pearson(0, 1000)[1] == pytest.approx(1 - 0.025 ** (1 / 1000), rel=1e-12)


@pytest.mark.parametrize("x, n, conf, match", [
    (-1, 10, 0.95, "successes"), (11, 10, 0.95, "successes"), (0, 0, 0.95, "trials"),
    (1, 10, 0.0, "confidence"), (1, 10, 1.0, "confidence"),
])
def test_clopper_pearson_validation(x, n, conf, match):
    with pytest.raises(ValueError, match=match):
        clopper_pearson(x, n, conf)


# --- epsilon lower bound -----------------------------------------------------

def test_epsilon_perfect_separation_by_hand():
    hi = 1 - 0.025 ** (1 / 1000)  # one-sided 97.5 % CP upper bound on 0/1000
    expected = math.log((1 - DELTA - hi) / hi)
    assert epsilon_lower_bound(1000, 0, 0, 1000, DELTA) == pytest.approx(expected, rel=1e-10)
    assert expected > 5


def test_epsilon_grows_with_evidence():
    small = epsilon_lower_bound(100, 0, 0, 100, DELTA)
    large = epsilon_lower_bound(10_000, 0, 0, 10_000, DELTA)
    assert 0 < small < large


def test_epsilon_chance_level_is_zero():
    assert epsilon_lower_bound(500, 500, 500, 500, DELTA) == 0.0
    assert epsilon_lower_bound(0, 10, 0, 10, DELTA) == 0.0  # predicts nobody


def test_epsilon_symmetric_in_error_types():
    a = epsilon_lower_bound(900, 100, 10, 990, DELTA)
    b = epsilon_lower_bound(990, 10, 100, 900, DELTA)  # members and non-members swapped
    assert a > 0 and a == pytest.approx(b, rel=1e-12)


def test_epsilon_more_confidence_means_lower_bound():
    assert epsilon_lower_bound(990, 10, 10, 990, DELTA, 0.99) < epsilon_lower_bound(990, 10, 10, 990, DELTA, 0.9)


@pytest.mark.parametrize("args, match", [
    ((-1, 5, 5, 5, DELTA), "non-negative"), ((0, 0, 5, 5, DELTA), "member"),
    ((5, 5, 5, 5, 1.0), "delta"), ((5, 5, 5, 5, -0.1), "delta"),
])
def test_epsilon_validation(args, match):
    with pytest.raises(ValueError, match=match):
        epsilon_lower_bound(*args)


# --- AUC standard error ------------------------------------------------------

def test_hanley_mcneil_by_hand():
    # A = 0.8, 10 positives, 20 negatives: Q1 = 0.8/1.2 = 2/3, Q2 = 2*0.64/1.8 = 32/45
    var = (0.8 * 0.2 + 9 * (2 / 3 - 0.64) + 19 * (32 / 45 - 0.64)) / 200
    assert var == pytest.approx(0.0087556, abs=1e-7)
    assert hanley_mcneil_se(0.8, 10, 20) == pytest.approx(math.sqrt(var), rel=1e-12)
    assert hanley_mcneil_se(1.0, 10, 20) == 0.0
    with pytest.raises(ValueError, match="auc"):
        hanley_mcneil_se(1.2, 10, 20)
    with pytest.raises(ValueError, match="n_pos"):
        hanley_mcneil_se(0.5, 0, 20)


# --- the attack --------------------------------------------------------------

def gaussian_scores(mu: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(mu, 1.0, n), rng.normal(0.0, 1.0, n)


def test_bound_is_valid_under_gaussian_dp():
    true_eps = gdp_epsilon(1.0, DELTA)
    assert true_eps == pytest.approx(4.377, abs=1e-3)
    result = loss_threshold_attack(*gaussian_scores(1.0, 20_000, seed=1), delta=DELTA)
    assert 0.0 <= result.epsilon_lower_bound <= true_eps


def test_strong_signal_is_detected():
    result = loss_threshold_attack(*gaussian_scores(3.0, 20_000, seed=2), delta=DELTA)
    assert 1.0 < result.epsilon_lower_bound <= gdp_epsilon(3.0, DELTA)
    assert result.works() and result.auc > 0.9
    expected_auc = stats.norm.cdf(3.0 / math.sqrt(2))  # P(N(3,1) > N(0,1))
    assert result.auc_ci[0] <= expected_auc <= result.auc_ci[1]


def test_no_signal():
    rng = np.random.default_rng(3)
    result = loss_threshold_attack(rng.normal(size=20_000), rng.normal(size=20_000), delta=DELTA)
    assert result.auc == pytest.approx(0.5, abs=0.02)
    assert not result.works()
    assert result.epsilon_lower_bound < 0.5


def test_threshold_comes_from_calibration_half_only():
    """Calibration members score 10, evaluation members 5: a threshold fitted on the
    evaluation half would be 5 and catch every member; fitted on calibration it is 10."""
    perm_m, perm_n = split_perms(40, 40, seed=7)
    members = place(np.full(20, 10.0), np.full(20, 5.0), perm_m)
    non_members = np.linspace(0.0, 1.0, 40)[np.argsort(perm_n)]
    result = loss_threshold_attack(members, non_members, delta=DELTA, seed=7)
    assert result.threshold == 10.0
    assert (result.tp, result.fn, result.fp, result.tn) == (0, 20, 0, 20)
    assert result.epsilon_lower_bound == 0.0
    assert result.auc == 1.0  # evaluation members still all outscore non-members


def test_halves_sizes_and_determinism():
    rng = np.random.default_rng(4)
    members, non_members = rng.normal(1, 1, 21), rng.normal(0, 1, 30)
    a = loss_threshold_attack(members, non_members, delta=DELTA, seed=5)
    assert (a.members, a.non_members) == (11, 15)  # evaluation gets the ceiling of n / 2
    assert (a.tp + a.fn, a.fp + a.tn) == (11, 15)
    assert loss_threshold_attack(members, non_members, delta=DELTA, seed=5) == a
    thresholds = {loss_threshold_attack(members, non_members, delta=DELTA, seed=s).threshold
                  for s in range(6)}
    assert len(thresholds) > 1


def test_tpr_at_fpr_on_tiny_example():
    perm_m, perm_n = split_perms(8, 8, seed=0)
    members = place(np.full(4, 9.0), np.array([0.5, 2.5, 3.5, 4.5]), perm_m)
    non_members = place(np.full(4, -9.0), np.array([0.0, 1.0, 2.0, 3.0]), perm_n)
    result = loss_threshold_attack(members, non_members, delta=DELTA, fprs=(0.1, 0.25, 0.5, 1.0))
    # threshold 3.5: FPR 0, TPR 2/4; 2.5: FPR 1/4, TPR 3/4; 0.5: FPR 3/4, TPR 1
    assert result.tpr_at_fpr == {"0.1": 0.5, "0.25": 0.75, "0.5": 0.75, "1": 1.0}
    assert result.auc == pytest.approx(12 / 16)  # pairs member > non-member: 1+3+4+4


def test_tpr_at_fpr_is_zero_when_top_score_is_a_non_member():
    perm_m, perm_n = split_perms(8, 8, seed=0)
    members = place(np.zeros(4), np.array([1.0, 2.0, 3.0, 4.0]), perm_m)
    non_members = place(np.zeros(4), np.array([5.0, 0.0, 0.0, 0.0]), perm_n)
    result = loss_threshold_attack(members, non_members, delta=DELTA, fprs=(0.1,))
    assert result.tpr_at_fpr == {"0.1": 0.0}


def test_to_dict_is_json_ready():
    result = loss_threshold_attack(*gaussian_scores(2.0, 200, seed=6), delta=DELTA)
    d = result.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["works"] is result.works() and isinstance(d["auc_ci"], list)
    assert set(d) == set(AttackResult.__dataclass_fields__) | {"works"}


@pytest.mark.parametrize("members, non_members, match", [
    ([1, 2, 3], [1, 2, 3, 4], r"^member scores: need at least 4 values, got 3"),
    ([1, 2, 3, 4], [1, 2], r"^non-member scores: need at least 4 values, got 2"),
    ([1, 2, np.nan, 4, 5], [1, 2, 3, 4], r"^member scores contain NaN or inf"),
    ([1, 2, 3, 4], [1, 2, 3, np.inf], r"^non-member scores contain NaN or inf"),
])
def test_attack_validation(members, non_members, match):
    with pytest.raises(ValueError, match=match):
        loss_threshold_attack(members, non_members, delta=DELTA)


def test_works_needs_the_whole_interval_above_chance():
    base = loss_threshold_attack(*gaussian_scores(3.0, 200, seed=8), delta=DELTA)
    fields = {k: getattr(base, k) for k in AttackResult.__dataclass_fields__}
    assert not AttackResult(**{**fields, "auc": 0.55, "auc_ci": (0.49, 0.61)}).works()
    assert AttackResult(**{**fields, "auc": 0.55, "auc_ci": (0.51, 0.59)}).works()
