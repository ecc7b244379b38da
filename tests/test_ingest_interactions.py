"""Interactions ingestion: any export through a column mapping, checked, all or nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedprofile.cli import EXIT_INPUT, main
from fedprofile.client.ingest import IngestError, ingest
from fedprofile.client.ingest_interactions import (ColumnMapping, InteractionsReport,
                                                   MappingError, ingest_interactions)
from fedprofile.client.interactions import Interactions, load_interactions
from fedprofile.client.rekey import rekey
from fedprofile.client.schema import CUSTOMERS
from fedprofile.client.store import SiloStore
from fedprofile.privacy.keys import Keyring, Secret, generate_key_file
from fedprofile.privacy.pseudonyms import pseudonymize_values
from fedprofile.privacy.silo_keys import SiloKeys, load_silo_keys
from fedprofile.simulations.online_retail import DEFAULT_PATH, write_silo_files

from .conftest import Domain, needs_online_retail

HEADER = "member,sku,when,amount,country,no_marketing,note"
GOOD_ROWS = [
    "CUST-ALPHA-01,A1,2011-12-09,3.5,France,false,x",
    "CUST-ALPHA-01,A2,2011-12-09 12:50:00,,France,false,",
    "CUST-BRAVO-02,A1,2011-12-09T12:50:00+01:00,-2,,true,",
    "CUST-BRAVO-02,A3,2011-12-10T08:00:00Z,1e3,,,",
    "CUST-CHARLIE-03,A2,2011-12-08T00:00:00,10,Germany,,",
    "CUST-CHARLIE-03,A2,2011-12-11,1,Spain,,",
    "CUST-CHARLIE-03,A4,2011-12-12,1,Germany,,",
]
USERS = ("CUST-ALPHA-01", "CUST-BRAVO-02", "CUST-CHARLIE-03")
MAPPING = ColumnMapping(user="member", item="sku", timestamp="when", value="amount",
                        region="country", opt_out="no_marketing")
MAP_ARGS = ["--map", "user=member", "--map", "item=sku", "--map", "timestamp=when",
            "--map", "value=amount", "--map", "region=country", "--map", "opt_out=no_marketing"]


def utc(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp())


def write(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def store_digest(silo: Path) -> str | None:
    """Every table's content as seen through SQLite (WAL included), or None if absent."""
    if not (silo / "store.sqlite").exists():
        return None
    h = hashlib.sha256()
    with SiloStore.open(silo) as store:
        for table in ("silo_meta", "customers", "orders", "identities", "interactions",
                      "ingestions"):
            for row in sorted(repr(r) for r in store.execute(f"SELECT * FROM {table}")):
                h.update(f"{table}:{row}".encode())
    return h.hexdigest()


def key_of(keys: SiloKeys, user: str) -> str:
    (key,), _ = pseudonymize_values([user], "account", keys.pseudonymizer)
    assert key is not None
    return key


def by_user(data: Interactions) -> dict[str, list[tuple[object, ...]]]:
    """Each user's interactions as (item, ts, value, region), value None where NaN."""
    out: dict[str, list[tuple[object, ...]]] = {u: [] for u in data.users}
    for i in range(len(data)):
        value = None if np.isnan(data.value[i]) else float(data.value[i])
        out[data.users[data.user_index[i]]].append(
            (data.item[i], int(data.timestamp[i]), value, data.region[i]))
    return out


@pytest.fixture()
def silo(domain: Domain, tmp_path: Path) -> Path:
    """A silo already holding the good interactions."""
    silo_dir = tmp_path / "shop"
    ingest_interactions(silo_dir, write(tmp_path / "good.csv", GOOD_ROWS), MAPPING,
                        keys=domain.keys(silo_dir))
    return silo_dir


# -- the mapping ---------------------------------------------------------------
def test_mapping_parse() -> None:
    mapping = ColumnMapping.parse(["user=CustomerID", " item = StockCode ", "timestamp=When"])
    assert (mapping.user, mapping.item, mapping.timestamp) == ("CustomerID", "StockCode", "When")
    assert mapping.value is mapping.region is mapping.opt_out is None
    assert ColumnMapping.parse(MAP_ARGS[1::2]) == MAPPING


