"""A silo's local store: one SQLite file in the silo's own directory.

Why SQLite: it is in the standard library (nothing to operate or secure beyond a
file), it is transactional (an ingestion is one transaction, so a bad file leaves
the store exactly as it was, even if the process dies half-way), and it is
plenty fast for the per-customer aggregates the silo computes locally. The store
is only ever opened by the silo's own processes; nothing in it leaves the silo.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class StoreError(RuntimeError):
    """The silo store is missing, unreadable or of an unknown schema version."""


STORE_FILENAME = "store.sqlite"
SCHEMA_VERSION = 3
"""v3 added ``interactions`` (generic user-item events) and counts them per ingestion;
a v2 store is migrated on open."""

# What a silo stores is not what it ingests: raw identifiers are replaced by
# keyed pseudonyms at ingestion (see fedprofile.privacy.pseudonyms). Customers
# are keyed by the pseudonym of the line's own account id; phone and e-mail are
# kept only as pseudonyms, which is what links a person across lines in one key
# domain. The raw values, if the silo keeps them at all, sit sealed (AES-GCM) in
# ``identities``, readable only with the silo's secret.
_SCHEMA_SQL = (
    "CREATE TABLE IF NOT EXISTS silo_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS customers (
        customer_key TEXT PRIMARY KEY,
        phone_pn TEXT,
        email_pn TEXT,
        province TEXT NOT NULL,
        city TEXT NOT NULL,
        age_band TEXT NOT NULL,
        signup_date TEXT NOT NULL,
        marketing_opt_out INTEGER NOT NULL,
        key_version INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS orders (
        order_id TEXT PRIMARY KEY,
        customer_key TEXT NOT NULL REFERENCES customers (customer_key),
        order_time INTEGER NOT NULL,
        amount REAL NOT NULL,
        category TEXT NOT NULL,
        product TEXT NOT NULL,
        destination TEXT,
        coupon_used INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_key, order_time)",
    "CREATE INDEX IF NOT EXISTS customers_by_phone ON customers (phone_pn)",
    """CREATE TABLE IF NOT EXISTS identities (
        customer_key TEXT PRIMARY KEY REFERENCES customers (customer_key),
        sealed BLOB NOT NULL
    )""",
    # Generic user-item events (any line's interactions file: purchases, views):
    # what profiles and the recommender read, next to the orders above.
    """CREATE TABLE IF NOT EXISTS interactions (
        customer_key TEXT NOT NULL REFERENCES customers (customer_key),
        item TEXT NOT NULL,
        ts INTEGER NOT NULL,
        value REAL,
        region TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS interactions_by_customer ON interactions (customer_key, ts)",
    """CREATE TABLE IF NOT EXISTS ingestions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        source TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        customers_added INTEGER NOT NULL,
        customers_updated INTEGER NOT NULL,
        orders_added INTEGER NOT NULL,
        interactions_added INTEGER NOT NULL DEFAULT 0
    )""",
)

CUSTOMER_COLUMNS: tuple[str, ...] = (
    "customer_key", "phone_pn", "email_pn", "province", "city", "age_band", "signup_date",
    "marketing_opt_out", "key_version",
)
ORDER_COLUMNS: tuple[str, ...] = (
    "order_id", "customer_key", "order_time", "amount", "category", "product", "destination",
    "coupon_used",
)
STORED_TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "customers": ("customer_key", CUSTOMER_COLUMNS),
    "orders": ("order_id", ORDER_COLUMNS),
    "identities": ("customer_key", ("customer_key", "sealed")),
}


@dataclass(frozen=True)
class OrderArrays:
    """A silo's orders as columns, ordered by (customer, time).

    ``customer_index`` points into the ``customer_ids`` of the matching
    :class:`CustomerArrays`, so per-customer aggregates are plain numpy
    reductions.
    """

    customer_index: np.ndarray  # int64
    order_time: np.ndarray  # int64, seconds since epoch
    amount: np.ndarray  # float64
    category: np.ndarray  # object (str)
    coupon_used: np.ndarray  # bool


@dataclass(frozen=True)
class CustomerArrays:
    """A silo's customers as columns, sorted by customer key (a pseudonym)."""

    customer_ids: np.ndarray  # object (str): pseudonymous customer keys
    province: np.ndarray  # object (str)
    city: np.ndarray  # object (str)
    age_band: np.ndarray  # object (str)
    signup_date: np.ndarray  # int64, seconds since epoch at midnight
    marketing_opt_out: np.ndarray  # bool


def date_to_epoch(value: dt.date) -> int:
    """Seconds since the epoch at midnight of ``value`` (naive, local platform time)."""
    return int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp())


