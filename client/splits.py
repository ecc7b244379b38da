"""Time-ordered leave-last-out split of a silo's interactions, by basket.

A recommender is used to predict what a customer buys *next*, so it is
evaluated the same way: each customer's last purchase is held out and the model
sees only what came before it. A random split would let the model train on a
customer's future and would flatter it.

The unit held out is a *basket* (one invoice: all the lines of a customer that
share a timestamp), not a single item. Every line of an invoice carries the
same timestamp, so "the last item" of a customer would be an arbitrary pick
among ties (in practice, the alphabetically last stock code), and the other
items of that same invoice, bought at the same moment, would stay in training:
a leak from the future. Holding out the whole last basket avoids both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .interactions import Interactions


@dataclass(frozen=True)
class Split:
    """Training and test interactions over the same users (``users`` arrays are equal).

    ``evaluated[u]`` is True when user ``u`` has a held-out last basket in
    ``test``; users with a single basket are training-only (their only basket
    is all the history there is, and nothing comes after it to predict).
    """

    train: Interactions
    test: Interactions
    evaluated: np.ndarray  # bool, per user

    @property
    def n_evaluated(self) -> int:
        return int(self.evaluated.sum())


def basket_ids(inter: Interactions) -> np.ndarray:
    """A basket number per interaction: equal exactly when user and timestamp are equal.

    Numbers increase with (user, timestamp), since interactions are sorted that way.
    """
    n = len(inter)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    new = np.ones(n, dtype=bool)
    new[1:] = (inter.user_index[1:] != inter.user_index[:-1]) | (
        inter.timestamp[1:] != inter.timestamp[:-1])
    return np.cumsum(new) - 1


def baskets_per_user(inter: Interactions) -> np.ndarray:
    """Number of distinct baskets (timestamps) of each user; 0 for a user with none."""
    ids = basket_ids(inter)
    if len(ids) == 0:
        return np.zeros(inter.n_users, dtype=np.int64)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return np.bincount(inter.user_index[first], minlength=inter.n_users).astype(np.int64)


def leave_last_out(inter: Interactions) -> Split:
    """Hold out each user's last basket when they have at least two baskets.

    Everything strictly before the last basket's timestamp is training; users
    with one basket keep it in training and are not evaluated.
    """
    n_baskets = baskets_per_user(inter)
    bounds = inter.user_bounds()
    has_rows = bounds[1:] > bounds[:-1]
    last_ts = np.full(inter.n_users, np.iinfo(np.int64).min, dtype=np.int64)
    last_ts[has_rows] = inter.timestamp[bounds[1:][has_rows] - 1]
    evaluated = n_baskets >= 2
    test_rows = evaluated[inter.user_index] & (inter.timestamp == last_ts[inter.user_index])
    split = Split(train=inter.subset_rows(~test_rows), test=inter.subset_rows(test_rows),
                  evaluated=evaluated)
    check_no_leak(split.train, split.test)
    return split


def check_no_leak(train: Interactions, test: Interactions) -> None:
    """Raise unless each user's test rows are one basket, after all of their training.

    That is: no test (user, timestamp) appears in training, a user has at most
    one test basket, and it is later than every training basket of the user.

    The split guarantees both by construction; checking is cheap and turns a
    future refactoring mistake into an error instead of optimistic metrics.
    """
    if not np.array_equal(train.users, test.users):
        raise ValueError("train and test must be over the same users")
    train_keys = set(zip(train.user_index.tolist(), train.timestamp.tolist(), strict=True))
    leaked = [k for k in zip(test.user_index.tolist(), test.timestamp.tolist(), strict=True)
              if k in train_keys]
    if leaked:
        # Counts only: this message can travel to the server as a ClientApp error.
        raise ValueError(f"{len(leaked)} test interactions (of "
                         f"{len({u for u, _ in leaked})} users) are also in training")
    if np.any(baskets_per_user(test) > 1):
        raise ValueError("a user has more than one test basket")
    if len(test) and len(train):
        latest_train = np.full(train.n_users, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(latest_train, train.user_index, train.timestamp)
        if np.any(test.timestamp <= latest_train[test.user_index]):
            raise ValueError("a test basket is not after all of its user's training baskets")
