"""Tests of the synthetic travel platform generator.

They check the contract other modules rely on (files, columns, keys, silo
isolation, determinism, atomic writes) and that the marketing behaviours the
project is about are actually present in the generated data.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime as dt
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from fedprofile.simulations import geography as geo
from fedprofile.simulations.platform import (
    ACCOUNT_COLUMNS,
    CUSTOMER_COLUMNS,
    KNOWN_LINES,
    ORDER_COLUMNS,
    SEGMENTS,
    PlatformConfig,
    PlatformSummary,
    generate_platform,
)

N = 2000
CONFIG = PlatformConfig(n_customers=N, seed=11)
CATEGORIES = {
    "flights": {"flight_domestic", "flight_international"},
    "hotels": {"hotel_domestic", "hotel_international"},
    "datapacks": {"datapack"},
}
# Columns persons.csv shares with silos by nature (identity and demographics).
SHARED_COLUMNS = {"phone", "email", "province", "city", "age_band", "marketing_opt_out"}
REQUIRED_PERSON_COLUMNS = {
    "person_id", "phone", "email", "province", "city", "age_band", "marketing_opt_out", "segment",
    "trips_per_year", "international_share", "cycle_days", "periodic_destination", "spend_multiplier",
    "preferred_pack_kind", "p_book_flight", "p_book_hotel", "p_buy_datapack", "coupon_uplift",
    "propensity_flights_30d", "propensity_hotels_30d", "propensity_datapacks_30d",
}


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


class Platform:
    """Loaded platform directory with ground-truth joins for the behaviour tests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.customers = {line: read_csv(root / "silos" / line / "customers.csv") for line in KNOWN_LINES}
        self.orders = {line: read_csv(root / "silos" / line / "orders.csv") for line in KNOWN_LINES}
        self.person_header, person_rows = read_csv(root / "ground_truth" / "persons.csv")
        self.persons = {r["person_id"]: r for r in person_rows}
        _, self.accounts = read_csv(root / "ground_truth" / "accounts.csv")
        self.person_of = {(r["line"], r["customer_id"]): r["person_id"] for r in self.accounts}

    def order_rows(self, line: str) -> list[dict[str, str]]:
        return self.orders[line][1]

    def customer_rows(self, line: str) -> list[dict[str, str]]:
        return self.customers[line][1]

    def times_by_customer(self, line: str) -> dict[str, list[dt.datetime]]:
        out: dict[str, list[dt.datetime]] = collections.defaultdict(list)
        for o in self.order_rows(line):
            out[o["customer_id"]].append(dt.datetime.fromisoformat(o["order_time"]))
        return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[PlatformSummary, list[str]]:
    messages: list[str] = []
    summary = generate_platform(CONFIG, tmp_path_factory.mktemp("gen") / "platform", messages.append)
    return summary, messages


@pytest.fixture(scope="module")
def platform(generated: tuple[PlatformSummary, list[str]]) -> Platform:
    return Platform(generated[0].out_dir)


# --------------------------------------------------------------------------- #
# Layout, determinism, summary
# --------------------------------------------------------------------------- #


def test_layout_summary_and_manifest(generated: tuple[PlatformSummary, list[str]]) -> None:
    summary, messages = generated
    root = summary.out_dir
    expected = {"manifest.json", "ground_truth/persons.csv", "ground_truth/accounts.csv"} | {
        f"silos/{line}/{name}.csv" for line in KNOWN_LINES for name in ("customers", "orders")
    }
    assert set(file_hashes(root)) == expected
    assert summary.n_persons == N
    assert set(summary.customers_per_line) == set(KNOWN_LINES) == set(summary.orders_per_line)
    assert all(v > 0 for v in summary.orders_per_line.values())

    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["seed"] == CONFIG.seed
    assert manifest["config"]["n_customers"] == N
    assert manifest["config"]["start"] == "2024-01-01" and manifest["config"]["end"] == "2025-12-31"
    assert manifest["generator_version"]
    hashes = file_hashes(root)
    for rel, entry in manifest["files"].items():
        assert entry["sha256"] == hashes[rel] == summary.files[rel]
        _, rows = read_csv(root / rel)
        assert entry["rows"] == len(rows)
    for line in KNOWN_LINES:
        assert manifest["customers_per_line"][line] == summary.customers_per_line[line]
        assert manifest["orders_per_line"][line] == summary.orders_per_line[line]

    assert {"persons", "trips", "writing flights", "done"} <= set(messages)


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    first = generate_platform(CONFIG, tmp_path / "a").out_dir
    second = generate_platform(CONFIG, tmp_path / "b").out_dir
    assert file_hashes(first) == file_hashes(second)

    other = generate_platform(dataclasses.replace(CONFIG, seed=12), tmp_path / "c").out_dir
    a, c = file_hashes(first), file_hashes(other)
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


