"""Empirical membership-inference audit: a statistical *lower* bound on epsilon.

An accountant proves an upper bound on a model's privacy loss; an audit
measures how much loss an attack actually demonstrates (Jagielski et al. 2020,
"Auditing differentially private machine learning"; Nasr et al. 2021). If a
threshold attack on a model trained with (eps, delta)-DP reaches false
positive rate FPR and false negative rate FNR, DP forces

    FPR + e^eps * FNR >= 1 - delta   and   FNR + e^eps * FPR >= 1 - delta,

so any observed (FPR, FNR) implies a smallest eps the mechanism can have.
Observed rates are noisy, so we use Clopper-Pearson *upper* bounds on them:
the resulting epsilon is a lower bound that holds with probability
``confidence``. A bound above the accountant's epsilon means a bug; a bound
far below it is expected (one attack is rarely optimal).

The threshold is picked on one half of the data and the bound is computed on
the other half: picking the best of many thresholds on the same data would
overfit the noise and break the confidence statement.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from fedprofile.models.metrics import roc_auc

MIN_SCORES = 4  # each class is split in two halves, and each half needs >= 2


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _cp_upper(x: np.ndarray, n: np.ndarray | int, confidence: float) -> np.ndarray:
    """Vectorised upper end of the two-sided Clopper-Pearson interval.

    That end is a one-sided upper bound at level 1 - (1 - confidence) / 2.
    """
    x = np.asarray(x, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), x.shape)
    q = 1.0 - (1.0 - confidence) / 2.0
    inner = stats.beta.ppf(q, x + 1.0, np.maximum(n - x, 1.0))
    return np.where(x < n, inner, 1.0)


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval for a proportion.

    Exact (Beta quantiles), not a normal approximation: the audit cares about
    rates near 0, where the normal interval is badly anti-conservative.
    Returns (0, upper) when ``successes == 0`` and (lower, 1) when
    ``successes == trials``.
    """
    x, n = operator.index(successes), operator.index(trials)
    if n < 1:
        raise ValueError(f"trials must be >= 1, got {n}")
    if not 0 <= x <= n:
        raise ValueError(f"successes must be in [0, trials={n}], got {x}")
    _check_confidence(confidence)
    alpha = 1.0 - confidence
    lower = 0.0 if x == 0 else float(stats.beta.ppf(alpha / 2.0, x, n - x + 1))
    return lower, float(_cp_upper(np.array(x), n, confidence))


