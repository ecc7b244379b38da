"""Audit canaries: planted customers whose membership the attacker must guess (simulation only).

Why: on real-looking customers a membership attack barely beats guessing even
against a non-private model, because many customers share the same coarse
features and their labels follow from them; the model has nothing of a single
customer to remember. An audit built on that proves little. The standard fix
(Jagielski et al. 2020; Steinke, Nasr and Jagielski 2023, "Privacy auditing
with one (1) training run") is to plant *canaries*: records the model can only
get right by remembering each one, each put into training with probability
one half. The others are held out; the attack then tells members from
non-members among canaries only.

Here a canary is a customer of a line in a region no real customer has (its
province is :data:`CANARY_PROVINCE`, so the features' "other province"
column singles canaries out), with a random age band, a random order history
in the year before the training snapshot (1-40 orders, amounts log-uniform,
coupons at random) and a *random* label: with probability one half one order
in the label window. Nothing in its features predicts its label, so a model
that fits a member canary has memorised it. They go through the real
ingestion like any customer, so DP-SGD protects them exactly as it protects
everyone (one training example each).
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedprofile.client.schema import AGE_BANDS

CANARY_PROVINCE = "Audit canary"
"""Not a province of :data:`fedprofile.client.features.PROVINCES`: one-hot "other"."""

CUSTOMER_COLUMNS = ("customer_id", "phone", "email", "province", "city", "age_band",
                    "signup_date", "marketing_opt_out")


@dataclass(frozen=True)
class Canaries:
    """One line's canaries: their rows, and which of them are members (go into training)."""

    customers: list[dict[str, str]]
    orders: list[dict[str, str]]
    member: dict[str, bool]


def _order_templates(orders_csv: Path, n: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """``n`` real orders of the line, for realistic category, product and destination values."""
    with open(orders_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{orders_csv} has no orders to model canaries on")
    return [rows[i] for i in rng.integers(0, len(rows), n)]


def make_canaries(line: str, source_dir: Path, count: int, train_time: dt.datetime,
                  horizon_days: int, seed: int) -> Canaries:
    """``count`` canaries of ``line``, modelled on ``source_dir``'s orders; half (at random) members.

    ``train_time`` is the training snapshot: histories end before it, and a
    positive canary orders once in ``[train_time, train_time + horizon_days)``.
    """
    rng = np.random.default_rng([seed, sum(line.encode()), count])
    customers, orders, member = [], [], {}
    for i in range(count):
        cid = f"canary-{line}-{i:05d}"
        member[cid] = bool(rng.random() < 0.5)
        n_orders = int(np.exp(rng.uniform(0, np.log(400))))
        ages = np.sort(rng.uniform(1, 365, n_orders))[::-1]  # days before the snapshot
        times = [train_time - dt.timedelta(days=float(a)) for a in ages]
        if rng.random() < 0.5:  # the random label
            times.append(train_time + dt.timedelta(days=float(rng.uniform(0, horizon_days - 1))))
        signup = (times[0] - dt.timedelta(days=float(rng.uniform(1, 720)))).date()
        customers.append({"customer_id": cid, "phone": "", "email": "",
                          "province": CANARY_PROVINCE, "city": CANARY_PROVINCE,
                          "age_band": str(AGE_BANDS[int(rng.integers(len(AGE_BANDS)))]),
                          "signup_date": signup.isoformat(), "marketing_opt_out": "false"})
        for j, (when, template) in enumerate(zip(times, _order_templates(
                source_dir / "orders.csv", len(times), rng))):
            orders.append({**template, "order_id": f"{cid}-{j:03d}", "customer_id": cid,
                           "order_time": when.strftime("%Y-%m-%dT%H:%M:%S"),
                           "amount": f"{float(np.exp(rng.uniform(np.log(1), np.log(1_000_000)))):.2f}",
                           "coupon_used": "true" if rng.random() < 0.5 else "false"})
    return Canaries(customers=customers, orders=orders, member=member)


def is_canary(x: np.ndarray, feature_names: list[str] | tuple[str, ...]) -> np.ndarray:
    """Which feature rows are canaries: the "other province" column, which no real customer has."""
    return x[:, list(feature_names).index("province_other")] > 0.5
