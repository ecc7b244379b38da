"""Top-k ranking metrics as pure functions, so they can be checked by hand.

Each metric takes ``ranked`` (one row of item indices per user, best first)
and ``relevant`` (each user's set of held-out items) and returns one value per
user; :class:`RankingEvaluation` keeps their *sums* and the user count, because
silos cannot pool their users: each silo reports sums, the server adds them
(:meth:`RankingEvaluation.merge`) and divides once, which gives exactly the
pooled mean over all evaluated users.

A user with no relevant item has no defined recall or NDCG; such users must be
left out before calling (the recommender's test data does so).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np


def _check(ranked: np.ndarray, relevant: Sequence[Collection[int]], k: int) -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be 2-D (users x positions), got shape {ranked.shape}")
    if len(relevant) != len(ranked):
        raise ValueError(f"{len(ranked)} ranked lists for {len(relevant)} relevant sets")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if any(len(t) == 0 for t in relevant):
        raise ValueError("every user needs at least one relevant item")
    return ranked


def hits(ranked: np.ndarray, relevant: Sequence[Collection[int]], k: int) -> np.ndarray:
    """Boolean (users x min(k, positions)): is the item at each of the top k positions relevant."""
    ranked = _check(ranked, relevant, k)[:, :k]
    out = np.zeros(ranked.shape, dtype=bool)
    for u, targets in enumerate(relevant):
        out[u] = np.isin(ranked[u], np.fromiter(targets, dtype=np.int64, count=len(targets)))
    return out


def hit_rate_at_k(ranked: np.ndarray, relevant: Sequence[Collection[int]], k: int) -> np.ndarray:
    """1.0 where any of the top k items is relevant, else 0.0 (per user)."""
    return hits(ranked, relevant, k).any(axis=1).astype(np.float64)


def ndcg_at_k(ranked: np.ndarray, relevant: Sequence[Collection[int]], k: int) -> np.ndarray:
    """Binary-relevance NDCG@k per user.

    DCG = sum over relevant items at rank r (1-based) <= k of 1 / log2(r + 1);
    the ideal DCG puts min(|T|, k) relevant items first, so a perfect list scores 1.
    """
    h = hits(ranked, relevant, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = (h * discounts[: h.shape[1]]).sum(axis=1)
    ideal_counts = np.minimum([len(t) for t in relevant], k).astype(np.int64)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[ideal_counts]
    return dcg / ideal


def recall_at_k(ranked: np.ndarray, relevant: Sequence[Collection[int]], k: int) -> np.ndarray:
    """|top k ∩ T| / min(k, |T|) per user.

    This is the *normalised* recall of Liang et al. 2018 ("Variational
    Autoencoders for Collaborative Filtering"), not |top k ∩ T| / |T|: with the
    plain denominator a user with more held-out items than k could never reach
    1, so users with big baskets would drag the mean down whatever the model.
    """
    h = hits(ranked, relevant, k)
    return h.sum(axis=1) / np.minimum([len(t) for t in relevant], k)


@dataclass(frozen=True)
class RankingEvaluation:
    """Sums of per-user HR@10, NDCG@10 and Recall@20 over ``users`` evaluated users."""

    hr10: float = 0.0
    ndcg10: float = 0.0
    recall20: float = 0.0
    users: int = 0

    @classmethod
    def from_rankings(cls, ranked: np.ndarray, relevant: Sequence[Collection[int]]
                      ) -> RankingEvaluation:
        """Sums over these users.

        ``ranked`` should have at least 20 positions; a shorter row (a catalogue
        of fewer than 20 items) is scored as the whole list.
        """
        ranked = np.asarray(ranked)
        if len(relevant) == 0:
            return cls()
        return cls(hr10=float(hit_rate_at_k(ranked, relevant, 10).sum()),
                   ndcg10=float(ndcg_at_k(ranked, relevant, 10).sum()),
                   recall20=float(recall_at_k(ranked, relevant, 20).sum()),
                   users=len(relevant))

    def merge(self, other: RankingEvaluation) -> RankingEvaluation:
        """The evaluation over both sets of users (disjoint, as silos' customers are)."""
        return RankingEvaluation(hr10=self.hr10 + other.hr10, ndcg10=self.ndcg10 + other.ndcg10,
                                 recall20=self.recall20 + other.recall20,
                                 users=self.users + other.users)

    def means(self) -> dict[str, float]:
        """Per-user means; NaN when no user was evaluated (a mean over nobody is undefined)."""
        n = self.users
        nan = float("nan")
        return {"hr@10": self.hr10 / n if n else nan, "ndcg@10": self.ndcg10 / n if n else nan,
                "recall@20": self.recall20 / n if n else nan, "users": float(n)}


def catalogue_coverage(lists: Sequence[Sequence[int]], n_items: int) -> float:
    """Share of the catalogue recommended to at least one user.

    Low coverage means everyone is shown the same few best-sellers: what
    exploration and diversity are meant to counter.
    """
    if n_items < 1:
        raise ValueError("the catalogue is empty")
    shown = {int(i) for row in lists for i in row}
    if any(i < 0 or i >= n_items for i in shown):
        raise ValueError("a recommended item is outside the catalogue")
    return len(shown) / n_items


def intra_list_diversity(lists: Sequence[Sequence[int]], item_vectors: np.ndarray) -> float:
    """Mean over lists of the mean pairwise cosine distance (1 - cosine) of their items.

    Measured in the model's own item space, it says how different the items a
    customer is shown are from each other. Lists with fewer than two items have
    no pairs and are skipped; NaN when no list has a pair.
    """
    vectors = np.asarray(item_vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    per_list = []
    for row in lists:
        idx = np.asarray(row, dtype=np.int64)
        m = len(idx)
        if m < 2:
            continue
        sims = unit[idx] @ unit[idx].T
        pair_sum = (sims.sum() - np.trace(sims)) / 2.0
        per_list.append(1.0 - pair_sum / (m * (m - 1) / 2.0))
    return float(np.mean(per_list)) if per_list else float("nan")
