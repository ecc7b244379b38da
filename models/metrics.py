"""Classification metrics as pure functions, so they can be checked by hand.

Silos cannot pool their predictions, yet the overall AUC is wanted. Each silo
therefore sends a fixed-bin histogram of its scores for positives and negatives
(counts only); summed across silos, the histograms give the pooled AUC to
within the bin width (:func:`auc_from_histograms`), and the pooled log-loss is a
plain sum divided by a count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HISTOGRAM_BINS = 2000
_EPS = 1e-7


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U), ties counted as one half.

    NaN when only one class is present, as AUC is then undefined.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"shape mismatch: {y.shape} vs {s.shape}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy, probabilities clipped to [1e-7, 1-1e-7]."""
    return log_loss_sum(y_true, probs) / max(len(np.asarray(y_true)), 1)


def log_loss_sum(y_true: np.ndarray, probs: np.ndarray) -> float:
    return float(log_losses(y_true, probs).sum())


def log_losses(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each example's binary cross-entropy (what a loss-threshold membership attack scores)."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def lift_at(y_true: np.ndarray, scores: np.ndarray, share: float = 0.1) -> float:
    """Campaign targeting lift: the positive rate among the top ``share`` by score over the overall rate.

    It answers the marketer's question "if the coupon goes to the top 10% the
    model picks, how many times more of them buy than of a random 10%?". Ties
    at the cut are broken by position (stable), which is what sending to a
    fixed-size audience does. NaN when there are no positives.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"shape mismatch: {y.shape} vs {s.shape}")
    if len(y) == 0 or y.sum() == 0:
        return float("nan")
    n = max(1, int(round(share * len(y))))
    top = np.argsort(-s, kind="stable")[:n]
    return float(y[top].mean() / y.mean())


def score_histograms(y_true: np.ndarray, probs: np.ndarray,
                     bins: int = HISTOGRAM_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Counts of positives and of negatives per equal-width score bin on [0, 1]."""
    y = np.asarray(y_true).astype(bool)
    idx = np.clip((np.asarray(probs, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)
    pos = np.bincount(idx[y], minlength=bins).astype(np.int64)
    neg = np.bincount(idx[~y], minlength=bins).astype(np.int64)
    return pos, neg


def auc_from_histograms(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray) -> float:
    """AUC from binned score counts; pairs in the same bin count one half.

    Exact when no bin holds both a positive and a negative with different
    scores; otherwise off by at most the share of such within-bin pairs.
    """
    p = np.asarray(pos, dtype=np.float64)
    n = np.asarray(neg, dtype=np.float64)
    if p.shape != n.shape:
        raise ValueError(f"histograms differ in length: {p.shape} vs {n.shape}")
    n_pos, n_neg = p.sum(), n.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(n) - n
    return float(((p * neg_below).sum() + 0.5 * (p * n).sum()) / (n_pos * n_neg))


@dataclass(frozen=True)
class BinaryEvaluation:
    """A silo's evaluation summary: aggregates that may leave the silo."""

    examples: int
    positives: int
    auc: float
    log_loss: float
    log_loss_sum: float
    pos_hist: np.ndarray
    neg_hist: np.ndarray

    @classmethod
    def of(cls, y_true: np.ndarray, probs: np.ndarray) -> BinaryEvaluation:
        pos, neg = score_histograms(y_true, probs)
        total = log_loss_sum(y_true, probs)
        return cls(
            examples=int(len(y_true)),
            positives=int(np.asarray(y_true).sum()),
            auc=roc_auc(y_true, probs),
            log_loss=total / max(len(y_true), 1),
            log_loss_sum=total,
            pos_hist=pos,
            neg_hist=neg,
        )


def pooled(evaluations: Sequence[BinaryEvaluation]) -> dict[str, float]:
    """Overall metrics over several silos' evaluations, without their rows."""
    if not evaluations:
        raise ValueError("no evaluations to pool")
    pos = np.sum([e.pos_hist for e in evaluations], axis=0)
    neg = np.sum([e.neg_hist for e in evaluations], axis=0)
    examples = sum(e.examples for e in evaluations)
    return {
        "examples": float(examples),
        "positives": float(sum(e.positives for e in evaluations)),
        "auc": auc_from_histograms(pos, neg),
        "log_loss": sum(e.log_loss_sum for e in evaluations) / max(examples, 1),
    }