def datetime_to_epoch(value: dt.datetime) -> int:
    """Seconds since the epoch; an aware datetime is converted to UTC first."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return int(value.replace(tzinfo=dt.UTC).timestamp())


class SiloStore:
    """Read and write access to one silo's SQLite store.

    Use :meth:`open` for an existing store and :meth:`create` for a new one, so
    that a typo in a path never silently creates an empty silo.
    """

    def __init__(self, silo_dir: Path, conn: sqlite3.Connection) -> None:
        self.silo_dir = silo_dir
        self._conn = conn

    # -- lifecycle ---------------------------------------------------------
    @classmethod
    def create(cls, silo_dir: Path, name: str | None = None,
               meta: dict[str, str] | None = None) -> SiloStore:
        """Create (or open, if it exists) the store in ``silo_dir``.

        ``meta`` (key domain, key version, raw-id policy) is recorded when the
        store is created and left as it is when it already exists.
        """
        silo_dir = Path(silo_dir)
        silo_dir.mkdir(parents=True, exist_ok=True)
        conn = cls._connect(silo_dir / STORE_FILENAME)
        with conn:
            for stmt in _SCHEMA_SQL:
                conn.execute(stmt)
            conn.execute(
                "INSERT OR IGNORE INTO silo_meta VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            conn.execute(
                "INSERT OR IGNORE INTO silo_meta VALUES ('name', ?)",
                (name or silo_dir.name,),
            )
            for key, value in (meta or {}).items():
                conn.execute("INSERT OR IGNORE INTO silo_meta VALUES (?, ?)", (key, value))
        store = cls(silo_dir, conn)
        store._check_version()
        return store

    @classmethod
    def open(cls, silo_dir: Path) -> SiloStore:
        """Open an existing store; a clear error if there is none."""
        silo_dir = Path(silo_dir)
        path = silo_dir / STORE_FILENAME
        if not path.is_file():
            raise StoreError(
                f"no silo store at {path}: create one with `fedprofile silo ingest` "
                "or `fedprofile silo ingest-interactions`"
            )
        store = cls(silo_dir, cls._connect(path))
        store._check_version()
        return store

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{path}: not a readable silo store ({err})") from err
        return conn

    def _check_version(self) -> None:
        try:
            row = self._conn.execute(
                "SELECT value FROM silo_meta WHERE key='schema_version'"
            ).fetchone()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: not a silo store ({err})") from err
        if row is not None and int(row[0]) == 2:
            self._migrate_from_v2()
            return
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {row[0] if row else 'missing'}, "
                f"this fedprofile reads version {SCHEMA_VERSION}"
            )

    def _migrate_from_v2(self) -> None:
        """v2 -> v3 is additive (a new table), so it is done in place, in one transaction."""
        with self.transaction() as conn:
            for stmt in _SCHEMA_SQL:
                conn.execute(stmt)
            conn.execute("ALTER TABLE ingestions ADD COLUMN interactions_added INTEGER NOT NULL "
                         "DEFAULT 0")
            conn.execute("UPDATE silo_meta SET value=? WHERE key='schema_version'",
                         (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SiloStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self.silo_dir / STORE_FILENAME

    @property
    def name(self) -> str:
        return self.meta()["name"]

    def meta(self) -> dict[str, str]:
        """The silo's metadata: name, schema version, key domain and version, raw-id policy."""
        return dict(self._conn.execute("SELECT key, value FROM silo_meta").fetchall())

    def set_meta(self, conn: sqlite3.Connection, key: str, value: str) -> None:
        """Update one metadata value inside a :meth:`transaction`."""
        conn.execute("INSERT INTO silo_meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                     "SET value=excluded.value", (key, value))

    # -- writing -----------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside commits together or not at all.

        ``BEGIN IMMEDIATE`` takes the write lock up front so two ingestions into
        the same silo serialise instead of failing half-way.
        """
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- reading -----------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return {
            t: int(self._conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
            for t in ("customers", "orders", "interactions", "identities", "ingestions")
        }

    def existing_keys(self, table: str, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are already primary keys of ``table`` (checked in chunks)."""
        key_column = STORED_TABLES[table][0]
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT {key_column} FROM {table} WHERE {key_column} IN ({marks})",
                chunk,
            )
            found.update(r[0] for r in rows)
        return found

    def ingestions(self) -> list[dict[str, object]]:
        cur = self._conn.execute("SELECT * FROM ingestions ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def customer_arrays(self) -> CustomerArrays:
        rows = self._conn.execute(
            "SELECT customer_key, province, city, age_band, signup_date, marketing_opt_out "
            "FROM customers ORDER BY customer_key"
        ).fetchall()
        cols = list(zip(*rows, strict=True)) if rows else [()] * 6
        signup = np.array(
            [date_to_epoch(dt.date.fromisoformat(d)) for d in cols[4]], dtype=np.int64
        )
        return CustomerArrays(
            customer_ids=np.array(cols[0], dtype=object),
            province=np.array(cols[1], dtype=object),
            city=np.array(cols[2], dtype=object),
            age_band=np.array(cols[3], dtype=object),
            signup_date=signup,
            marketing_opt_out=np.array(cols[5], dtype=bool),
        )

    def order_arrays(self, customers: CustomerArrays) -> OrderArrays:
        rows = self._conn.execute(
            "SELECT customer_key, order_time, amount, category, coupon_used FROM orders "
            "ORDER BY customer_key, order_time"
        ).fetchall()
        if not rows:
            empty_i = np.zeros(0, dtype=np.int64)
            return OrderArrays(empty_i, empty_i.copy(), np.zeros(0), np.zeros(0, dtype=object),
                               np.zeros(0, dtype=bool))
        cid, otime, amount, category, coupon = zip(*rows, strict=True)
        index = np.searchsorted(customers.customer_ids, np.array(cid, dtype=object))
        return OrderArrays(
            customer_index=index.astype(np.int64),
            order_time=np.array(otime, dtype=np.int64),
            amount=np.array(amount, dtype=np.float64),
            category=np.array(category, dtype=object),
            coupon_used=np.array(coupon, dtype=bool),
        )

    def iter_rows(self, table: str) -> Iterable[tuple[object, ...]]:
        key_column, columns = STORED_TABLES[table]
        return self._conn.execute(
            f"SELECT {', '.join(columns)} FROM {table} ORDER BY {key_column}"
        )

    def execute(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        """A read query on the store (for modules that aggregate locally)."""
        return self._conn.execute(sql, params)
