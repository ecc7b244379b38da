"""Ingestion: every bad-input case is rejected precisely and leaves the store untouched."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedprofile.client import ingest as ingest_module
from fedprofile.client.ingest import IngestError, IngestReport
from fedprofile.client.schema import CUSTOMERS, ORDERS
from fedprofile.client.store import SiloStore

from .conftest import Domain

CUSTOMER_HEADER = ",".join(CUSTOMERS.column_names)
ORDER_HEADER = ",".join(ORDERS.column_names)
GOOD_CUSTOMERS = [
    "FL00000001,+86 138 0013 8000,a@example.com,Guangdong,Shenzhen,25-34,2023-05-01,false",
    "FL00000002,,b@example.com,Beijing,Beijing,35-44,2022-01-15,true",
]
GOOD_ORDERS = [
    "F1,FL00000001,2024-03-01T10:00:00,1200.50,flight_international,SZX-HKG,HK,false",
    "F2,FL00000001,2024-04-01T09:30:00,980,flight_international,SZX-HKG,HK,true",
    "F3,FL00000002,2024-04-02T08:00:00,650.00,flight_domestic,PEK-SHA,Shanghai,false",
]


def write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


Ingest = Callable[..., IngestReport]


@pytest.fixture()
def ingest(domain: Domain) -> Ingest:
    """Ingestion with the test key domain: these tests are about file validation."""
    def run(silo_dir: Path, customers: Path | None = None, orders: Path | None = None,
            silo_name: str | None = None, keep_raw_ids: bool = True) -> IngestReport:
        return ingest_module.ingest(silo_dir, customers, orders, silo_name,
                                    keys=domain.keys(silo_dir, keep_raw_ids))
    return run


def store_digest(silo: Path) -> str | None:
    """Content of the store as seen through SQLite (WAL included), or None if absent."""
    if not (silo / "store.sqlite").exists():
        return None
    h = hashlib.sha256()
    with SiloStore.open(silo) as store:
        for table in ("customers", "orders", "identities"):
            for row in store.iter_rows(table):
                h.update(repr(row).encode())
        h.update(repr(store.counts()).encode())
    return h.hexdigest()


@pytest.fixture()
def silo(ingest: Ingest, tmp_path: Path) -> Path:
    """A silo already holding the good customers and orders."""
    silo_dir = tmp_path / "flights"
    ingest(silo_dir, write(tmp_path / "c.csv", CUSTOMER_HEADER, GOOD_CUSTOMERS),
           write(tmp_path / "o.csv", ORDER_HEADER, GOOD_ORDERS))
    return silo_dir


def test_good_files_load(ingest: Ingest, silo: Path) -> None:
    with SiloStore.open(silo) as store:
        assert store.counts() == {"customers": 2, "orders": 3, "interactions": 0, "identities": 2,
                                  "ingestions": 1}
        assert store.name == "flights"


def test_customers_update_and_orders_append(ingest: Ingest, silo: Path, tmp_path: Path) -> None:
    moved = GOOD_CUSTOMERS[0].replace("Guangdong,Shenzhen", "Shanghai,Shanghai")
    report = ingest(silo, write(tmp_path / "c2.csv", CUSTOMER_HEADER, [moved]),
                    write(tmp_path / "o2.csv", ORDER_HEADER,
                          ["F9,FL00000002,2024-05-01T08:00:00,10,flight_domestic,x,y,false"]))
    assert (report.customers_added, report.customers_updated, report.orders_added) == (0, 1, 1)
    with SiloStore.open(silo) as store:
        provinces = [r[3] for r in store.iter_rows("customers")]
    assert sorted(provinces) == ["Beijing", "Shanghai"]


def _bad_order(rows: list[str]) -> list[str]:
    return [GOOD_ORDERS[0], *rows]


BAD_ORDER_CASES = {
    # name: (rows after a good first data row, expected line, expected field, text in message)
    "negative amount": (
        ["F8,FL00000001,2024-03-02T10:00:00,-5.00,flight_domestic,x,y,false"], 3, "amount", "negative"),
    "absurd amount": (
        ["F8,FL00000001,2024-03-02T10:00:00,99999999,flight_domestic,x,y,false"], 3, "amount",
        "implausibly large"),
    "wrong type": (
        ["F8,FL00000001,2024-03-02T10:00:00,12 yuan,flight_domestic,x,y,false"], 3, "amount",
        "expected a number"),
    "not finite": (
        ["F8,FL00000001,2024-03-02T10:00:00,nan,flight_domestic,x,y,false"], 3, "amount", "finite"),
    "unparseable date": (
        ["F8,FL00000001,03/02/2024 10am,5,flight_domestic,x,y,false"], 3, "order_time",
        "not a date-time"),
    "date out of range": (
        ["F8,FL00000001,1899-01-01T00:00:00,5,flight_domestic,x,y,false"], 3, "order_time",
        "outside"),
    "duplicate order id in file": (
        ["F1,FL00000001,2024-03-02T10:00:00,5,flight_domestic,x,y,false"], 3, "order_id",
        "duplicate order_id"),
    "bad boolean": (
        ["F8,FL00000001,2024-03-02T10:00:00,5,flight_domestic,x,y,maybe"], 3, "coupon_used",
        "expected true/false"),
    "unknown category": (
        ["F8,FL00000001,2024-03-02T10:00:00,5,cruise,x,y,false"], 3, "category", "not one of"),
    "missing required value": (
        ["F8,,2024-03-02T10:00:00,5,flight_domestic,x,y,false"], 3, "customer_id", "required"),
    "unknown customer": (
        ["F8,FL99999999,2024-03-02T10:00:00,5,flight_domestic,x,y,false"], 3, "customer_id",
        "unknown customer"),
    "too long text": (
        ["F8,FL00000001,2024-03-02T10:00:00,5,flight_domestic," + "x" * 300 + ",y,false"], 3,
        "product", "characters long"),
}


@pytest.mark.parametrize("case", sorted(BAD_ORDER_CASES))
def test_bad_order_rows_rejected_store_unchanged(ingest: Ingest, case: str, silo: Path, tmp_path: Path) -> None:
    rows, line, field, text = BAD_ORDER_CASES[case]
    before = store_digest(silo)
    bad = write(tmp_path / "bad_orders.csv", ORDER_HEADER,
                [GOOD_ORDERS[0].replace("F1,", "F7,"), *rows])
    with pytest.raises(IngestError) as info:
        ingest(silo, orders=bad)
    problem = info.value.problems[0]
    assert (Path(problem.file).name, problem.line, problem.field) == ("bad_orders.csv", line, field)
    assert text in problem.message
    message = str(info.value)
    assert f"bad_orders.csv:{line}: field '{field}'" in message
    assert "not changed" in message
    assert store_digest(silo) == before


def test_duplicate_order_id_against_store(ingest: Ingest, silo: Path, tmp_path: Path) -> None:
    before = store_digest(silo)
    again = write(tmp_path / "again.csv", ORDER_HEADER,
                  ["F10,FL00000001,2024-06-01T10:00:00,5,flight_domestic,x,y,false",
                   GOOD_ORDERS[1]])
    with pytest.raises(IngestError) as info:
        ingest(silo, orders=again)
    assert [(p.line, p.field) for p in info.value.problems] == [(3, "order_id")]
    assert "already in the silo store" in str(info.value)
    assert store_digest(silo) == before


def test_missing_column(ingest: Ingest, silo: Path, tmp_path: Path) -> None:
    before = store_digest(silo)
    header = ORDER_HEADER.replace(",amount", "")
    rows = [r.replace(",1200.50", "") for r in GOOD_ORDERS[:1]]
    with pytest.raises(IngestError) as info:
        ingest(silo, orders=write(tmp_path / "o.csv", header, rows))
    assert "o.csv:1: field 'amount': missing column" in str(info.value)
    assert store_digest(silo) == before


@pytest.mark.parametrize("content", [b"", b"   \n", ORDER_HEADER.encode() + b"\n"])
def test_empty_file(ingest: Ingest, content: bytes, silo: Path, tmp_path: Path) -> None:
    before = store_digest(silo)
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(IngestError) as info:
        ingest(silo, orders=path)
    assert "empty.csv" in str(info.value)
    assert "empty" in str(info.value) or "no data rows" in str(info.value)
    assert store_digest(silo) == before


def test_wrong_encoding(ingest: Ingest, silo: Path, tmp_path: Path) -> None:
    before = store_digest(silo)
    path = tmp_path / "latin1.csv"
    text = "\n".join([ORDER_HEADER, GOOD_ORDERS[0].replace("F1,", "F5,"),
                      "F6,FL00000001,2024-03-02T10:00:00,5,hotel_domestic,hôtel,y,false"])
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(IngestError) as info:
        ingest(silo, orders=path)
    problem = info.value.problems[0]
    assert (problem.line, problem.field) == (3, "product")
    assert "UTF-8" in problem.message
    assert store_digest(silo) == before


def test_wrong_field_count_and_malformed_csv(ingest: Ingest, silo: Path, tmp_path: Path) -> None:
    with pytest.raises(IngestError) as info:
        ingest(silo, orders=write(tmp_path / "short.csv", ORDER_HEADER, ["F5,FL00000001,2024"]))
    assert "short.csv:2: expected 8 fields, found 3" in str(info.value)


def test_errors_in_both_files_all_reported_nothing_written(ingest: Ingest, tmp_path: Path) -> None:
    silo_dir = tmp_path / "new-silo"
    customers = write(tmp_path / "c.csv", CUSTOMER_HEADER,
                      [GOOD_CUSTOMERS[0].replace("25-34", "30-ish")])
    orders = write(tmp_path / "o.csv", ORDER_HEADER,
                   [GOOD_ORDERS[0].replace("1200.50", "-1")])
    with pytest.raises(IngestError) as info:
        ingest(silo_dir, customers, orders)
    fields = {(Path(p.file).name, p.field) for p in info.value.problems}
    assert fields == {("c.csv", "age_band"), ("o.csv", "amount")}
    assert not silo_dir.exists(), "a rejected first ingestion must not create a store"


def test_duplicate_customer_and_bad_signup(ingest: Ingest, tmp_path: Path) -> None:
    rows = [GOOD_CUSTOMERS[0], GOOD_CUSTOMERS[0], GOOD_CUSTOMERS[1].replace("2022-01-15", "15/01/2022")]
    with pytest.raises(IngestError) as info:
        ingest(tmp_path / "s", customers=write(tmp_path / "c.csv", CUSTOMER_HEADER, rows))
    found = [(p.line, p.field) for p in info.value.problems]
    assert found == [(3, "customer_id"), (4, "signup_date")]


def test_many_errors_are_counted_not_all_listed(ingest: Ingest, tmp_path: Path) -> None:
    rows = [f"F{i},FL1,2024-01-01T00:00:00,-1,datapack,x,y,false" for i in range(50)]
    customers = write(tmp_path / "c.csv", CUSTOMER_HEADER,
                      [GOOD_CUSTOMERS[0].replace("FL00000001", "FL1")])
    with pytest.raises(IngestError) as info:
        ingest(tmp_path / "s", customers, write(tmp_path / "o.csv", ORDER_HEADER, rows))
    assert len(info.value.problems) == 50
    assert "50 problems" in str(info.value) and "and 30 more" in str(info.value)


def test_unsupported_type_and_missing_file(ingest: Ingest, tmp_path: Path) -> None:
    (tmp_path / "o.xlsx").write_bytes(b"PK")
    with pytest.raises(IngestError, match="unsupported file type"):
        ingest(tmp_path / "s", orders=tmp_path / "o.xlsx")
    with pytest.raises(IngestError, match="no such file"):
        ingest(tmp_path / "s", orders=tmp_path / "nope.csv")


# -- Parquet -----------------------------------------------------------------
def _orders_table(amounts: list[object]) -> pa.Table:
    import datetime as dt
    n = len(amounts)
    return pa.table({
        "order_id": [f"P{i}" for i in range(n)],
        "customer_id": ["FL00000001"] * n,
        "order_time": [dt.datetime(2024, 5, 1, 12) + dt.timedelta(days=i) for i in range(n)],
        "amount": amounts,
        "category": ["datapack"] * n,
        "product": ["datapack:HK:daily-unlimited"] * n,
        "destination": ["HK"] * n,
        "coupon_used": [False] * n,
    })


def test_parquet_loads(ingest: Ingest, silo: Path, tmp_path: Path) -> None:
    pq.write_table(_orders_table([35.0, 42.5]), tmp_path / "o.parquet")
    report = ingest(silo, orders=tmp_path / "o.parquet")
    assert report.orders_added == 2


def test_parquet_bad_value_names_row_and_field(ingest: Ingest, silo: Path, tmp_path: Path) -> None:
    before = store_digest(silo)
    pq.write_table(_orders_table([35.0, -2.0, 40.0]), tmp_path / "o.parquet")
    with pytest.raises(IngestError) as info:
        ingest(silo, orders=tmp_path / "o.parquet")
    assert "o.parquet: row 2: field 'amount'" in str(info.value)
    assert store_digest(silo) == before


def test_parquet_wrong_type_and_corrupt(ingest: Ingest, silo: Path, tmp_path: Path) -> None:
    pq.write_table(_orders_table(["35", "abc"]), tmp_path / "o.parquet")
    with pytest.raises(IngestError, match=r"row 2: field 'amount': expected a number"):
        ingest(silo, orders=tmp_path / "o.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(IngestError, match="not a readable Parquet file"):
        ingest(silo, orders=tmp_path / "broken.parquet")


def test_a_v2_store_is_migrated_to_v3_on_open(tmp_path: Path) -> None:
    """v3 only adds a table and a column, so an existing silo keeps working after an upgrade."""
    import sqlite3

    from fedprofile.client.store import SCHEMA_VERSION, STORE_FILENAME, SiloStore

    SiloStore.create(tmp_path / "s", name="s").close()
    conn = sqlite3.connect(tmp_path / "s" / STORE_FILENAME)
    with conn:  # make it look exactly like a store written by the v2 code
        conn.execute("DROP TABLE interactions")
        conn.execute("ALTER TABLE ingestions DROP COLUMN interactions_added")
        conn.execute("UPDATE silo_meta SET value='2' WHERE key='schema_version'")
    conn.close()
    with SiloStore.open(tmp_path / "s") as store:
        assert store.meta()["schema_version"] == str(SCHEMA_VERSION) == "3"
        assert store.counts()["interactions"] == 0
        columns = [r[1] for r in store.execute("PRAGMA table_info(ingestions)")]
        assert "interactions_added" in columns
