"""The common feature schema every silo computes locally from its own store.

Federated training needs every silo to produce the *same* feature vector from
*different* data, without sharing statistics. So every transform here is fixed
(``log1p`` with a fixed scale, clipping, one-hot over a fixed vocabulary) rather
than learned from data (no per-silo mean/std, no vocabulary built from rows):
a silo never has to reveal a distribution to get features that line up with
the other silos'.

A *snapshot* at time ``T`` describes each customer who had signed up before
``T`` using only orders before ``T``; its label says whether the customer orders
on this line in ``[T, T + horizon)``. Training uses the snapshot one horizon
before the end of the data and testing the snapshot at the last full horizon,
so the model is always evaluated on a period it has not seen (out-of-time).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from .schema import AGE_BANDS
from .store import CustomerArrays, OrderArrays, SiloStore, date_to_epoch

DAY = 86_400

PROVINCES: tuple[str, ...] = (
    "Beijing", "Tianjin", "Hebei", "Shanxi", "Inner Mongolia", "Liaoning", "Jilin",
    "Heilongjiang", "Shanghai", "Jiangsu", "Zhejiang", "Anhui", "Fujian", "Jiangxi",
    "Shandong", "Henan", "Hubei", "Hunan", "Guangdong", "Guangxi", "Hainan",
    "Chongqing", "Sichuan", "Guizhou", "Yunnan", "Tibet", "Shaanxi", "Gansu",
    "Qinghai", "Ningxia", "Xinjiang", "Hong Kong", "Macau", "Taiwan",
)
"""China's 34 provincial-level divisions: a fixed region vocabulary every silo shares."""

_INTERNATIONAL = ("flight_international", "hotel_international", "datapack")

NUMERIC_FEATURES: tuple[str, ...] = (
    "has_orders",
    "recency",
    "orders_30d",
    "orders_90d",
    "orders_365d",
    "orders_all",
    "spend_365d",
    "avg_order_value",
    "tenure",
    "mean_interval",
    "interval_cv",
    "due_ratio",
    "has_interval",
    "coupon_rate",
    "international_share",
)

FEATURE_NAMES: tuple[str, ...] = (
    NUMERIC_FEATURES
    + tuple(f"age_{b}" for b in AGE_BANDS)
    + tuple(f"province_{p}" for p in PROVINCES)
    + ("province_other",)
)
"""The feature vector, in order. Changing it changes the model's input width."""

N_FEATURES = len(FEATURE_NAMES)


@dataclass(frozen=True)
class FeatureSet:
    """A snapshot: one row per eligible customer. Never leaves the silo."""

    x: np.ndarray  # float32 [n, N_FEATURES]
    y: np.ndarray  # float32 [n]
    customer_ids: np.ndarray  # object [n]
    as_of: int  # epoch seconds of T

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def positive_rate(self) -> float:
        return float(self.y.mean()) if len(self) else float("nan")


def _scaled_log(x: np.ndarray, scale: float) -> np.ndarray:
    """log1p(x) / log1p(scale): about 1 at ``scale``, fixed for every silo."""
    return np.log1p(np.maximum(x, 0.0)) / np.log1p(scale)


def _one_hot(values: np.ndarray, vocabulary: tuple[str, ...], other: bool) -> np.ndarray:
    lookup = {v.casefold(): i for i, v in enumerate(vocabulary)}
    width = len(vocabulary) + (1 if other else 0)
    out = np.zeros((len(values), width), dtype=np.float32)
    for row, value in enumerate(values):
        idx = lookup.get(str(value).strip().casefold())
        if idx is not None:
            out[row, idx] = 1.0
        elif other:
            out[row, -1] = 1.0
    return out


def snapshot(customers: CustomerArrays, orders: OrderArrays, as_of: int,
             horizon_days: int) -> FeatureSet:
    """Features at ``as_of`` and the label "orders within ``horizon_days``"."""
    x, y = snapshot_all(customers, orders, as_of, horizon_days)
    eligible = customers.signup_date < as_of
    return FeatureSet(x=x[eligible], y=y[eligible],
                      customer_ids=customers.customer_ids[eligible], as_of=as_of)


