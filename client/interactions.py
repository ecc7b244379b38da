"""A silo's user-item interactions as columns: what profiles, segments and the recommender read.

Two sources feed it: the generic ``interactions`` table (any line's events,
loaded with a column mapping) and the line's ``orders`` (a travel order is an
interaction with its product). Both are keyed by the customer pseudonym, so
nothing here identifies a person; the arrays never leave the silo.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .store import SiloStore


@dataclass(frozen=True)
class Interactions:
    """Interactions sorted by (user, timestamp, item); users sorted and unique.

    ``user_index[i]`` points into ``users``. ``value`` is NaN where the source
    had no value (a view, say); ``region`` is ``""`` where it had none.
    ``opt_out[u]`` is True when user ``u`` opted out of personalisation
    (PIPL art. 24): such a user gets non-personalised recommendations only.
    """

    users: np.ndarray  # object (str): pseudonymous customer keys
    opt_out: np.ndarray  # bool, per user
    user_index: np.ndarray  # int64, per interaction
    item: np.ndarray  # object (str), per interaction
    timestamp: np.ndarray  # int64 seconds since the epoch (UTC), per interaction
    value: np.ndarray  # float64, per interaction (NaN = unknown)
    region: np.ndarray  # object (str), per interaction
    name: str = ""

    def __post_init__(self) -> None:
        n = len(self.user_index)
        for field_name in ("item", "timestamp", "value", "region"):
            if len(getattr(self, field_name)) != n:
                raise ValueError(f"interactions: {field_name} has {len(getattr(self, field_name))} "
                                 f"values for {n} interactions")
        if len(self.opt_out) != len(self.users):
            raise ValueError("interactions: opt_out must have one flag per user")
        if n and (self.user_index.min() < 0 or self.user_index.max() >= len(self.users)):
            raise ValueError("interactions: user_index points outside users")
        if n > 1:
            order = np.lexsort((self.item.astype(str), self.timestamp, self.user_index))
            if not np.array_equal(order, np.arange(n)):
                raise ValueError("interactions must be sorted by (user, timestamp, item)")

    def __len__(self) -> int:
        return len(self.user_index)

    @property
    def n_users(self) -> int:
        return len(self.users)

    def user_bounds(self) -> np.ndarray:
        """``bounds[u]:bounds[u+1]`` are user ``u``'s interactions (they are contiguous)."""
        return np.searchsorted(self.user_index, np.arange(self.n_users + 1), side="left")

    def items_bought_by(self, min_customers: int) -> list[str]:
        """Item codes that at least ``min_customers`` distinct customers bought, sorted.

        What a silo may name to others (a catalogue, an agreement): a rarer
        item could single out the few customers who bought it.
        """
        if len(self) == 0:
            return []
        names, inverse = np.unique(self.item.astype(str), return_inverse=True)
        pairs = np.unique(np.stack([inverse, self.user_index]), axis=1)
        buyers = np.bincount(pairs[0], minlength=len(names))
        return [str(i) for i in names[buyers >= min_customers]]

    def subset_users(self, keep: np.ndarray) -> Interactions:
        """Only the users where the boolean mask ``keep`` (one per user) is True."""
        keep = np.asarray(keep, dtype=bool)
        new_index = np.cumsum(keep) - 1
        rows = keep[self.user_index]
        return Interactions(users=self.users[keep], opt_out=self.opt_out[keep],
                            user_index=new_index[self.user_index[rows]].astype(np.int64),
                            item=self.item[rows], timestamp=self.timestamp[rows],
                            value=self.value[rows], region=self.region[rows], name=self.name)

    def subset_rows(self, keep: np.ndarray) -> Interactions:
        """Only the interactions where ``keep`` is True; every user is kept (maybe with none)."""
        keep = np.asarray(keep, dtype=bool)
        return Interactions(users=self.users, opt_out=self.opt_out,
                            user_index=self.user_index[keep], item=self.item[keep],
                            timestamp=self.timestamp[keep], value=self.value[keep],
                            region=self.region[keep], name=self.name)

    @classmethod
    def concat(cls, parts: Sequence[Interactions], name: str = "") -> Interactions:
        """Several silos' interactions as one (simulation oracles only: this is pooling).

        Users are renamed ``<silo>/<key>`` so that silos' users stay distinct
        even where two silos share a key domain; the order stays sorted.
        """
        users = [np.array([f"{p.name}/{u}" for u in p.users], dtype=object) for p in parts]
        names = [p.name for p in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"silo names must be distinct to pool them, got {names}")
        order = np.argsort(np.concatenate(users).astype(str), kind="stable") if parts else []
        all_users = np.concatenate(users)[order] if parts else np.zeros(0, dtype=object)
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        offsets = np.cumsum([0] + [len(u) for u in users])
        index = np.concatenate([rank[offsets[i] + p.user_index] for i, p in enumerate(parts)])
        cat = {f: np.concatenate([getattr(p, f) for p in parts])
               for f in ("item", "timestamp", "value", "region")}
        rows = np.lexsort((cat["item"].astype(str), cat["timestamp"], index))
        return cls(users=all_users, opt_out=np.concatenate([p.opt_out for p in parts])[order],
                   user_index=index[rows], item=cat["item"][rows],
                   timestamp=cat["timestamp"][rows], value=cat["value"][rows],
                   region=cat["region"][rows], name=name)

    @classmethod
    def from_records(cls, records: Iterable[Sequence[object]], opted_out: Iterable[str] = (),
                     name: str = "") -> Interactions:
        """Build from ``(user, item, timestamp, value, region)`` tuples (tests, adapters).

        ``timestamp`` may be a :class:`datetime.datetime` (naive = UTC) or epoch
        seconds; ``value`` may be None.
        """
        rows = [(str(u), str(i), _epoch(t), np.nan if v is None else float(v),  # type: ignore[arg-type]
                 "" if r is None else str(r)) for u, i, t, v, r in records]
        users = np.array(sorted({r[0] for r in rows}), dtype=object)
        rows.sort(key=lambda r: (r[0], r[2], r[1]))
        out = set(opted_out)
        cols = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
        return cls(users=users, opt_out=np.array([u in out for u in users], dtype=bool),
                   user_index=np.searchsorted(users, np.array(cols[0], dtype=object)).astype(np.int64),
                   item=np.array(cols[1], dtype=object),
                   timestamp=np.array(cols[2], dtype=np.int64),
                   value=np.array(cols[3], dtype=np.float64),
                   region=np.array(cols[4], dtype=object), name=name)