@pytest.mark.parametrize(("pairs", "text"), [
    (["user=a", "item=b", "timestamp=c", "price=d"],
     "unknown mapping target 'price'; the targets are user, item, timestamp, value, region, "
     "opt_out"),
    (["user=a", "item=b"], "no column mapped to timestamp"),
    ([], "no column mapped to user, item, timestamp"),
    (["user=a", "item=b", "timestamp=c", "user=d"], "'user' is mapped twice"),
    (["user=", "item=b", "timestamp=c"], "the source column for 'user' is empty"),
    (["user", "item=b", "timestamp=c"], "expects TARGET=COLUMN"),
    (["user=a", "item=a", "timestamp=c"], "column 'a' is mapped to both 'user' and 'item'"),
])
def test_mapping_parse_errors(pairs: list[str], text: str) -> None:
    with pytest.raises(MappingError) as info:
        ColumnMapping.parse(pairs)
    assert text in str(info.value)


# -- good files ------------------------------------------------------------------
def test_good_csv_loads(domain: Domain, tmp_path: Path) -> None:
    silo_dir = tmp_path / "shop"
    keys = domain.keys(silo_dir)
    report = ingest_interactions(silo_dir, write(tmp_path / "good.csv", GOOD_ROWS), MAPPING,
                                 keys=keys)
    assert isinstance(report, InteractionsReport)
    assert (report.rows_read, report.interactions_added, report.users_added,
            report.users_updated, report.users_opted_out) == (7, 7, 3, 0, 1)
    assert report.ignored_columns == ["note"]
    assert report.sha256 == hashlib.sha256((tmp_path / "good.csv").read_bytes()).hexdigest()
    assert (report.key_domain, report.key_version, report.raw_ids_kept) == ("travel", 1, True)

    alpha, bravo, charlie = (key_of(keys, u) for u in USERS)
    with SiloStore.open(silo_dir) as store:
        data = load_interactions(store)
        customers = {r[0]: r for r in store.iter_rows("customers")}
        sealed = dict(store.iter_rows("identities"))
        (ingestion,) = store.ingestions()
    assert sorted(data.users) == sorted([alpha, bravo, charlie])
    assert dict(zip(data.users, data.opt_out, strict=True)) == {alpha: False, bravo: True,
                                                                charlie: False}
    assert by_user(data) == {
        alpha: [("A1", utc(2011, 12, 9), 3.5, "France"),
                ("A2", utc(2011, 12, 9, 12, 50), None, "France")],
        bravo: [("A1", utc(2011, 12, 9, 11, 50), -2.0, ""),  # +01:00 -> UTC
                ("A3", utc(2011, 12, 10, 8), 1000.0, "")],
        charlie: [("A2", utc(2011, 12, 8), 10.0, "Germany"),
                  ("A2", utc(2011, 12, 11), 1.0, "Spain"),
                  ("A4", utc(2011, 12, 12), 1.0, "Germany")],
    }
    # New users become customers: most frequent region, first interaction's date.
    assert customers[charlie][1:] == (None, None, "Germany", "", "", "2011-12-08", 0, 1)
    assert customers[bravo][3] == "" and customers[bravo][7] == 1
    assert keys.open_identity(charlie, sealed[charlie]) == {
        "customer_id": "CUST-CHARLIE-03", "phone": None, "email": None}
    assert ingestion["source"] == "interactions:good.csv"
    assert ingestion["interactions_added"] == 7 and ingestion["orders_added"] == 0
    assert ingestion["sha256"] == report.sha256
    assert (ingestion["customers_added"], ingestion["orders_added"]) == (3, 0)


