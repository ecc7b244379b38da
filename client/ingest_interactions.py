"""Validated, all-or-nothing ingestion of any user-item interactions file into a silo.

Customers and orders have one fixed schema (:mod:`fedprofile.client.ingest`);
interaction exports do not: every line names its columns differently
(``CustomerID``, ``member``, ``uid``...). So the file is read as it is and a
:class:`ColumnMapping` says which of its columns is the user, the item, the
timestamp and, optionally, the value, region and opt-out. Everything else
follows :mod:`fedprofile.client.ingest`: the same reader, the same value
checks, the same precise problems (file, line, field), the same pseudonyms for
users (so a user here is the same customer key as in the line's customers
file), and nothing is written unless the whole file is good.
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fedprofile.privacy.pseudonyms import pseudonymize_values
from fedprofile.privacy.silo_keys import SiloKeys

from .ingest import (IngestError, Problem, _Bad, _check_store_keys, _parse_value, _RawTable,
                     parse_number, read_table_file)
from .schema import Column, Kind
from .store import CUSTOMER_COLUMNS, STORE_FILENAME, SiloStore

MAX_LISTED_COLUMNS = 30
"""How many of a file's columns an error lists when a mapped one is missing."""


class MappingError(ValueError):
    """A column mapping that cannot be used (the message says which pair and why)."""


