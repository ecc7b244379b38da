"""Validated, all-or-nothing ingestion of customers and orders into a silo store.

A data engineer loading an export needs to know exactly what is wrong with it
(file, line, field, value) and needs the silo to be untouched when it is wrong:
a half-loaded silo would silently skew every model trained on it. So every file
is parsed and checked completely *before* the store is opened for writing, and
the write itself is a single SQLite transaction.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedprofile.privacy.pseudonyms import IdentifierReport, pseudonymize_values
from fedprofile.privacy.silo_keys import SiloKeys

from .schema import CUSTOMERS, MAX_AMOUNT, MAX_TEXT_LENGTH, ORDERS, Column, Kind, Table
from .store import CUSTOMER_COLUMNS, ORDER_COLUMNS, SiloStore, datetime_to_epoch

MAX_REPORTED_ERRORS = 20
"""How many problems an error message lists; the total count is always given."""

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}
_MIN_DATE = dt.date(1970, 1, 2)
_MAX_DATE = dt.date(2100, 1, 1)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, located precisely."""

    file: str
    line: int | None  # physical line in a CSV (header = 1) or 1-based row in Parquet
    field: str | None
    message: str
    unit: str = "line"

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}" if self.unit == "line" else f": row {self.line}"
        what = f"field '{self.field}': " if self.field else ""
        return f"{where}: {what}{self.message}"


class IngestError(ValueError):
    """Input rejected; nothing was written. ``problems`` lists what is wrong."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:MAX_REPORTED_ERRORS])
        more = len(self.problems) - MAX_REPORTED_ERRORS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"input rejected, the silo store was not changed "
            f"({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):\n"
            f"{shown}{tail}"
        )


@dataclass
class IngestReport:
    """What an ingestion did; returned only when it committed."""

    silo_dir: Path
    customers_added: int = 0
    customers_updated: int = 0
    orders_added: int = 0
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    identifiers: list[IdentifierReport] = field(default_factory=list)
    key_domain: str = ""
    key_version: int = 0
    raw_ids_kept: bool = False


# ---------------------------------------------------------------------------
# Reading files into (location, raw record) pairs
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _RawTable:
    path: str
    unit: str  # "line" (CSV) or "row" (Parquet)
    header: list[str]
    records: list[tuple[int, dict[str, Any]]]
    sha256: str


def _field_at_offset(data: bytes, offset: int, header: list[str]) -> str | None:
    """Best guess of which column a byte offset falls in (for encoding errors)."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    index = data[line_start:offset].count(b",")
    return header[index] if 0 <= index < len(header) else None