def test_parquet_loads_with_typed_columns(domain: Domain, tmp_path: Path) -> None:
    berlin = dt.timezone(dt.timedelta(hours=1))
    table = pa.table({
        "uid": pa.array([17850, 17850, 12583], pa.int64()),
        "item": ["85123A", "22728", "85123A"],
        "at": pa.array([dt.datetime(2010, 12, 1, 8, 26), dt.datetime(2010, 12, 2, 9, 0),
                        dt.datetime(2010, 12, 3, 10, 0, tzinfo=berlin)],
                       pa.timestamp("s", tz="UTC")),
        "spent": pa.array([15.3, None, 90.0], pa.float64()),
        "opted": pa.array([False, False, True], pa.bool_()),
    })
    pq.write_table(table, tmp_path / "events.parquet")
    silo_dir = tmp_path / "shop"
    keys = domain.keys(silo_dir)
    mapping = ColumnMapping.parse(["user=uid", "item=item", "timestamp=at", "value=spent",
                                   "opt_out=opted"])
    report = ingest_interactions(silo_dir, tmp_path / "events.parquet", mapping, keys=keys)
    assert (report.interactions_added, report.users_added, report.users_opted_out) == (3, 2, 1)
    with SiloStore.open(silo_dir) as store:
        data = load_interactions(store)
    a, b = key_of(keys, "17850"), key_of(keys, "12583")  # an integer id is its decimal text
    assert by_user(data) == {
        a: [("85123A", utc(2010, 12, 1, 8, 26), 15.3, ""),
            ("22728", utc(2010, 12, 2, 9), None, "")],
        b: [("85123A", utc(2010, 12, 3, 9), 90.0, "")],
    }
    assert dict(zip(data.users, data.opt_out, strict=True)) == {a: False, b: True}

    # A date column is midnight UTC.
    pq.write_table(pa.table({"uid": ["u1"], "item": ["x"],
                             "at": pa.array([dt.date(2011, 1, 2)], pa.date32())}),
                   tmp_path / "dates.parquet")
    ingest_interactions(silo_dir, tmp_path / "dates.parquet",
                        ColumnMapping(user="uid", item="item", timestamp="at"), keys=keys)
    with SiloStore.open(silo_dir) as store:
        data = load_interactions(store)
    assert by_user(data)[key_of(keys, "u1")] == [("x", utc(2011, 1, 2), None, "")]


def test_users_join_the_customers_of_the_same_silo(domain: Domain, tmp_path: Path) -> None:
    """A user id is pseudonymised exactly like a customer id: the same customer key."""
    silo_dir = tmp_path / "flights"
    customers = tmp_path / "c.csv"
    customers.write_text(",".join(CUSTOMERS.column_names) + "\n"
                         "CUST-ALPHA-01,,a@example.com,Guangdong,Shenzhen,25-34,2023-05-01,false\n")
    ingest(silo_dir, customers=customers, keys=domain.keys(silo_dir))
    report = ingest_interactions(silo_dir, write(tmp_path / "i.csv", GOOD_ROWS[:2]), MAPPING,
                                 keys=domain.keys(silo_dir))
    assert (report.users_added, report.users_updated) == (0, 0)
    with SiloStore.open(silo_dir) as store:
        assert store.counts()["customers"] == 1
        (row,) = store.iter_rows("customers")
    assert row[3:7] == ("Guangdong", "Shenzhen", "25-34", "2023-05-01")  # kept, not overwritten


def test_opt_out_updates_known_users_only_when_the_file_says(silo: Path, domain: Domain,
                                                             tmp_path: Path) -> None:
    keys = domain.keys(silo)
    rows = ["CUST-ALPHA-01,A9,2011-12-13,1,Italy,yes,", "CUST-BRAVO-02,A9,2011-12-13,1,,,"]
    report = ingest_interactions(silo, write(tmp_path / "more.csv", rows), MAPPING, keys=keys)
    assert (report.users_added, report.users_updated, report.users_opted_out) == (0, 1, 2)
    # Without an opt-out column nothing about the users changes.
    no_opt = ColumnMapping(user="member", item="sku", timestamp="when")
    report = ingest_interactions(silo, write(tmp_path / "views.csv",
                                             ["CUST-ALPHA-01,A1,2011-12-14,,,,"]),
                                 no_opt, keys=keys)
    assert (report.users_updated, report.users_opted_out) == (0, 1)
    assert report.ignored_columns == ["amount", "country", "no_marketing", "note"]
    with SiloStore.open(silo) as store:
        data = load_interactions(store)
        provinces = {r[0]: r[3] for r in store.iter_rows("customers")}
    opt = dict(zip(data.users, data.opt_out, strict=True))
    assert opt[key_of(keys, "CUST-ALPHA-01")] and opt[key_of(keys, "CUST-BRAVO-02")]
    assert provinces[key_of(keys, "CUST-ALPHA-01")] == "France"  # a known user keeps their row
    assert len(data) == 10