@dataclass(frozen=True)
class ColumnMapping:
    """Which source column of an interactions file feeds which target field.

    ``user``, ``item`` and ``timestamp`` are required; ``value`` (a number,
    e.g. the amount spent), ``region`` and ``opt_out`` (the user opted out of
    personalised marketing) are optional. Values are the file's column names.
    """

    user: str
    item: str
    timestamp: str
    value: str | None = None
    region: str | None = None
    opt_out: str | None = None

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for target, source in self.pairs():
            if not source.strip():
                raise MappingError(f"the source column for {target!r} is empty")
            if source in seen:
                # One column cannot sensibly be both, say, the user and the item:
                # it is a typo, and silently accepting it would load nonsense.
                raise MappingError(f"column {source!r} is mapped to both {seen[source]!r} "
                                   f"and {target!r}")
            seen[source] = target

    @classmethod
    def targets(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def required_targets(cls) -> tuple[str, ...]:
        return ("user", "item", "timestamp")

    def pairs(self) -> list[tuple[str, str]]:
        """``(target, source column)`` for every mapped target, in target order."""
        return [(t, getattr(self, t)) for t in self.targets() if getattr(self, t) is not None]

    @classmethod
    def parse(cls, pairs: Sequence[str]) -> ColumnMapping:
        """A mapping from ``TARGET=SOURCE`` pairs, as given on the command line.

        Every mistake is a :class:`MappingError` naming the offending pair, so
        a typo in a long command is found without guessing.
        """
        known = cls.targets()
        found: dict[str, str] = {}
        for pair in pairs:
            target, sep, source = pair.partition("=")
            target, source = target.strip(), source.strip()
            if not sep or not target:
                raise MappingError(f"--map expects TARGET=COLUMN (e.g. user=CustomerID), "
                                   f"got {pair!r:.60}")
            if target not in known:
                raise MappingError(f"unknown mapping target {target!r:.40}; the targets are "
                                   f"{', '.join(known)}")
            if target in found:
                raise MappingError(f"{target!r} is mapped twice (to {found[target]!r} and "
                                   f"{source!r})")
            if not source:
                raise MappingError(f"the source column for {target!r} is empty (write "
                                   f"{target}=COLUMN)")
            found[target] = source
        missing = [t for t in cls.required_targets() if t not in found]
        if missing:
            raise MappingError(f"no column mapped to {', '.join(missing)}: give "
                               + " ".join(f"--map {t}=COLUMN" for t in missing))
        return cls(**found)


@dataclass
class InteractionsReport:
    """What an interactions ingestion did; returned only when it committed."""

    silo_dir: Path
    source: str
    sha256: str
    rows_read: int = 0
    interactions_added: int = 0
    users_added: int = 0
    users_updated: int = 0  # already in the store, and this file changed their opt-out
    users_opted_out: int = 0  # of this file's users, after the ingestion
    ignored_columns: list[str] = field(default_factory=list)
    key_domain: str = ""
    key_version: int = 0
    raw_ids_kept: bool = False


# ---------------------------------------------------------------------------
# Validating one file
# ---------------------------------------------------------------------------
@dataclass
class _Parsed:
    """The file's valid rows as columns (raw user ids still in clear, never stored)."""

    lines: list[int] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    opt_out: dict[str, tuple[int, int]] = field(default_factory=dict)  # user -> (flag, line)
    first_ts: dict[str, int] = field(default_factory=dict)
    region_counts: dict[str, Counter[str]] = field(default_factory=dict)


def _parse_id(col: Column, value: Any) -> str:
    """User and item ids: text, or a Parquet number column (ids stored as numbers).

    pandas writes an integer id column with gaps as float64, so a whole float
    is its integer's text (``17850.0`` -> ``"17850"``, the same pseudonym as the
    CSV's ``17850``); a float NaN is an empty cell. A rejected id is never
    echoed: it may be a customer's identifier.
    """
    if isinstance(value, float):
        if math.isnan(value):
            value = None
        elif value.is_integer():
            value = str(int(value))
        else:
            raise _Bad("expected an id (text or a whole number), got a fractional number")
    elif isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif value is not None and not isinstance(value, str):
        raise _Bad(f"expected an id (text or a whole number), got {type(value).__name__}")
    return _parse_value(col, value)  # type: ignore[no-any-return]


def _parse_number(value: Any) -> float | None:
    """An optional finite number; unlike an order amount it may be negative (a refund)."""
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        return None
    return parse_number(value, allow_negative=True)


def _cached(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``parse`` remembered per distinct raw value: exports repeat ids, items and times a lot.

    Keyed by (type, value) so that ``1``, ``1.0`` and ``True`` stay distinct.
    """
    cache: dict[tuple[type, Any], tuple[bool, Any]] = {}

    def run(value: Any) -> Any:
        try:
            key = (type(value), value)
            hit = cache.get(key)
        except TypeError:  # unhashable (a Parquet list cell): parse it uncached
            return parse(value)
        if hit is None:
            try:
                hit = (True, parse(value))
            except _Bad as err:
                hit = (False, str(err))
            cache[key] = hit
        if not hit[0]:
            raise _Bad(hit[1])
        return hit[1]

    return run


def _check_header(raw: _RawTable, mapping: ColumnMapping) -> list[Problem]:
    where = 1 if raw.unit == "line" else None
    problems = []
    listed = ", ".join(raw.header[:MAX_LISTED_COLUMNS])
    if len(raw.header) > MAX_LISTED_COLUMNS:
        listed += f", ... ({len(raw.header)} columns)"
    for target, source in mapping.pairs():
        if source not in raw.header:
            problems.append(Problem(raw.path, where, source,
                                    f"missing column (mapped to {target}); the file's columns "
                                    f"are: {listed}", raw.unit))
        elif raw.header.count(source) > 1:
            problems.append(Problem(raw.path, where, source, "column appears more than once",
                                    raw.unit))
    if not problems and not raw.records:
        problems.append(Problem(raw.path, None, None, "has a header but no data rows"))
    return problems


def _validate(raw: _RawTable, mapping: ColumnMapping) -> tuple[_Parsed, list[Problem]]:
    """Check every row, collecting every problem; the valid rows come back as columns."""
    problems = _check_header(raw, mapping)
    if problems:
        return _Parsed(), problems
    parsers: dict[str, Callable[[Any], Any]] = {
        "user": _cached(lambda v: _parse_id(Column(mapping.user, Kind.TEXT), v)),
        "item": _cached(lambda v: _parse_id(Column(mapping.item, Kind.TEXT), v)),
        "timestamp": _cached(lambda v: _parse_value(Column(mapping.timestamp, Kind.DATETIME), v)),
        "value": _cached(_parse_number),
        "region": _cached(lambda v: _parse_value(Column("region", Kind.TEXT, required=False), v)
                          or ""),
        "opt_out": _cached(lambda v: _parse_value(Column("opt_out", Kind.BOOL, required=False), v)),
    }
    pairs = mapping.pairs()
    out = _Parsed()
    for line, record in raw.records:
        parsed: dict[str, Any] = {"value": None, "region": "", "opt_out": None}
        ok = True
        for target, source in pairs:
            try:
                parsed[target] = parsers[target](record[source])
            except _Bad as err:
                problems.append(Problem(raw.path, line, source, str(err), raw.unit))
                ok = False
        if not ok:
            continue
        user, flag = parsed["user"], parsed["opt_out"]
        if flag is not None:
            first = out.opt_out.setdefault(user, (flag, line))
            if first[0] != flag:
                problems.append(Problem(
                    raw.path, line, mapping.opt_out,
                    f"{'true' if flag else 'false'} conflicts with "
                    f"{'true' if first[0] else 'false'} for the same user at "
                    f"{raw.unit} {first[1]}", raw.unit))
                continue
        ts = parsed["timestamp"]
        out.lines.append(line)
        out.users.append(user)
        out.items.append(parsed["item"])
        out.ts.append(ts)
        out.values.append(parsed["value"])
        out.regions.append(parsed["region"])
        if ts < out.first_ts.get(user, ts + 1):
            out.first_ts[user] = ts
        if parsed["region"]:
            counts = out.region_counts.get(user)
            if counts is None:
                counts = out.region_counts[user] = Counter()
            counts[parsed["region"]] += 1
    return out, problems


# ---------------------------------------------------------------------------
# Checks against the store
# ---------------------------------------------------------------------------
def _store_problems(store: SiloStore, keys: SiloKeys, raw: _RawTable) -> list[Problem]:
    """Keys must match the silo's, and the same file must not be loaded twice."""
    problems = _check_store_keys(store, keys)
    for row in store.ingestions():
        if raw.sha256 in str(row["sha256"]).split(";"):
            problems.append(Problem(
                raw.path, None, None,
                f"this exact file (sha256 {raw.sha256[:12]}...) was already ingested into "
                f"{store.silo_dir} on {row['at']} as {row['source']!r}; ingesting it again "
                "would double every interaction"))
            break
    return problems


def _stored_opt_outs(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, bool]:
    """The current opt-out flag of those of ``keys`` already in ``customers``."""
    found: dict[str, bool] = {}
    for start in range(0, len(keys), 500):
        chunk = list(keys[start:start + 500])
        marks = ",".join("?" * len(chunk))
        for key, flag in conn.execute(
                f"SELECT customer_key, marketing_opt_out FROM customers "
                f"WHERE customer_key IN ({marks})", chunk):
            found[key] = bool(flag)
    return found


def _store_meta(keys: SiloKeys) -> dict[str, str]:
    return {"key_domain": keys.domain, "key_version": str(keys.version),
            "raw_ids": "sealed" if keys.keeps_raw_ids else "none"}


# ---------------------------------------------------------------------------
# Ingesting
# ---------------------------------------------------------------------------
def ingest_interactions(silo_dir: Path, path: Path, mapping: ColumnMapping, *, keys: SiloKeys,
                        silo_name: str | None = None) -> InteractionsReport:
    """Load the interactions file ``path`` into the silo at ``silo_dir``.

    Users are keyed by the account pseudonym of their id, exactly as
    customers are by :func:`fedprofile.client.ingest.ingest`, so interactions
    join the line's customers and orders. A user not yet in the store becomes
    a customer (province = their most frequent region in the file, signup =
    their first interaction); a known one keeps their row, except that an
    opt-out column in the file updates their marketing opt-out.

    All-or-nothing: every problem is collected first and raised together as
    :class:`~fedprofile.client.ingest.IngestError`, leaving the store as it
    was; the write is one transaction. A file already ingested (same sha256)
    is refused, since loading it again would double every interaction.
    """
    silo_dir = Path(silo_dir)
    raw = read_table_file(Path(path))
    parsed, problems = _validate(raw, mapping)
    if problems:
        raise IngestError(problems)

    # Pseudonymise once per distinct user, not once per row.
    distinct = list(dict.fromkeys(parsed.users))
    pseudonyms, _ = pseudonymize_values(distinct, "account", keys.pseudonymizer)
    key_of = dict(zip(distinct, pseudonyms, strict=True))
    problems = [Problem(raw.path, line, mapping.user, "not a usable account identifier",
                        raw.unit)
                for line, user in zip(parsed.lines, parsed.users, strict=True)
                if key_of[user] is None]
    if problems:
        raise IngestError(problems)

    if (silo_dir / STORE_FILENAME).is_file():
        with SiloStore.open(silo_dir) as store:
            problems = _store_problems(store, keys, raw)
        if problems:
            raise IngestError(problems)

    report = InteractionsReport(
        silo_dir=silo_dir, source=raw.path, sha256=raw.sha256, rows_read=len(raw.records),
        ignored_columns=[h for h in raw.header if h not in {s for _, s in mapping.pairs()}],
        key_domain=keys.domain, key_version=keys.version, raw_ids_kept=keys.keeps_raw_ids)
    user_keys: list[str] = [key_of[u] for u in distinct]  # type: ignore[misc]
    stored_rows = [(key_of[u], item, ts, value, region) for u, item, ts, value, region
                   in zip(parsed.users, parsed.items, parsed.ts, parsed.values, parsed.regions,
                          strict=True)]

    keys.persist()
    with SiloStore.create(silo_dir, name=silo_name, meta=_store_meta(keys)) as store:
        with store.transaction() as conn:
            # Checked again under the write lock: another ingestion may have run meanwhile.
            problems = _store_problems(store, keys, raw)
            if problems:
                raise IngestError(problems)
            stored = _stored_opt_outs(conn, user_keys)
            new_customers, identities, opt_updates = [], [], []
            opted_out = 0
            for user, key in zip(distinct, user_keys, strict=True):
                flag = parsed.opt_out.get(user, (None, 0))[0]
                if key in stored:
                    now = stored[key] if flag is None else bool(flag)
                    if flag is not None and now != stored[key]:
                        opt_updates.append((int(now), key))
                else:
                    now = bool(flag)
                    counts = parsed.region_counts.get(user)
                    province = counts.most_common(1)[0][0] if counts else ""
                    signup = dt.datetime.fromtimestamp(parsed.first_ts[user], dt.UTC).date()
                    new_customers.append((key, None, None, province, "", "", signup.isoformat(),
                                          int(now), keys.version))
                    if keys.keeps_raw_ids:
                        identities.append((key, keys.seal_identity(
                            key, {"customer_id": user, "phone": None, "email": None})))
                opted_out += now
            cols = ", ".join(CUSTOMER_COLUMNS)
            marks = ", ".join("?" * len(CUSTOMER_COLUMNS))
            conn.executemany(f"INSERT INTO customers ({cols}) VALUES ({marks})", new_customers)
            conn.executemany("INSERT INTO identities (customer_key, sealed) VALUES (?, ?)",
                             identities)
            conn.executemany("UPDATE customers SET marketing_opt_out = ? WHERE customer_key = ?",
                             opt_updates)
            conn.executemany("INSERT INTO interactions (customer_key, item, ts, value, region) "
                             "VALUES (?, ?, ?, ?, ?)", stored_rows)
            report.interactions_added = len(stored_rows)
            report.users_added = len(new_customers)
            report.users_updated = len(opt_updates)
            report.users_opted_out = opted_out
            conn.execute(
                "INSERT INTO ingestions (at, source, sha256, customers_added, "
                "customers_updated, orders_added, interactions_added) "
                "VALUES (?, ?, ?, ?, ?, 0, ?)",
                (dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 f"interactions:{Path(raw.path).name}", raw.sha256, report.users_added,
                 report.users_updated, len(stored_rows)))
    return report


__all__ = ["ColumnMapping", "InteractionsReport", "MappingError", "ingest_interactions"]