def snapshot_all(customers: CustomerArrays, orders: OrderArrays, as_of: int,
                 horizon_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of *every* customer at ``as_of``, eligible or not.

    A customer who signed up later has no orders before ``as_of``: their row
    says so (no orders, no tenure). Vertical learning needs this: the rows
    are fixed by the alignment, and another line may know the person already.
    """
    n = len(customers.customer_ids)
    horizon = horizon_days * DAY
    past = orders.order_time < as_of
    future = (orders.order_time >= as_of) & (orders.order_time < as_of + horizon)

    ci, t, amt = orders.customer_index[past], orders.order_time[past], orders.amount[past]
    age_days = (as_of - t) / DAY

    def count(mask: np.ndarray | None = None, weights: np.ndarray | None = None) -> np.ndarray:
        idx = ci if mask is None else ci[mask]
        w = None if weights is None else (weights if mask is None else weights[mask])
        return np.bincount(idx, weights=w, minlength=n).astype(np.float64)

    n_all = count()
    has_orders = n_all > 0
    last = np.full(n, -1, dtype=np.int64)
    np.maximum.at(last, ci, t)
    recency = np.where(has_orders, (as_of - last) / DAY, 1000.0)
    spend_all = count(weights=amt)

    # Inter-purchase intervals: orders are sorted by (customer, time), so
    # consecutive past orders of the same customer are adjacent.
    same = ci[1:] == ci[:-1]
    gaps = (np.diff(t) / DAY)[same]
    gap_owner = ci[1:][same]
    n_gaps = np.bincount(gap_owner, minlength=n).astype(np.float64)
    gap_sum = np.bincount(gap_owner, weights=gaps, minlength=n)
    gap_sq = np.bincount(gap_owner, weights=gaps**2, minlength=n)
    has_interval = n_gaps >= 2
    safe = np.maximum(n_gaps, 1.0)
    mean_gap = gap_sum / safe
    std_gap = np.sqrt(np.maximum(gap_sq / safe - mean_gap**2, 0.0))
    cv = np.where(has_interval, std_gap / np.maximum(mean_gap, 1e-6), 0.0)
    due = np.where(has_interval, recency / np.maximum(mean_gap, 1.0), 0.0)

    intl = np.isin(orders.category[past], _INTERNATIONAL)
    numeric = np.column_stack(
        [
            has_orders.astype(np.float64),
            _scaled_log(recency, 1000.0),
            _scaled_log(count(age_days < 30), 10.0),
            _scaled_log(count(age_days < 90), 20.0),
            _scaled_log(count(age_days < 365), 50.0),
            _scaled_log(n_all, 100.0),
            _scaled_log(count(age_days < 365, amt), 100_000.0),
            _scaled_log(spend_all / np.maximum(n_all, 1.0), 10_000.0),
            _scaled_log((as_of - customers.signup_date) / DAY, 3650.0),
            _scaled_log(mean_gap, 365.0),
            np.clip(cv, 0.0, 3.0) / 3.0,
            np.clip(due, 0.0, 5.0) / 5.0,
            has_interval.astype(np.float64),
            count(weights=orders.coupon_used[past].astype(np.float64)) / np.maximum(n_all, 1.0),
            count(intl) / np.maximum(n_all, 1.0),
        ]
    ).astype(np.float32)
    x = np.concatenate(
        [
            numeric,
            _one_hot(customers.age_band, AGE_BANDS, other=False),
            _one_hot(customers.province, PROVINCES, other=True),
        ],
        axis=1,
    )
    y = (np.bincount(orders.customer_index[future], minlength=n) > 0).astype(np.float32)
    return x, y


@dataclass(frozen=True)
class SiloData:
    """A silo's train and test snapshots."""

    name: str
    train: FeatureSet
    test: FeatureSet


def resolve_as_of(store_end: int | None, as_of: str) -> int:
    """The end of the data: an explicit ISO date, or the day after the last order."""
    if as_of:
        return date_to_epoch(dt.date.fromisoformat(as_of))
    if store_end is None:
        raise ValueError("the silo has no orders, so there is no end of data: set as-of")
    return (store_end // DAY + 1) * DAY


def load_silo_data(store: SiloStore, horizon_days: int, as_of: str = "") -> SiloData:
    """Build the out-of-time train/test snapshots of one silo."""
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    customers = store.customer_arrays()
    orders = store.order_arrays(customers)
    end = end_of_data(orders, as_of)
    t_train, t_test = snapshot_times(end, horizon_days)
    train = snapshot(customers, orders, t_train, horizon_days)
    test = snapshot(customers, orders, t_test, horizon_days)
    return SiloData(name=store.name, train=train, test=test)


def end_of_data(orders: OrderArrays, as_of: str = "") -> int:
    """``as_of`` as epoch seconds, or the day after the silo's last order."""
    return resolve_as_of(int(orders.order_time.max()) if len(orders.order_time) else None, as_of)


def snapshot_times(end: int, horizon_days: int) -> tuple[int, int]:
    """(train, test) snapshot times: two horizons and one horizon before ``end`` (out-of-time)."""
    horizon = horizon_days * DAY
    return end - 2 * horizon, end - horizon