def test_drop_raw_ids_keeps_no_identities(domain: Domain, tmp_path: Path) -> None:
    silo_dir = tmp_path / "shop"
    report = ingest_interactions(silo_dir, write(tmp_path / "good.csv", GOOD_ROWS), MAPPING,
                                 keys=domain.keys(silo_dir, keep_raw_ids=False))
    assert not report.raw_ids_kept
    with SiloStore.open(silo_dir) as store:
        assert store.counts()["identities"] == 0 and store.meta()["raw_ids"] == "none"
    assert not list(silo_dir.glob("identity-key*"))


# -- bad input -------------------------------------------------------------------
BAD_CASES = {
    # name: (bad row, field, text in the message)
    "empty user": (",A1,2011-12-09,1,France,false,", "member", "required"),
    "user too long": ("U" * 300 + ",A1,2011-12-09,1,France,false,", "member", "characters long"),
    "user not an account id": ("U" * 200 + ",A1,2011-12-09,1,France,false,", "member",
                               "not a usable account identifier"),
    "empty item": ("CUST-DELTA,,2011-12-09,1,France,false,", "sku", "required"),
    "item too long": ("CUST-DELTA," + "I" * 300 + ",2011-12-09,1,France,false,", "sku",
                      "characters long"),
    "no timestamp": ("CUST-DELTA,A1,,1,France,false,", "when", "required"),
    "bad timestamp": ("CUST-DELTA,A1,09/12/2011 12:50,1,France,false,", "when",
                      "not a date-time"),
    "timestamp too early": ("CUST-DELTA,A1,1970-01-01T12:00:00,1,France,false,", "when",
                            "outside"),
    "timestamp too late": ("CUST-DELTA,A1,2100-01-01,1,France,false,", "when", "outside"),
    "value not a number": ("CUST-DELTA,A1,2011-12-09,3 GBP,France,false,", "amount",
                           "expected a number"),
    "value not finite": ("CUST-DELTA,A1,2011-12-09,inf,France,false,", "amount", "finite"),
    "value too large": ("CUST-DELTA,A1,2011-12-09,-2000000,France,false,", "amount",
                        "implausibly large"),
    "region too long": ("CUST-DELTA,A1,2011-12-09,1," + "R" * 300 + ",false,", "country",
                        "characters long"),
    "bad opt-out": ("CUST-DELTA,A1,2011-12-09,1,France,maybe,", "no_marketing",
                    "expected true/false"),
    "opt-out conflict": ("CUST-ALPHA-01,A5,2011-12-09,1,France,true,", "no_marketing",
                         "true conflicts with false for the same user at line 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_rows_rejected_store_unchanged(case: str, silo: Path, domain: Domain,
                                           tmp_path: Path) -> None:
    row, field, text = BAD_CASES[case]
    before = store_digest(silo)
    bad = write(tmp_path / "bad.csv", [GOOD_ROWS[0].replace("A1", "B1"), row])
    with pytest.raises(IngestError) as info:
        ingest_interactions(silo, bad, MAPPING, keys=domain.keys(silo))
    (problem,) = info.value.problems
    assert (Path(problem.file).name, problem.line, problem.field) == ("bad.csv", 3, field)
    assert text in problem.message
    assert f"bad.csv:3: field '{field}'" in str(info.value) and "not changed" in str(info.value)
    assert "CUST-ALPHA-01" not in str(info.value)  # no user id in the message
    assert store_digest(silo) == before


def test_every_problem_is_reported_at_once(domain: Domain, tmp_path: Path) -> None:
    rows = [",A1,2011-12-09,x,France,false,", "CUST-DELTA,,nope,1,France,false,",
            *GOOD_ROWS]
    silo_dir = tmp_path / "new"
    with pytest.raises(IngestError) as info:
        ingest_interactions(silo_dir, write(tmp_path / "bad.csv", rows), MAPPING,
                            keys=domain.keys(silo_dir))
    assert [(p.line, p.field) for p in info.value.problems] == [
        (2, "member"), (2, "amount"), (3, "sku"), (3, "when")]
    assert not silo_dir.exists(), "a rejected first ingestion must not create a silo"


def test_float_user_ids_from_pandas_load_and_bad_ids_are_not_echoed(
        domain: Domain, tmp_path: Path) -> None:
    """pandas stores an integer id column with gaps as float64: 17850.0 is user 17850."""
    pq.write_table(pa.table({"uid": pa.array([17850.0, 12583.0], pa.float64()),
                             "item": ["a", "b"], "at": ["2011-01-01", "2011-01-02"]}),
                   tmp_path / "floats.parquet")
    silo_dir = tmp_path / "shop"
    keys = domain.keys(silo_dir)
    mapping = ColumnMapping(user="uid", item="item", timestamp="at")
    ingest_interactions(silo_dir, tmp_path / "floats.parquet", mapping, keys=keys)
    with SiloStore.open(silo_dir) as store:
        assert set(load_interactions(store).users) == {key_of(keys, "17850"),
                                                       key_of(keys, "12583")}
    pq.write_table(pa.table({"uid": pa.array([17850.5, float("nan")], pa.float64()),
                             "item": ["a", "b"], "at": ["2011-01-03", "2011-01-04"]}),
                   tmp_path / "bad-floats.parquet")
    with pytest.raises(IngestError) as info:
        ingest_interactions(silo_dir, tmp_path / "bad-floats.parquet", mapping, keys=keys)
    message = str(info.value)
    assert "row 1: field 'uid': expected an id (text or a whole number)" in message
    assert "row 2: field 'uid': is required but empty" in message
    assert "17850" not in message  # a rejected id is never echoed


def test_parquet_bad_value_names_row_and_field(silo: Path, domain: Domain, tmp_path: Path) -> None:
    before = store_digest(silo)
    pq.write_table(pa.table({"member": ["u1", "u2"], "sku": ["a", "b"],
                             "when": pa.array([dt.datetime(2011, 1, 1), None],
                                              pa.timestamp("s")),
                             "amount": [1.0, 2.0]}), tmp_path / "bad.parquet")
    with pytest.raises(IngestError) as info:
        ingest_interactions(silo, tmp_path / "bad.parquet", ColumnMapping(
            user="member", item="sku", timestamp="when", value="amount"), keys=domain.keys(silo))
    assert "bad.parquet: row 2: field 'when': is required but empty" in str(info.value)
    pq.write_table(pa.table({"member": ["u1"], "sku": ["a"], "when": [20110101]}),
                   tmp_path / "int.parquet")
    with pytest.raises(IngestError, match="row 1: field 'when': expected a date-time, got int"):
        ingest_interactions(silo, tmp_path / "int.parquet", ColumnMapping(
            user="member", item="sku", timestamp="when"), keys=domain.keys(silo))
    assert store_digest(silo) == before


def test_missing_mapped_column_names_file_column_and_header(silo: Path, domain: Domain,
                                                            tmp_path: Path) -> None:
    before = store_digest(silo)
    mapping = ColumnMapping(user="member", item="product", timestamp="when")
    with pytest.raises(IngestError) as info:
        ingest_interactions(silo, write(tmp_path / "i.csv", GOOD_ROWS), mapping,
                            keys=domain.keys(silo))
    message = str(info.value)
    assert "i.csv:1: field 'product': missing column (mapped to item)" in message
    assert ("the file's columns are: member, sku, when, amount, country, no_marketing, "
            "note") in message
    assert store_digest(silo) == before


@pytest.mark.parametrize(("content", "text"), [
    (b"", "empty"), (HEADER.encode() + b"\n", "no data rows"),
    (HEADER.encode() + b"\nCUST-1,A1,2011-12-09\n", "expected 7 fields, found 3"),
])
def test_empty_and_malformed_files(content: bytes, text: str, silo: Path, domain: Domain,
                                   tmp_path: Path) -> None:
    before = store_digest(silo)
    (tmp_path / "x.csv").write_bytes(content)
    with pytest.raises(IngestError) as info:
        ingest_interactions(silo, tmp_path / "x.csv", MAPPING, keys=domain.keys(silo))
    assert "x.csv" in str(info.value) and text in str(info.value)
    assert store_digest(silo) == before


def test_same_file_twice_is_refused(silo: Path, domain: Domain, tmp_path: Path) -> None:
    before = store_digest(silo)
    copy = tmp_path / "renamed-export.csv"
    shutil.copy(tmp_path / "good.csv", copy)  # same bytes under another name
    for path in (tmp_path / "good.csv", copy):
        with pytest.raises(IngestError) as info:
            ingest_interactions(silo, path, MAPPING, keys=domain.keys(silo))
        message = str(info.value)
        assert path.name in message and "already ingested" in message
        assert "interactions:good.csv" in message and "double every interaction" in message
    assert store_digest(silo) == before


def test_other_key_domain_is_refused(silo: Path, tmp_path: Path) -> None:
    secret = Secret.from_key_file(generate_key_file(tmp_path / "other.key"))
    Keyring.create(tmp_path / "other.keyring", "other", secret)
    before = store_digest(silo)
    with pytest.raises(IngestError, match="belongs to key domain 'travel', not 'other'"):
        ingest_interactions(silo, write(tmp_path / "n.csv", GOOD_ROWS[:1]), MAPPING,
                            keys=load_silo_keys(tmp_path / "other.keyring", secret, silo,
                                                 keep_raw_ids=False))
    assert store_digest(silo) == before


# -- re-keying ------------------------------------------------------------------
def test_rekey_moves_interactions_with_their_users(tmp_path: Path) -> None:
    secret = Secret.from_key_file(generate_key_file(tmp_path / "k"))
    keyring = tmp_path / "d.keyring"
    Keyring.create(keyring, "rot", secret)
    silo_dir = tmp_path / "shop"
    keys_v1 = load_silo_keys(keyring, secret, silo_dir)
    ingest_interactions(silo_dir, write(tmp_path / "good.csv", GOOD_ROWS), MAPPING, keys=keys_v1)
    with SiloStore.open(silo_dir) as store:
        before = by_user(load_interactions(store))
    Keyring.open(keyring, secret).rotate(secret)

    keys_v2 = load_silo_keys(keyring, secret, silo_dir)
    with pytest.raises(IngestError, match="run `fedprofile silo rekey` first"):
        ingest_interactions(silo_dir, write(tmp_path / "n.csv", GOOD_ROWS[:1]), MAPPING,
                            keys=keys_v2)
    report = rekey(silo_dir, keys_v2)
    assert (report.from_version, report.to_version, report.customers, report.interactions) == (
        1, 2, 3, 7)
    with SiloStore.open(silo_dir) as store:
        data = load_interactions(store)
        keys_left = {r[0] for r in store.execute("SELECT DISTINCT customer_key FROM interactions")}
    after = by_user(data)
    for user in USERS:
        old, new = key_of(keys_v1, user), key_of(keys_v2, user)
        assert old != new and after[new] == before[old]
    assert keys_left == {key_of(keys_v2, u) for u in USERS}  # nothing under the old version
    opt = dict(zip(data.users, data.opt_out, strict=True))
    assert opt[key_of(keys_v2, "CUST-BRAVO-02")] and not opt[key_of(keys_v2, "CUST-ALPHA-01")]
    # The re-keyed silo takes new data again.
    assert ingest_interactions(silo_dir, write(tmp_path / "n.csv", GOOD_ROWS[:1]), MAPPING,
                               keys=keys_v2).users_added == 0


# -- the command line --------------------------------------------------------------
def test_cli_ingest_interactions(domain: Domain, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    key_args = ["--keyring", str(domain.keyring), "--key-file", str(domain.secret.path)]
    silo_dir = tmp_path / "shop"
    good = write(tmp_path / "good.csv", GOOD_ROWS)
    code = main(["silo", "ingest-interactions", str(silo_dir), str(good), *MAP_ARGS,
                 "--name", "webshop", *key_args])
    out = capsys.readouterr().out
    assert code == 0
    assert "7 interactions added (7 rows read from good.csv); 3 users added, 0 updated, " \
           "1 of the file's users opted out" in out
    assert "key domain 'travel' v1" in out and "columns not mapped were not stored: note" in out
    assert not any(user in out for user in USERS)
    with SiloStore.open(silo_dir) as store:
        assert store.name == "webshop" and store.counts()["interactions"] == 7

    code = main(["silo", "ingest-interactions", str(silo_dir), str(good), *MAP_ARGS, *key_args])
    err = capsys.readouterr().err
    assert code == EXIT_INPUT and "already ingested" in err and "Traceback" not in err

    bad = write(tmp_path / "bad.csv", ["CUST-ALPHA-01,A1,yesterday,1,France,false,"])
    code = main(["silo", "ingest-interactions", str(silo_dir), str(bad), *MAP_ARGS, *key_args])
    err = capsys.readouterr().err
    assert code == EXIT_INPUT and "bad.csv:2: field 'when': 'yesterday' is not a date-time" in err

    code = main(["silo", "ingest-interactions", str(tmp_path / "s2"), str(good), "--map",
                 "user=member", "--map", "item=sku", *key_args])
    err = capsys.readouterr().err
    assert code == EXIT_INPUT and "no column mapped to timestamp" in err
    assert not (tmp_path / "s2").exists()


def test_cli_retail_prepare_missing_data(tmp_path: Path, domain: Domain,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["retail", "prepare", "--silos-dir", str(tmp_path / "silos"), "--data",
                 str(tmp_path / "nope.csv.gz"), "--keyring", str(domain.keyring),
                 "--key-file", str(domain.secret.path)])
    err = capsys.readouterr().err
    assert code == EXIT_INPUT and "nope.csv.gz: the UCI Online Retail file is not there" in err
    assert not (tmp_path / "silos").exists()


@needs_online_retail
def test_cli_retail_prepare_real_file(tmp_path: Path, domain: Domain,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    silos = tmp_path / "retail"
    args = ["retail", "prepare", "--silos-dir", str(silos), "--limit", "20000",
            "--keyring", str(domain.keyring), "--key-file", str(domain.secret.path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "20,000 rows read" in out and "regional silos ready" in out

    expected, _ = write_silo_files(tmp_path / "check", DEFAULT_PATH, 20_000)
    assert set(expected) == {"uk", "eu", "rest"}
    for region, path in expected.items():
        lines = path.read_text().splitlines()[1:]
        with SiloStore.open(silos / region) as store:
            data = load_interactions(store)
            assert store.name == region
        assert len(data) == len(lines)
        assert data.n_users == len({line.split(",")[0] for line in lines})
        assert set(data.item) == {line.split(",")[1] for line in lines}
        assert data.timestamp.min() >= utc(2010, 12, 1) and not data.opt_out.any()
        assert f"{len(lines):,} interactions added" in out

    # the cleaned files (raw customer ids) did not outlive the ingestion
    assert sorted(p.name for p in silos.iterdir()) == ["eu", "rest", "uk"]
    assert main(args) == EXIT_INPUT  # never twice into the same silos
    assert "already holds a silo store with data" in capsys.readouterr().err