# --------------------------------------------------------------------------- #
# Silo contents
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("line", KNOWN_LINES)
def test_silo_files_are_well_formed(platform: Platform, line: str) -> None:
    cust_header, customers = platform.customers[line]
    order_header, orders = platform.orders[line]
    assert tuple(cust_header) == CUSTOMER_COLUMNS
    assert tuple(order_header) == ORDER_COLUMNS

    ids = [c["customer_id"] for c in customers]
    assert len(ids) == len(set(ids))
    order_ids = [o["order_id"] for o in orders]
    assert len(order_ids) == len(set(order_ids))
    prefix = {"flights": "F", "hotels": "H", "datapacks": "D"}[line]
    assert all(re.fullmatch(prefix + r"\d+", i) for i in order_ids)

    known = set(ids)
    start = dt.datetime.combine(CONFIG.start, dt.time())
    end = dt.datetime.combine(CONFIG.end, dt.time(23, 59, 59))
    for o in orders:
        assert o["customer_id"] in known
        amount = float(o["amount"])
        assert 0 < amount <= 200_000
        assert re.fullmatch(r"\d+\.\d{2}", o["amount"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", o["order_time"])
        assert start <= dt.datetime.fromisoformat(o["order_time"]) <= end
        assert o["category"] in CATEGORIES[line]
        assert o["coupon_used"] in ("true", "false")
        assert o["destination"]

    first_order: dict[str, str] = {}
    for o in orders:
        day = o["order_time"][:10]
        first_order[o["customer_id"]] = min(day, first_order.get(o["customer_id"], day))
    for c in customers:
        signup = dt.date.fromisoformat(c["signup_date"])
        assert signup <= CONFIG.end
        if c["customer_id"] in first_order:
            assert c["signup_date"] <= first_order[c["customer_id"]]
        assert c["age_band"] in geo.AGE_BANDS
        assert c["marketing_opt_out"] in ("true", "false")
        assert c["province"] in {p.name for p in geo.PROVINCES}
    assert any(c["signup_date"] < "2024-01-01" for c in customers)


def test_line_key_formats(platform: Platform) -> None:
    for c in platform.customer_rows("flights"):
        assert re.fullmatch(r"FL\d{8}", c["customer_id"])
        assert re.fullmatch(r"\+86 1[3-9]\d \d{4} \d{4}", c["phone"])
        assert "@" in c["email"]
    hotel = platform.customer_rows("hotels")
    for c in hotel:
        assert re.fullmatch(r"[a-z0-9._]+@[a-z0-9.]+", c["customer_id"])
        assert c["phone"] == "" or re.fullmatch(r"1[3-9]\d-\d{4}-\d{4}", c["phone"])
        assert c["email"].strip().lower() == c["customer_id"]
    messy = sum(c["email"] != c["customer_id"] for c in hotel)
    assert 0.03 * len(hotel) < messy < 0.25 * len(hotel)
    missing_phone = sum(c["phone"] == "" for c in hotel)
    assert 0.03 * len(hotel) < missing_phone < 0.2 * len(hotel)
    for c in platform.customer_rows("datapacks"):
        assert re.fullmatch(r"861[3-9]\d{9}", c["customer_id"])
        assert c["email"] == ""


def test_products_match_categories(platform: Platform) -> None:
    for o in platform.order_rows("flights"):
        assert re.fullmatch(r"[A-Z]{3}-[A-Z]{3}", o["product"])
    for o in platform.order_rows("hotels"):
        assert o["product"].startswith("hotel:")
    dest_codes = {d.key for d in geo.DESTINATIONS if d.kind == "international"}
    for o in platform.order_rows("datapacks"):
        _, code, kind = o["product"].split(":")
        assert code == o["destination"] and code in dest_codes and kind in geo.PACK_KINDS
        assert 25 <= float(o["amount"]) <= 300


# --------------------------------------------------------------------------- #
# Isolation
# --------------------------------------------------------------------------- #


def test_silos_hold_no_ground_truth_or_other_lines(platform: Platform) -> None:
    person_id = re.compile(r"P\d{7}")
    latent = set(platform.person_header) - SHARED_COLUMNS
    assert "person_id" in latent
    for line in KNOWN_LINES:
        for name in ("customers", "orders"):
            path = platform.root / "silos" / line / f"{name}.csv"
            text = path.read_text(encoding="utf-8")
            assert not person_id.search(text), path
            header = text.splitlines()[0].split(",")
            assert not latent & set(header), path

    keys = {line: {c["customer_id"] for c in platform.customer_rows(line)} for line in KNOWN_LINES}
    for line in KNOWN_LINES:
        for other in KNOWN_LINES:
            if other == line:
                continue
            assert not keys[line] & keys[other]
            assert not keys[line] & {o["customer_id"] for o in platform.order_rows(other)}
            assert not {o["order_id"] for o in platform.order_rows(line)} & {
                o["order_id"] for o in platform.order_rows(other)
            }


def test_ground_truth_links_every_account(platform: Platform) -> None:
    header = platform.person_header
    assert REQUIRED_PERSON_COLUMNS <= set(header)
    persons = platform.persons
    assert len(persons) == N
    phones = [p["phone"] for p in persons.values()]
    emails = [p["email"] for p in persons.values()]
    assert len(set(phones)) == N and len(set(emails)) == N
    assert all(re.fullmatch(r"\+861[3-9]\d{9}", p) for p in phones)
    assert all(e == e.lower().strip() for e in emails)
    assert {p["segment"] for p in persons.values()} == set(SEGMENTS)
    assert all(p["age_band"] in geo.AGE_BANDS for p in persons.values())

    header_acc, _ = read_csv(platform.root / "ground_truth" / "accounts.csv")
    assert tuple(header_acc) == ACCOUNT_COLUMNS
    for line in KNOWN_LINES:
        linked = [platform.person_of[(line, c["customer_id"])] for c in platform.customer_rows(line)]
        assert len(linked) == len(set(linked))  # one account per person and line
        assert set(linked) == {pid for pid, p in persons.items() if p[f"customer_{line}"] == "true"}
        for c in platform.customer_rows(line):
            p = persons[platform.person_of[(line, c["customer_id"])]]
            assert (c["province"], c["city"], c["age_band"]) == (p["province"], p["city"], p["age_band"])
            digits = p["phone"][1:]
            if line == "datapacks":
                assert c["customer_id"] == digits
            if line == "hotels":
                assert c["customer_id"] == p["email"]
    # Everybody is a customer of at least one line.
    assert all(any(p[f"customer_{line}"] == "true" for line in KNOWN_LINES) for p in persons.values())
    opt_out = np.mean([p["marketing_opt_out"] == "true" for p in persons.values()])
    assert 0.02 < opt_out < 0.09


# --------------------------------------------------------------------------- #
# Behaviours
# --------------------------------------------------------------------------- #


def test_international_travellers_buy_packs_here_or_elsewhere(platform: Platform) -> None:
    intl_flyers = {
        platform.person_of[("flights", o["customer_id"])]
        for o in platform.order_rows("flights") if o["category"] == "flight_international"
    }
    pack_buyers = {platform.person_of[("datapacks", o["customer_id"])] for o in platform.order_rows("datapacks")}
    pack_accounts = {r["person_id"] for r in platform.accounts if r["line"] == "datapacks"}
    assert len(intl_flyers & pack_buyers) >= 20
    assert len(intl_flyers - pack_accounts) >= 20
    # ...and some of our own pack customers fly abroad without buying a pack from us.
    assert len((intl_flyers & pack_accounts) - pack_buyers) >= 5


def test_periodic_travellers_order_regularly(platform: Platform) -> None:
    cvs: dict[bool, list[float]] = {True: [], False: []}
    for customer, times in platform.times_by_customer("flights").items():
        if len(times) < 4:
            continue
        days = np.diff(np.sort(np.array(times, dtype="datetime64[s]"))).astype(float) / 86_400
        periodic = platform.persons[platform.person_of[("flights", customer)]]["segment"] == "periodic_business"
        cvs[periodic].append(days.std() / days.mean())
    assert len(cvs[True]) >= 30 and len(cvs[False]) >= 30
    assert np.median(cvs[True]) < 0.6 * np.median(cvs[False])


def test_regional_pack_preference(platform: Platform) -> None:
    kinds: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for o in platform.order_rows("datapacks"):
        province = platform.persons[platform.person_of[("datapacks", o["customer_id"])]]["province"]
        kinds[province][o["product"].split(":")[2]] += 1
    top = {p: c.most_common(1)[0][0] for p, c in kinds.items() if sum(c.values()) >= 20}
    assert top["Guangdong"] == "daily-unlimited"
    assert any(kind != top["Guangdong"] for p, kind in top.items() if p != "Guangdong")

    dests: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for o in platform.order_rows("flights"):
        if o["category"] == "flight_international":
            province = platform.persons[platform.person_of[("flights", o["customer_id"])]]["province"]
            dests[province][o["destination"]] += 1
    assert dests["Guangdong"].most_common(1)[0][0] in {"HK", "MO", "TH"}
    assert dests["Shanghai"]["JP"] + dests["Shanghai"]["KR"] > dests["Shanghai"]["TH"]


def test_members_differ_in_frequency_spend_and_coupons(platform: Platform) -> None:
    counts = collections.Counter(o["customer_id"] for o in platform.order_rows("flights"))
    per_customer = np.array([counts.get(c["customer_id"], 0) for c in platform.customer_rows("flights")])
    assert per_customer.max() >= 10 * max(np.median(per_customer), 1)
    assert per_customer.std() > per_customer.mean() * 0.8

    uplift = np.array([float(p["coupon_uplift"]) for p in platform.persons.values()])
    assert uplift.min() >= 0 and uplift.max() <= 0.25 and uplift.std() > 0.02
    spend = np.array([float(p["spend_multiplier"]) for p in platform.persons.values()])
    assert spend.std() > 0.15

    used = np.mean([o["coupon_used"] == "true" for line in KNOWN_LINES for o in platform.order_rows(line)])
    assert 0.05 < used < 0.2
    # Coupon use follows the latent sensitivity.
    by_person = collections.defaultdict(list)
    for line in KNOWN_LINES:
        for o in platform.order_rows(line):
            by_person[platform.person_of[(line, o["customer_id"])]].append(o["coupon_used"] == "true")
    sensitive = [np.mean(v) for pid, v in by_person.items() if float(platform.persons[pid]["coupon_uplift"]) > 0.14]
    insensitive = [np.mean(v) for pid, v in by_person.items() if float(platform.persons[pid]["coupon_uplift"]) < 0.07]
    assert np.mean(sensitive) > 1.5 * np.mean(insensitive)


def test_recent_buyers_buy_again(platform: Platform) -> None:
    cutoff = CONFIG.end - dt.timedelta(days=30)
    since = cutoff - dt.timedelta(days=90)
    recent, future = set(), set()
    for o in platform.order_rows("flights"):
        day = dt.date.fromisoformat(o["order_time"][:10])
        if since <= day <= cutoff:
            recent.add(o["customer_id"])
        elif day > cutoff:
            future.add(o["customer_id"])
    customers = [c["customer_id"] for c in platform.customer_rows("flights")]
    rate_recent = np.mean([c in future for c in customers if c in recent])
    rate_other = np.mean([c in future for c in customers if c not in recent])
    assert rate_recent > 2.5 * rate_other


def test_true_propensities(platform: Platform) -> None:
    for line in KNOWN_LINES:
        prop = {pid: float(p[f"propensity_{line}_30d"]) for pid, p in platform.persons.items()}
        assert all(0.0 <= v <= 1.0 for v in prop.values())
        assert all(prop[pid] == 0.0 for pid, p in platform.persons.items() if p[f"customer_{line}"] == "false")
        assert all(prop[pid] == 0.0 for pid, p in platform.persons.items() if p["churn_date"])
        # Customers ordering in the last 30 days of the window have a higher true propensity.
        last_days = {
            platform.person_of[(line, o["customer_id"])]
            for o in platform.order_rows(line) if o["order_time"][:10] > str(CONFIG.end - dt.timedelta(days=30))
        }
        customers = [pid for pid, p in platform.persons.items() if p[f"customer_{line}"] == "true"]
        active = np.mean([prop[c] for c in customers if c in last_days])
        rest = np.mean([prop[c] for c in customers if c not in last_days])
        assert active > 2 * rest
    periodic = [float(p["propensity_flights_30d"]) for p in platform.persons.values()
                if p["segment"] == "periodic_business" and p["customer_flights"] == "true" and not p["churn_date"]]
    assert np.mean(periodic) > 0.5


# --------------------------------------------------------------------------- #
# Config and output directory handling
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_customers": 9}, "n_customers"),
        ({"n_customers": 100.0}, "n_customers"),
        ({"n_customers": True}, "n_customers"),
        ({"seed": -1}, "seed"),
        ({"start": dt.date(2025, 1, 1), "end": dt.date(2025, 1, 1)}, "start"),
        ({"start": dt.date(2025, 6, 1), "end": dt.date(2025, 1, 1)}, "start"),
        ({"start": dt.datetime(2024, 1, 1)}, "start"),
        ({"end": "2025-12-31"}, "end"),
        ({"lines": ()}, "lines"),
        ({"lines": ("flights", "trains")}, "lines"),
        ({"lines": ("flights", "flights")}, "lines"),
        ({"lines": "flights"}, "lines"),
        ({"segment_shares": (0.5, 0.5, 0.5, 0.5)}, "segment_shares"),
        ({"segment_shares": (1.0, 0.0, 0.0)}, "segment_shares"),
        ({"opt_out_rate": 1.5}, "opt_out_rate"),
        ({"churn_rate": -0.1}, "churn_rate"),
        ({"seasonality": "yes"}, "seasonality"),
    ],
)
def test_config_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PlatformConfig(**kwargs)  # type: ignore[arg-type]