def _read_csv(path: Path) -> _RawTable:
    name = str(path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not data.strip():
        raise IngestError([Problem(name, None, None, "file is empty (no header, no rows)")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        first_line = data.split(b"\n", 1)[0]
        header = first_line.decode("utf-8", "replace").strip().split(",")
        line = data.count(b"\n", 0, err.start) + 1
        raise IngestError(
            [
                Problem(
                    name,
                    line,
                    _field_at_offset(data, err.start, header) if line > 1 else None,
                    f"not valid UTF-8 (byte 0x{data[err.start]:02x}); "
                    "re-export the file as UTF-8",
                )
            ]
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise IngestError([Problem(name, None, None, "file is empty")]) from None
    records: list[tuple[int, dict[str, Any]]] = []
    problems: list[Problem] = []
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != len(header):
                problems.append(
                    Problem(name, reader.line_num, None,
                            f"expected {len(header)} fields, found {len(row)}")
                )
                continue
            records.append((reader.line_num, dict(zip(header, row, strict=True))))
    except csv.Error as err:
        problems.append(Problem(name, reader.line_num, None, f"malformed CSV: {err}"))
    if problems:
        raise IngestError(problems)
    return _RawTable(name, "line", header, records, digest)


def _read_parquet(path: Path) -> _RawTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = str(path)
    data = path.read_bytes()
    if not data:
        raise IngestError([Problem(name, None, None, "file is empty")])
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as err:
        raise IngestError([Problem(name, None, None, f"not a readable Parquet file ({err})")]) from None
    header = list(table.column_names)
    columns = {c: table.column(c).to_pylist() for c in header}
    records = [
        (i + 1, {c: columns[c][i] for c in header}) for i in range(table.num_rows)
    ]
    return _RawTable(name, "row", header, records, hashlib.sha256(data).hexdigest())


def read_table_file(path: Path) -> _RawTable:
    """Read a CSV or Parquet file; the format is chosen by the file's suffix."""
    path = Path(path)
    if not path.is_file():
        raise IngestError([Problem(str(path), None, None, "no such file")])
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    raise IngestError(
        [Problem(str(path), None, None, f"unsupported file type '{suffix}': use .csv or .parquet")]
    )


# ---------------------------------------------------------------------------
# Validating values
# ---------------------------------------------------------------------------
class _Bad(ValueError):
    """A value that does not fit its column."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_number(value: Any, *, allow_negative: bool) -> float:
    """A finite number (CSV text or a Parquet scalar) within ``MAX_AMOUNT`` in size.

    Order amounts may not be negative; an interaction's value may (a refund).
    """
    if isinstance(value, bool):
        raise _Bad(f"expected a number, got {_show(value)}")
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise _Bad(f"expected a number, got {_show(value)}") from None
    elif isinstance(value, int | float | decimal.Decimal):
        number = float(value)
    else:
        raise _Bad(f"expected a number, got {type(value).__name__} {_show(value)}")
    if not math.isfinite(number):
        raise _Bad(f"{_show(value)} is not a finite number")
    if number < 0 and not allow_negative:
        raise _Bad(f"{_show(value)} is negative")
    if abs(number) > MAX_AMOUNT:
        raise _Bad(f"{_show(value)} is implausibly large (max "
                   f"{'±' if allow_negative else ''}{MAX_AMOUNT:,.0f})")
    return number


def _parse_value(col: Column, value: Any) -> Any:
    """Parse one raw value (CSV text or a Parquet scalar) into its stored form."""
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            value = None
    if value is None:
        if col.required:
            raise _Bad("is required but empty")
        return None
    if col.kind is Kind.TEXT:
        if not isinstance(value, str):
            raise _Bad(f"expected text, got {type(value).__name__} {_show(value)}")
        if len(value) > MAX_TEXT_LENGTH:
            raise _Bad(f"is {len(value)} characters long (max {MAX_TEXT_LENGTH})")
        if any(ord(ch) < 32 for ch in value):
            raise _Bad("contains control characters")
        if col.choices is not None and value not in col.choices:
            raise _Bad(f"{_show(value)} is not one of {', '.join(col.choices)}")
        return value
    if col.kind is Kind.AMOUNT:
        return parse_number(value, allow_negative=False)
    if col.kind is Kind.BOOL:
        if isinstance(value, bool):
            return int(value)
        text = str(value).strip().lower()
        if text in _TRUE:
            return 1
        if text in _FALSE:
            return 0
        raise _Bad(f"expected true/false, got {_show(value)}")
    if col.kind is Kind.DATE:
        if isinstance(value, dt.datetime):
            value = value.date()
        if isinstance(value, str):
            try:
                value = dt.date.fromisoformat(value)
            except ValueError:
                raise _Bad(f"{_show(value)} is not a date (YYYY-MM-DD)") from None
        if not isinstance(value, dt.date):
            raise _Bad(f"expected a date, got {type(value).__name__} {_show(value)}")
        if not _MIN_DATE <= value < _MAX_DATE:
            raise _Bad(f"{value.isoformat()} is outside {_MIN_DATE.year}-{_MAX_DATE.year - 1}")
        return value.isoformat()
    if col.kind is Kind.DATETIME:
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value)
            except ValueError:
                raise _Bad(f"{_show(value)} is not a date-time (YYYY-MM-DDTHH:MM:SS)") from None
        elif isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            value = dt.datetime(value.year, value.month, value.day)
        if not isinstance(value, dt.datetime):
            raise _Bad(f"expected a date-time, got {type(value).__name__} {_show(value)}")
        if not _MIN_DATE <= value.date() < _MAX_DATE:
            raise _Bad(f"{value.isoformat()} is outside {_MIN_DATE.year}-{_MAX_DATE.year - 1}")
        return datetime_to_epoch(value)
    raise AssertionError(col.kind)  # pragma: no cover - all kinds handled above


def _validate(raw: _RawTable, table: Table) -> tuple[list[tuple[Any, ...]], list[Problem], list[int]]:
    """Check a raw table against the schema; returns (rows, problems, line numbers)."""
    problems: list[Problem] = []
    missing = [c for c in table.column_names if c not in raw.header]
    for name in missing:
        problems.append(Problem(raw.path, 1 if raw.unit == "line" else None, name,
                                "missing column", raw.unit))
    dupes = {h for h in raw.header if raw.header.count(h) > 1}
    for name in sorted(dupes):
        problems.append(Problem(raw.path, 1 if raw.unit == "line" else None, name,
                                "column appears more than once", raw.unit))
    if problems:
        return [], problems, []
    if not raw.records:
        return [], [Problem(raw.path, None, None, "has a header but no data rows")], []

    rows: list[tuple[Any, ...]] = []
    lines: list[int] = []
    seen: dict[str, int] = {}
    for line, record in raw.records:
        parsed: list[Any] = []
        ok = True
        for col in table.columns:
            try:
                parsed.append(_parse_value(col, record[col.name]))
            except _Bad as err:
                problems.append(Problem(raw.path, line, col.name, str(err), raw.unit))
                ok = False
        if not ok:
            continue
        key = parsed[table.column_names.index(table.key)]
        if key in seen:
            problems.append(
                Problem(raw.path, line, table.key,
                        f"duplicate {table.key} {_show(key)} (first at {raw.unit} {seen[key]})",
                        raw.unit)
            )
            continue
        seen[key] = line
        rows.append(tuple(parsed))
        lines.append(line)
    return rows, problems, lines


# ---------------------------------------------------------------------------
# Ingesting
# ---------------------------------------------------------------------------
def _check_store_keys(store: SiloStore, keys: SiloKeys) -> list[Problem]:
    """A silo's pseudonyms must all come from one key domain and version."""
    meta = store.meta()
    where = str(store.path)
    if meta.get("key_domain") != keys.domain:
        return [Problem(where, None, None, f"this silo belongs to key domain "
                        f"{meta.get('key_domain')!r}, not {keys.domain!r}")]
    if int(meta.get("key_version", 0)) != keys.version:
        return [Problem(where, None, None, f"this silo's pseudonyms use key version "
                        f"{meta.get('key_version')}, the keyring's active version is "
                        f"{keys.version}: run `fedprofile silo rekey` first")]
    if meta.get("raw_ids") != ("sealed" if keys.keeps_raw_ids else "none"):
        return [Problem(where, None, None, f"this silo's raw-identifier policy is "
                        f"{meta.get('raw_ids')!r}; ingest with the same policy")]
    return []


def _pseudonymize_customers(rows: list[tuple[Any, ...]], lines: list[int], source: _RawTable,
                            keys: SiloKeys, report: IngestReport
                            ) -> tuple[list[tuple[Any, ...]], list[tuple[str, bytes]], list[Problem]]:
    """Input customer rows -> stored rows (pseudonyms only) and sealed identities."""
    pn = keys.pseudonymizer
    accounts, account_report = pseudonymize_values([r[0] for r in rows], "account", pn)
    phones, phone_report = pseudonymize_values([r[1] for r in rows], "phone", pn)
    emails, email_report = pseudonymize_values([r[2] for r in rows], "email", pn)
    problems = [Problem(source.path, line, "customer_id", "not a usable account identifier",
                        source.unit)
                for key, line in zip(accounts, lines, strict=True) if key is None]
    # Phones and e-mails are optional: an unusable one is dropped (no pseudonym,
    # never a shared one) and counted in the report, not a reason to reject.
    report.identifiers = [account_report, phone_report, email_report]
    stored, identities = [], []
    for row, key, phone, email in zip(rows, accounts, phones, emails, strict=True):
        if key is None:
            continue
        stored.append((key, phone, email, *row[3:], keys.version))
        if keys.keeps_raw_ids:
            identities.append((key, keys.seal_identity(
                key, {"customer_id": row[0], "phone": row[1], "email": row[2]})))
    return stored, identities, problems


def ingest(
    silo_dir: Path,
    customers: Path | None = None,
    orders: Path | None = None,
    silo_name: str | None = None,
    *,
    keys: SiloKeys,
) -> IngestReport:
    """Load a customers file and/or an orders file into the silo at ``silo_dir``.

    Raw identifiers never reach the store in clear: customers are keyed by the
    pseudonym of their account id, phone and e-mail are stored as pseudonyms,
    and the raw values are sealed with the silo's identity key (or dropped, if
    ``keys`` keeps none).

    All-or-nothing: every problem in every file is collected first; if there is
    any, :class:`IngestError` is raised and the store is not modified. Customers
    already in the store are updated (master data changes); orders are
    append-only, so an order id already in the store is an error.
    """
    if customers is None and orders is None:
        raise ValueError("nothing to ingest: give a customers file, an orders file or both")
    report = IngestReport(silo_dir=Path(silo_dir), key_domain=keys.domain,
                          key_version=keys.version, raw_ids_kept=keys.keeps_raw_ids)
    problems: list[Problem] = []
    cust_rows: list[tuple[Any, ...]] = []
    cust_lines: list[int] = []
    order_rows: list[tuple[Any, ...]] = []
    order_lines: list[int] = []
    sources: list[_RawTable] = []
    cust_src: _RawTable | None = None
    order_src: _RawTable | None = None

    for path, table in ((customers, CUSTOMERS), (orders, ORDERS)):
        if path is None:
            continue
        try:
            raw = read_table_file(Path(path))
        except IngestError as err:
            problems.extend(err.problems)
            continue
        sources.append(raw)
        extra = [h for h in raw.header if h not in table.column_names]
        if extra:
            report.ignored_columns[raw.path] = extra
        rows, found, lines = _validate(raw, table)
        problems.extend(found)
        if table is CUSTOMERS:
            cust_rows, cust_lines, cust_src = rows, lines, raw
        else:
            order_rows, order_lines, order_src = rows, lines, raw
    if problems:
        raise IngestError(problems)

    stored_customers: list[tuple[Any, ...]] = []
    identities: list[tuple[str, bytes]] = []
    if cust_rows and cust_src is not None:
        stored_customers, identities, found = _pseudonymize_customers(
            cust_rows, cust_lines, cust_src, keys, report)
        problems.extend(found)
    # Orders name customers by their raw account id; map it to the same pseudonym.
    order_ids = sorted({r[1] for r in order_rows})
    order_keys, _ = pseudonymize_values(order_ids, "account", keys.pseudonymizer)
    key_of = dict(zip(order_ids, order_keys, strict=True))
    stored_orders = [(r[0], key_of[r[1]], *r[2:]) for r in order_rows]
    if problems:
        raise IngestError(problems)

    existing_store = (Path(silo_dir) / "store.sqlite").is_file()
    store = SiloStore.open(silo_dir) if existing_store else None
    try:
        if store is not None:
            problems.extend(_check_store_keys(store, keys))
            if problems:
                raise IngestError(problems)
        # Cross-file and cross-store checks, still before any write.
        new_customers = {r[0] for r in stored_customers}
        if stored_orders and order_src is not None:
            ids = [r[0] for r in stored_orders]
            already = store.existing_keys("orders", ids) if store else set()
            unknown = sorted({r[1] for r in stored_orders if r[1] is not None} - new_customers)
            known = store.existing_keys("customers", unknown) if store else set()
            for row, raw_row, line in zip(stored_orders, order_rows, order_lines, strict=True):
                if row[0] in already:
                    problems.append(Problem(order_src.path, line, "order_id",
                                            f"duplicate order_id {_show(row[0])} "
                                            "(already in the silo store)", order_src.unit))
                if row[1] is None or (row[1] not in new_customers and row[1] not in known):
                    problems.append(Problem(order_src.path, line, "customer_id",
                                            f"unknown customer {_show(raw_row[1])} "
                                            "(not in the customers file nor the store)",
                                            order_src.unit))
        if problems:
            raise IngestError(problems)
        updated = store.existing_keys("customers", sorted(new_customers)) if store else set()
    finally:
        if store is not None:
            store.close()

    keys.persist()
    meta = {"key_domain": keys.domain, "key_version": str(keys.version),
            "raw_ids": "sealed" if keys.keeps_raw_ids else "none"}
    with SiloStore.create(silo_dir, name=silo_name, meta=meta) as store:
        cols = ", ".join(CUSTOMER_COLUMNS)
        marks = ", ".join("?" * len(CUSTOMER_COLUMNS))
        with store.transaction() as conn:
            conn.executemany(
                f"INSERT INTO customers ({cols}) VALUES ({marks}) "
                f"ON CONFLICT(customer_key) DO UPDATE SET "
                + ", ".join(f"{c}=excluded.{c}" for c in CUSTOMER_COLUMNS[1:]),
                stored_customers,
            )
            conn.executemany(
                "INSERT INTO identities (customer_key, sealed) VALUES (?, ?) "
                "ON CONFLICT(customer_key) DO UPDATE SET sealed=excluded.sealed",
                identities,
            )
            ocols = ", ".join(ORDER_COLUMNS)
            omarks = ", ".join("?" * len(ORDER_COLUMNS))
            conn.executemany(f"INSERT INTO orders ({ocols}) VALUES ({omarks})", stored_orders)
            report.customers_added = len(stored_customers) - len(updated)
            report.customers_updated = len(updated)
            report.orders_added = len(stored_orders)
            conn.execute(
                "INSERT INTO ingestions (at, source, sha256, customers_added, "
                "customers_updated, orders_added) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    ";".join(Path(s.path).name for s in sources),
                    ";".join(s.sha256 for s in sources),
                    report.customers_added,
                    report.customers_updated,
                    report.orders_added,
                ),
            )
    return report


__all__ = ["IngestError", "IngestReport", "Problem", "ingest", "read_table_file"]
