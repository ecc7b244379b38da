"""Metric functions against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedprofile.models.metrics import (BinaryEvaluation, auc_from_histograms, log_loss,
                                       pooled, roc_auc, score_histograms)


def test_auc_hand_computed() -> None:
    # positives 0.8, 0.4; negatives 0.5, 0.1 -> pairs won: (0.8>0.5),(0.8>0.1),(0.4>0.1) = 3 of 4
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.8, 0.5, 0.4, 0.1])) == pytest.approx(0.75)


def test_auc_ties_count_half() -> None:
    assert roc_auc(np.array([1, 0]), np.array([0.3, 0.3])) == pytest.approx(0.5)
    # pos 0.5 vs neg 0.5 (tie) and neg 0.2 (win) -> 1.5 / 2
    assert roc_auc(np.array([1, 0, 0]), np.array([0.5, 0.5, 0.2])) == pytest.approx(0.75)


def test_auc_extremes_and_undefined() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.4])))


def test_log_loss_hand_computed() -> None:
    expected = -(math.log(0.8) + math.log(1 - 0.3)) / 2
    assert log_loss(np.array([1, 0]), np.array([0.8, 0.3])) == pytest.approx(expected)
    assert math.isfinite(log_loss(np.array([1]), np.array([0.0])))  # clipped, not inf


def test_histogram_auc_matches_exact() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(5000) < 0.3
    scores = np.clip(rng.normal(0.3 + 0.2 * y, 0.15), 0, 1)
    pos, neg = score_histograms(y, scores)
    assert pos.sum() == y.sum() and neg.sum() == (~y).sum()
    assert auc_from_histograms(pos, neg) == pytest.approx(roc_auc(y, scores), abs=2e-3)


def test_histogram_auc_hand_computed() -> None:
    # bin0: 1 neg; bin1: 1 pos + 1 neg; bin2: 1 pos -> (0*.. ) pos in bin1 beats 1 neg below,
    # ties half with bin1 neg: 1 + 0.5; pos in bin2 beats 2 negs -> total 3.5 / (2*2)
    assert auc_from_histograms([0, 1, 1], [1, 1, 0]) == pytest.approx(3.5 / 4)


def test_pooled_equals_auc_of_concatenation() -> None:
    rng = np.random.default_rng(5)
    parts = []
    for shift in (0.0, 0.1, -0.05):
        y = rng.random(2000) < 0.25
        parts.append((y, np.clip(rng.normal(0.35 + shift + 0.2 * y, 0.12), 0, 1)))
    result = pooled([BinaryEvaluation.of(y, s) for y, s in parts])
    all_y = np.concatenate([p[0] for p in parts])
    all_s = np.concatenate([p[1] for p in parts])
    assert result["auc"] == pytest.approx(roc_auc(all_y, all_s), abs=2e-3)
    assert result["log_loss"] == pytest.approx(log_loss(all_y, all_s))
    assert result["examples"] == 6000