def _epsilon_from_bounds(fpr_hi: np.ndarray, fnr_hi: np.ndarray, delta: float) -> np.ndarray:
    """max(0, log((1-delta-FNR)/FPR), log((1-delta-FPR)/FNR)); a term with numerator <= 0 is dropped."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(1.0 - delta - fnr_hi > 0, np.log((1.0 - delta - fnr_hi) / fpr_hi), 0.0)
        b = np.where(1.0 - delta - fpr_hi > 0, np.log((1.0 - delta - fpr_hi) / fnr_hi), 0.0)
    return np.maximum(0.0, np.maximum(a, b))


def epsilon_lower_bound(tp: int, fn: int, fp: int, tn: int, delta: float,
                        confidence: float = 0.95) -> float:
    """Epsilon that one threshold attack's confusion counts prove, with probability ``confidence``.

    Members are ``tp + fn``, non-members ``fp + tn``. FPR and FNR are each
    replaced by a one-sided Clopper-Pearson upper bound at level
    ``1 - (1 - confidence) / 2`` (the upper end of the two-sided interval at
    ``confidence``), so both hold together at ``confidence`` (Bonferroni).
    Upper bounds are never 0 (n >= 1), so the logs are finite.
    """
    counts = {k: operator.index(v) for k, v in {"tp": tp, "fn": fn, "fp": fp, "tn": tn}.items()}
    if any(v < 0 for v in counts.values()):
        raise ValueError(f"counts must be non-negative, got {counts}")
    if counts["tp"] + counts["fn"] < 1 or counts["fp"] + counts["tn"] < 1:
        raise ValueError(f"need at least one member and one non-member, got {counts}")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    _check_confidence(confidence)
    fpr_hi = _cp_upper(np.array(counts["fp"]), counts["fp"] + counts["tn"], confidence)
    fnr_hi = _cp_upper(np.array(counts["fn"]), counts["tp"] + counts["fn"], confidence)
    return float(_epsilon_from_bounds(fpr_hi, fnr_hi, delta))


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC (Hanley and McNeil 1982, eq. 2).

    Needs only the AUC and the class sizes, which is why it suits a report;
    it is an approximation (it assumes exponential-like score distributions).
    """
    if not 0.0 <= auc <= 1.0:
        raise ValueError(f"auc must be in [0, 1], got {auc}")
    if n_pos < 1 or n_neg < 1:
        raise ValueError(f"n_pos and n_neg must be >= 1, got {n_pos}, {n_neg}")
    q1, q2 = auc / (2.0 - auc), 2.0 * auc**2 / (1.0 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


@dataclass(frozen=True)
class AttackResult:
    """Outcome of :func:`loss_threshold_attack`; every number is on the evaluation halves."""

    auc: float
    auc_ci: tuple[float, float]
    tpr_at_fpr: dict[str, float]
    threshold: float  # chosen on the calibration halves; 'member' when score >= threshold
    tp: int
    fn: int
    fp: int
    tn: int
    epsilon_lower_bound: float
    confidence: float
    members: int
    non_members: int

    def works(self) -> bool:
        """The attack beats chance with confidence: the AUC interval lies above 0.5."""
        return bool(self.auc_ci[0] > 0.5)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["auc_ci"] = list(self.auc_ci)
        d["works"] = self.works()
        return d


def _counts_at_or_above(sorted_scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many scores are >= each threshold, by binary search (O(log n) each)."""
    return len(sorted_scores) - np.searchsorted(sorted_scores, thresholds, side="left")


def _validated(scores: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} scores contain NaN or inf ({int((~np.isfinite(s)).sum())} of {s.size})")
    if s.size < MIN_SCORES:
        raise ValueError(f"{name} scores: need at least {MIN_SCORES} values, got {s.size}")
    return s


def loss_threshold_attack(member_scores: Sequence[float] | np.ndarray,
                          non_member_scores: Sequence[float] | np.ndarray, *,
                          delta: float, confidence: float = 0.95,
                          fprs: Sequence[float] = (0.01, 0.001), seed: int = 0) -> AttackResult:
    """Threshold membership-inference attack and the epsilon it proves.

    Scores are higher for 'more likely a member' (pass minus the per-example
    loss). Each class is shuffled with ``np.random.default_rng(seed)``
    (members' permutation drawn first, then non-members') and split: the
    first ``n // 2`` form the calibration half, the remaining ``n - n // 2``
    (the ceiling) the evaluation half. The threshold is the distinct
    calibration score maximising the Clopper-Pearson epsilon on calibration
    counts (so a threshold backed by a handful of examples does not win by
    luck); it is then applied once to the evaluation halves, whose counts
    give the bound. AUC, its interval and TPR at each FPR in ``fprs`` (best
    TPR among thresholds with FPR <= that level, 0 if none) use the
    evaluation halves too.
    """
    members = _validated(member_scores, "member")
    non_members = _validated(non_member_scores, "non-member")
    _check_confidence(confidence)
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    if any(not 0.0 < f <= 1.0 for f in fprs):
        raise ValueError(f"fprs must be in (0, 1], got {list(fprs)}")

    rng = np.random.default_rng(seed)
    m, n = members[rng.permutation(members.size)], non_members[rng.permutation(non_members.size)]
    m_cal, m_eval = np.sort(m[: m.size // 2]), np.sort(m[m.size // 2:])
    n_cal, n_eval = np.sort(n[: n.size // 2]), np.sort(n[n.size // 2:])

    candidates = np.unique(np.concatenate([m_cal, n_cal]))
    fn_cal = m_cal.size - _counts_at_or_above(m_cal, candidates)
    fp_cal = _counts_at_or_above(n_cal, candidates)
    eps_cal = _epsilon_from_bounds(_cp_upper(fp_cal, n_cal.size, confidence),
                                   _cp_upper(fn_cal, m_cal.size, confidence), delta)
    threshold = float(candidates[int(np.argmax(eps_cal))])

    tp = int(_counts_at_or_above(m_eval, np.array([threshold]))[0])
    fp = int(_counts_at_or_above(n_eval, np.array([threshold]))[0])
    fn, tn = m_eval.size - tp, n_eval.size - fp

    labels = np.concatenate([np.ones(m_eval.size, bool), np.zeros(n_eval.size, bool)])
    auc = roc_auc(labels, np.concatenate([m_eval, n_eval]))
    z = float(stats.norm.ppf(1.0 - (1.0 - confidence) / 2.0))
    half = z * hanley_mcneil_se(auc, m_eval.size, n_eval.size)

    cuts = np.append(np.unique(np.concatenate([m_eval, n_eval])), np.inf)  # inf: predict nobody
    tpr = _counts_at_or_above(m_eval, cuts) / m_eval.size
    fpr = _counts_at_or_above(n_eval, cuts) / n_eval.size
    tpr_at = {f"{f:g}": float(tpr[fpr <= f].max()) for f in fprs}

    return AttackResult(
        auc=auc, auc_ci=(max(0.0, auc - half), min(1.0, auc + half)), tpr_at_fpr=tpr_at,
        threshold=threshold, tp=tp, fn=fn, fp=fp, tn=tn,
        epsilon_lower_bound=epsilon_lower_bound(tp, fn, fp, tn, delta, confidence),
        confidence=confidence, members=int(m_eval.size), non_members=int(n_eval.size))