def test_config_normalises_lines_and_is_hashable() -> None:
    cfg = PlatformConfig(lines=["hotels", "flights"])  # type: ignore[arg-type]
    assert cfg.lines == ("hotels", "flights")
    assert hash(cfg) == hash(PlatformConfig(lines=("hotels", "flights")))
    assert PlatformConfig().n_days == 731


def test_existing_output_dir(tmp_path: Path) -> None:
    cfg = PlatformConfig(n_customers=200, seed=1)
    out = tmp_path / "out"
    out.mkdir()  # an empty directory is fine
    generate_platform(cfg, out)
    before = file_hashes(out)
    with pytest.raises(FileExistsError):
        generate_platform(cfg, out)
    assert file_hashes(out) == before

    generate_platform(dataclasses.replace(cfg, seed=2), out, overwrite=True)
    after = file_hashes(out)
    assert after.keys() == before.keys() and after != before
    assert json.loads((out / "manifest.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or backup leftovers

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError):
        generate_platform(cfg, a_file, overwrite=True)


def test_failure_leaves_no_partial_output(tmp_path: Path) -> None:
    def boom(message: str) -> None:
        if message == "writing hotels":
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        generate_platform(PlatformConfig(n_customers=200), tmp_path / "out", boom)
    assert list(tmp_path.iterdir()) == []


def test_subset_of_lines(tmp_path: Path) -> None:
    cfg = PlatformConfig(n_customers=300, seed=5, lines=("datapacks",))
    summary = generate_platform(cfg, tmp_path / "dp")
    assert set(summary.customers_per_line) == {"datapacks"}
    assert sorted(p.name for p in (tmp_path / "dp" / "silos").iterdir()) == ["datapacks"]
    _, persons = read_csv(tmp_path / "dp" / "ground_truth" / "persons.csv")
    assert all(p["customer_datapacks"] == "true" and p["customer_flights"] == "false" for p in persons)
    assert summary.customers_per_line["datapacks"] == 300