def _epoch(value: object) -> int:
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return int(aware.timestamp())
    if isinstance(value, int | np.integer):
        return int(value)
    raise TypeError(f"timestamp must be a datetime or epoch seconds, got {value!r}")


def load_interactions(store: SiloStore) -> Interactions:
    """Every interaction of the silo: the ``interactions`` table plus its orders.

    An order counts as an interaction with its product, valued at its amount,
    in the customer's province. Users are the silo's customers (so a customer
    with no interaction yet is still a user, with none).
    """
    customers = store.execute(
        "SELECT customer_key, marketing_opt_out FROM customers ORDER BY customer_key").fetchall()
    rows = store.execute(
        "SELECT i.customer_key, i.item, i.ts, i.value, i.region FROM interactions i "
        "UNION ALL "
        "SELECT o.customer_key, o.product, o.order_time, o.amount, c.province FROM orders o "
        "JOIN customers c ON c.customer_key = o.customer_key "
        "ORDER BY 1, 3, 2").fetchall()
    users = np.array([c[0] for c in customers], dtype=object)
    cols = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    return Interactions(
        users=users, opt_out=np.array([bool(c[1]) for c in customers], dtype=bool),
        user_index=np.searchsorted(users, np.array(cols[0], dtype=object)).astype(np.int64),
        item=np.array(cols[1], dtype=object), timestamp=np.array(cols[2], dtype=np.int64),
        value=np.array([np.nan if v is None else v for v in cols[3]], dtype=np.float64),
        region=np.array(cols[4], dtype=object), name=store.name)


def encode_codes(catalog: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Index of each code in the sorted array ``catalog`` (int64), -1 where it is absent."""
    catalog = np.asarray(catalog, dtype=str)
    codes = np.asarray(codes, dtype=object).astype(str)
    if len(catalog) == 0:
        return np.full(len(codes), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(catalog, codes), len(catalog) - 1)
    return np.where(catalog[pos] == codes, pos, -1).astype(np.int64)
