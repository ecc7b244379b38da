"""The common feature schema: values checked by hand, no look-ahead, same width everywhere."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pytest

from fedprofile.client.features import (FEATURE_NAMES, N_FEATURES, load_silo_data,
                                        snapshot)
from fedprofile.client.ingest import ingest
from fedprofile.client.schema import CUSTOMERS, ORDERS
from fedprofile.client.store import SiloStore, date_to_epoch

from .conftest import Domain

AS_OF = dt.date(2024, 7, 1)


def _silo(tmp_path: Path, orders: list[tuple[str, str, str, float]], domain: Domain) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    customers = [
        "c1,,,Guangdong,Shenzhen,25-34,2023-01-01,false",
        "c2,,,Atlantis,Nowhere,65+,2023-06-01,false",
        "c3,,,Beijing,Beijing,18-24,2024-08-01,false",  # signs up after AS_OF
    ]
    (tmp_path / "c.csv").write_text("\n".join([",".join(CUSTOMERS.column_names), *customers]))
    rows = [f"{oid},{cid},{when},{amount},datapack,x,HK,false" for oid, cid, when, amount in orders]
    (tmp_path / "o.csv").write_text("\n".join([",".join(ORDERS.column_names), *rows]))
    ingest(tmp_path / "silo", tmp_path / "c.csv", tmp_path / "o.csv",
           keys=domain.keys(tmp_path / "silo"))
    return tmp_path / "silo"


BASE_ORDERS = [
    ("o1", "c1", "2024-05-02T00:00:00", 100.0),
    ("o2", "c1", "2024-06-01T00:00:00", 300.0),
    ("o3", "c1", "2024-06-11T00:00:00", 200.0),
    ("o4", "c1", "2024-07-10T00:00:00", 50.0),  # in the label window
    ("o5", "c2", "2024-09-01T00:00:00", 80.0),  # after the label window
]


def _features(silo: Path, horizon: int = 30):
    with SiloStore.open(silo) as store:
        customers = store.customer_arrays()
        orders = store.order_arrays(customers)
    return snapshot(customers, orders, date_to_epoch(AS_OF), horizon)


def test_values_by_hand(tmp_path: Path, domain: Domain) -> None:
    silo = _silo(tmp_path, BASE_ORDERS, domain)
    fs = _features(silo)
    assert fs.x.shape == (2, N_FEATURES)  # c3 signed up after AS_OF: not eligible
    pn = domain.keys(silo).pseudonymizer
    c1, c2 = (list(fs.customer_ids).index(pn.pseudonym("account", c)) for c in ("c1", "c2"))
    assert (fs.y[c1], fs.y[c2]) == (1.0, 0.0)
    f = dict(zip(FEATURE_NAMES, fs.x[c1], strict=True))
    assert f["has_orders"] == 1.0
    assert f["recency"] == pytest.approx(math.log1p(20) / math.log1p(1000), rel=1e-5)
    # 2024-06-01 is exactly 30 days before AS_OF: outside the half-open 30-day window
    assert f["orders_30d"] == pytest.approx(math.log1p(1) / math.log1p(10), rel=1e-5)
    assert f["orders_90d"] == pytest.approx(math.log1p(3) / math.log1p(20), rel=1e-5)
    assert f["avg_order_value"] == pytest.approx(math.log1p(200) / math.log1p(10_000), rel=1e-5)
    # intervals 30 and 10 days: mean 20, std 10 -> cv 0.5; due ratio 20/20 = 1
    assert f["mean_interval"] == pytest.approx(math.log1p(20) / math.log1p(365), rel=1e-5)
    assert f["interval_cv"] == pytest.approx(0.5 / 3.0, rel=1e-5)
    assert f["due_ratio"] == pytest.approx(1.0 / 5.0, rel=1e-5)
    assert f["international_share"] == 1.0
    assert f["age_25-34"] == 1.0 and f["province_Guangdong"] == 1.0
    g = dict(zip(FEATURE_NAMES, fs.x[c2], strict=True))
    assert g["has_orders"] == 0.0 and g["recency"] == 1.0
    assert g["province_other"] == 1.0  # unknown province maps to "other", not an error


def test_no_look_ahead(tmp_path: Path, domain: Domain) -> None:
    """Orders at or after the snapshot change the label only, never the features."""
    a = _features(_silo(tmp_path / "a", BASE_ORDERS, domain))
    later = [*BASE_ORDERS, ("o6", "c1", "2024-07-02T00:00:00", 9999.0),
             ("o7", "c2", "2024-07-01T00:00:00", 1.0)]
    b = _features(_silo(tmp_path / "b", later, domain))
    np.testing.assert_array_equal(a.x, b.x)
    assert sorted(b.y) == [1.0, 1.0]


def test_out_of_time_split(tmp_path: Path, domain: Domain) -> None:
    silo = _silo(tmp_path, BASE_ORDERS, domain)
    with SiloStore.open(silo) as store:
        data = load_silo_data(store, horizon_days=30, as_of="2024-08-01")
    assert data.test.as_of - data.train.as_of == 30 * 86_400
    assert data.test.as_of == date_to_epoch(dt.date(2024, 7, 2))
    with SiloStore.open(silo) as store, pytest.raises(ValueError, match="horizon_days"):
        load_silo_data(store, horizon_days=0)


def test_generator_regions_are_in_the_shared_vocabulary() -> None:
    """A province the generator uses but the schema lacks would silently become 'other'."""
    from fedprofile.client.features import PROVINCES
    from fedprofile.simulations import geography

    assert {p.name for p in geography.PROVINCES} <= set(PROVINCES)
