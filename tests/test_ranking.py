"""Ranking metrics against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedprofile.models.ranking import (RankingEvaluation, catalogue_coverage, hit_rate_at_k,
                                       intra_list_diversity, ndcg_at_k, recall_at_k)

# User 0 ranks items 3, 1, 4, 0, 2 and bought {1, 2}: hits at ranks 2 and 5.
# User 1 ranks items 0, 1, 2, 3, 4 and bought {0, 1, 2, 3}: hits at ranks 1 to 4.
RANKED = np.array([[3, 1, 4, 0, 2], [0, 1, 2, 3, 4]])
RELEVANT = [{1, 2}, {0, 1, 2, 3}]


def test_hit_rate_by_hand() -> None:
    # k=1: user 0's first item (3) is not relevant, user 1's (0) is.
    assert hit_rate_at_k(RANKED, RELEVANT, 1).tolist() == [0.0, 1.0]
    # k=2: user 0's second item (1) is relevant.
    assert hit_rate_at_k(RANKED, RELEVANT, 2).tolist() == [1.0, 1.0]


def test_ndcg_by_hand() -> None:
    # User 0, k=3: one hit at rank 2 -> DCG = 1/log2(3) = 0.630930.
    # IDCG over min(|T|=2, 3) = 2 items: 1/log2(2) + 1/log2(3) = 1.630930.
    # NDCG = 0.630930 / 1.630930 = 0.386853.
    assert ndcg_at_k(RANKED, RELEVANT, 3)[0] == pytest.approx(0.386853, abs=1e-6)
    # User 0, k=5: hits at ranks 2 and 5 -> DCG = 0.630930 + 1/log2(6) = 0.630930 + 0.386853
    # = 1.017783; IDCG still 1.630930 -> 0.624050.
    assert ndcg_at_k(RANKED, RELEVANT, 5)[0] == pytest.approx(0.624050, abs=1e-6)
    # User 1, k=2: hits at ranks 1 and 2, IDCG over min(4, 2) = 2 items: a perfect list, 1.
    assert ndcg_at_k(RANKED, RELEVANT, 2)[1] == pytest.approx(1.0)
    # User 1, k=5: hits at ranks 1..4, IDCG over min(4, 5) = 4 items: also perfect.
    assert ndcg_at_k(RANKED, RELEVANT, 5)[1] == pytest.approx(1.0)


def test_recall_is_normalised_by_min_k_and_basket() -> None:
    # User 0: k=1 -> 0 hits / min(1, 2) = 0; k=2 -> 1 / min(2, 2) = 0.5; k=5 -> 2 / 2 = 1.
    assert recall_at_k(RANKED, RELEVANT, 1)[0] == 0.0
    assert recall_at_k(RANKED, RELEVANT, 2)[0] == 0.5
    assert recall_at_k(RANKED, RELEVANT, 5)[0] == 1.0
    # User 1, k=2: 2 hits / min(2, 4) = 1 (plain recall would be 2/4 = 0.5).
    assert recall_at_k(RANKED, RELEVANT, 2)[1] == 1.0


def test_users_without_relevant_items_are_refused() -> None:
    with pytest.raises(ValueError, match="relevant"):
        hit_rate_at_k(RANKED, [{1}, set()], 2)
    with pytest.raises(ValueError, match="2 relevant sets"):
        recall_at_k(RANKED[:1], RELEVANT, 2)


def test_evaluation_holds_sums_and_merges_to_pooled_means() -> None:
    a = RankingEvaluation.from_rankings(RANKED[:1], RELEVANT[:1])
    b = RankingEvaluation.from_rankings(RANKED[1:], RELEVANT[1:])
    # With a 5-item catalogue the lists are whole: @10 and @20 score all 5 positions.
    # User 0: HR@10 = 1, NDCG@10 = 0.624050 (as k=5 above), Recall@20 = 2 / min(20, 2) = 1.
    assert (a.hr10, a.recall20, a.users) == (1.0, 1.0, 1)
    assert a.ndcg10 == pytest.approx(0.624050, abs=1e-6)
    merged = a.merge(b)
    # User 1 is perfect on all three: sums 2, 1.624050, 2 over 2 users.
    assert merged == RankingEvaluation.from_rankings(RANKED, RELEVANT)
    means = merged.means()
    assert means["hr@10"] == 1.0 and means["recall@20"] == 1.0 and means["users"] == 2
    assert means["ndcg@10"] == pytest.approx(1.624050 / 2, abs=1e-6)
    assert math.isnan(RankingEvaluation().means()["hr@10"])


def test_coverage_by_hand() -> None:
    # Items 0, 1, 2 are shown to someone: 3 of a 10-item catalogue.
    assert catalogue_coverage([[0, 1], [1, 2]], 10) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="outside"):
        catalogue_coverage([[0, 10]], 10)


def test_intra_list_diversity_by_hand() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # [0, 1]: cos = 0 -> distance 1.  [0, 2]: cos = 1/sqrt(2) = 0.707107 -> 0.292893.
    # Mean over the two lists: (1 + 0.292893) / 2 = 0.646447.
    assert intra_list_diversity([[0, 1], [0, 2]], vectors) == pytest.approx(0.646447, abs=1e-6)
    # [0, 1, 2]: pairs (0,1) 1, (0,2) 0.292893, (1,2) 0.292893 -> mean 0.528595.
    assert intra_list_diversity([[0, 1, 2]], vectors) == pytest.approx(0.528595, abs=1e-6)
    # A single-item list has no pair: skipped; nothing left is NaN.
    assert intra_list_diversity([[0, 1], [2]], vectors) == pytest.approx(1.0)
    assert math.isnan(intra_list_diversity([[2]], vectors))
