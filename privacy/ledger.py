"""The privacy-budget ledger: every differential-privacy spend, capped and tamper-evident.

Compliance must be able to see, prove and cap what every model cost in
privacy. Every DP training run writes its epsilon here, per silo and purpose;
a cap per (silo, purpose) is enforced *before* training starts, by reserving
the planned epsilon; the file is tamper-evident.

Storage: one SQLite file (WAL mode, explicit ``BEGIN IMMEDIATE`` write
transactions, so that writers in different processes serialise) with three
tables: ``entries`` (append-only spends), ``caps`` (the cap changes, kept as
history) and ``meta`` (format version, ledger id, key fingerprint). SQLite
triggers refuse UPDATE/DELETE on all three, as a guard against accidents; the
real protection is cryptographic:

* Each entry's ``hash`` is SHA-256 of the canonical JSON (sorted keys, no
  spaces, UTF-8) of all its fields except ``hash`` and ``signature`` --
  ``prev_hash`` included -- plus ``"record": "entry"`` and the ledger id, so
  an entry cannot be passed off as a cap nor moved to another ledger.
  ``prev_hash`` of entry 1 is 64 zeros. ``signature`` is HMAC-SHA256 under
  the 32-byte ledger key of the hash (its 64 hex characters).
* Cap changes form their own chain, hashed and signed the same way
  (``"record": "cap"``), so a cap can be neither raised by editing the file
  nor reverted by deleting the change that lowered it.
* ``meta`` carries an HMAC of its rows, and the key's fingerprint, so a wrong
  key is reported as such rather than as tampering.

:meth:`Ledger.verify` recomputes all of it and lists every problem (edited,
deleted, inserted or reordered entries; forged signatures; edited caps). A
chain cannot show that its *last* entries were cut off: note the report's
``head`` somewhere else and pass it back as ``verify(expected_head=...)``.
What the key holder can do is not prevented: with the key, history can be
rewritten; noted heads are what catches that too.

Budget semantics: epsilons compose by simple summation (basic composition,
an upper bound on any tighter accounting); each entry's epsilon is the
cumulative epsilon of that run for that silo, so runs add up. ``reserve``
checks the cap and appends a ``reserved`` entry in one transaction, which is
what keeps two concurrent runs from overspending; ``settle`` then appends the
actual ``spent`` entry (it may be lower) and ``release`` a ``released`` entry
for a run that never trained; either one consumes the reservation, which then
stops counting. The cap's delta bounds the delta of each run.

A :class:`Ledger` object belongs to one thread; each process opens its own.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import math
import numbers
import os
import secrets
import sqlite3
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedprofile.privacy.accounting import finite_real
from fedprofile.privacy.keys import KeyringError, Secret
from fedprofile.privacy.sealed import TamperError, _fsync_dir, _place_exclusively

__all__ = [
    "FORMAT",
    "GENESIS_HASH",
    "PURPOSES",
    "BudgetExceeded",
    "CapChange",
    "Entry",
    "Ledger",
    "LedgerError",
    "LedgerHead",
    "LedgerInputError",
    "LedgerTamperError",
    "NoCapError",
    "OverspendError",
    "Problem",
    "Reservation",
    "VerifyReport",
    "WrongLedgerKeyError",
    "check_delta",
    "ledger_key_from_file",
]

FORMAT = "fedprofile-ledger/1"
APPLICATION_ID = 0x46504C47  # "FPLG" in the SQLite header: marks the file as a ledger
KEY_LEN = 32
HKDF_INFO = b"fedprofile ledger"
FINGERPRINT_LABEL = b"fedprofile ledger key fingerprint"
GENESIS_HASH = "0" * 64
TOLERANCE = 1e-9  # relative slack for float sums: 0.1 + 0.2 fits a cap of 0.3
DEFAULT_TIMEOUT_S = 30.0
_MAX_NAME_LEN = 200
_SQLITE_MAGIC = b"SQLite format 3\x00"

RESERVED, SPENT, RELEASED = "reserved", "spent", "released"
STATUSES = (RESERVED, SPENT, RELEASED)

#: Known purposes of processing (GDPR art. 5(1)(b) purpose limitation): name -> description.
#: A spend is always charged to one of these; add new ones here, deliberately.
PURPOSES: dict[str, str] = {
    "propensity-training": "training propensity (likelihood-to-buy) models per business line",
    "recommendation-training": "training cross-line product recommendation models",
    "segmentation": "customer segmentation / clustering for marketing",
    "cross-sell-datapack": "cross-sell audiences for data packs (marketing case 1)",
    "joint-model": "one joint model trained across all silos of a key domain",
}

_ENTRY_COLUMNS = ("seq", "run_id", "silo", "purpose", "privacy_unit", "mechanism", "params",
                  "delta", "epsilon_by_accountant", "epsilon", "at", "model_id", "operator",
                  "status", "reservation_seq", "cap_seq", "note", "prev_hash", "hash", "signature")
_CAP_COLUMNS = ("seq", "silo", "purpose", "epsilon", "delta", "at", "operator", "reason",
                "prev_hash", "hash", "signature")
_JSON_COLUMNS = ("params", "epsilon_by_accountant")

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE entries (
        seq INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        silo TEXT NOT NULL,
        purpose TEXT NOT NULL,
        privacy_unit TEXT NOT NULL,
        mechanism TEXT NOT NULL,
        params TEXT NOT NULL,
        delta REAL NOT NULL,
        epsilon_by_accountant TEXT NOT NULL,
        epsilon REAL NOT NULL,
        at TEXT NOT NULL,
        model_id TEXT,
        operator TEXT NOT NULL,
        status TEXT NOT NULL,
        reservation_seq INTEGER,
        cap_seq INTEGER,
        note TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        signature TEXT NOT NULL)""",
    """CREATE TABLE caps (
        seq INTEGER PRIMARY KEY,
        silo TEXT NOT NULL,
        purpose TEXT NOT NULL,
        epsilon REAL NOT NULL,
        delta REAL NOT NULL,
        at TEXT NOT NULL,
        operator TEXT NOT NULL,
        reason TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        signature TEXT NOT NULL)""",
    *(f"CREATE TRIGGER {table}_append_only_{op.lower()} BEFORE {op} ON {table} "
      f"BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only: {table} rows cannot "
      f"be changed or deleted'); END"
      for table in ("entries", "caps", "meta") for op in ("UPDATE", "DELETE")),
)
_OUR_TRIGGERS = {f"{t}_append_only_{op}" for t in ("entries", "caps", "meta")
                 for op in ("update", "delete")}


# --------------------------------------------------------------------------- errors


class LedgerError(RuntimeError):
    """The ledger refuses: bad input, a budget rule, or a file it cannot trust."""


class LedgerInputError(LedgerError, ValueError):
    """An argument is invalid (bad epsilon/delta, unknown purpose, empty name, ...)."""


class WrongLedgerKeyError(LedgerError):
    """The key given is not the key this ledger was created with."""


class NoCapError(LedgerError):
    """No cap is set for a (silo, purpose): spending on it is refused."""


class BudgetExceeded(LedgerError):
    """A reservation would take a (silo, purpose) over its cap.

    ``cap``, ``spent`` (spent + reserved), ``planned`` and ``remaining`` hold
    the numbers that the message states.
    """

    def __init__(self, message: str, *, silo: str = "", purpose: str = "",
                 cap: float = math.nan, spent: float = math.nan, planned: float = math.nan,
                 remaining: float = math.nan) -> None:
        super().__init__(message)
        self.silo, self.purpose = silo, purpose
        self.cap, self.spent, self.planned, self.remaining = cap, spent, planned, remaining


class OverspendError(LedgerError):
    """A settlement's actual epsilon (or delta) is above what was reserved."""


class LedgerTamperError(LedgerError, TamperError):
    """Verification found problems: the file was edited, truncated or forged.

    Both a :class:`LedgerError` and a :class:`~fedprofile.privacy.sealed.TamperError`;
    ``report`` is the :class:`VerifyReport` when there is one.
    """

    def __init__(self, message: str, source: str = "", report: VerifyReport | None = None) -> None:
        self.source = source
        self.report = report
        RuntimeError.__init__(self, message)  # a full message, not TamperError's template


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Entry:
    """One row of the ledger, as stored (``epsilon`` is the charged value)."""

    seq: int
    run_id: str
    silo: str
    purpose: str
    privacy_unit: str
    mechanism: str
    params: dict[str, Any]
    delta: float
    epsilon_by_accountant: dict[str, float]
    epsilon: float
    at: str
    model_id: str | None
    operator: str
    status: str  # "reserved" | "spent" | "released"
    reservation_seq: int | None  # spent/released: the reservation this consumes
    cap_seq: int | None  # reserved: the cap change in force when it was checked
    note: str | None  # released: the reason
    prev_hash: str
    hash: str
    signature: str

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _ENTRY_COLUMNS}


@dataclass(frozen=True)
class CapChange:
    """One change of a cap; the latest change of a (silo, purpose) is the cap in force."""

    seq: int
    silo: str
    purpose: str
    epsilon: float
    delta: float
    at: str
    operator: str
    reason: str | None
    prev_hash: str
    hash: str
    signature: str

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _CAP_COLUMNS}


@dataclass(frozen=True)
class Reservation:
    """Planned budget held for one run on one silo until it is settled or released."""

    seq: int
    run_id: str
    silo: str
    purpose: str
    epsilon: float
    delta: float
    mechanism: str
    params: dict[str, Any]
    privacy_unit: str
    model_id: str | None
    operator: str
    at: str
    hash: str

    @classmethod
    def from_entry(cls, entry: Entry) -> Reservation:
        return cls(entry.seq, entry.run_id, entry.silo, entry.purpose, entry.epsilon,
                   entry.delta, entry.mechanism, dict(entry.params), entry.privacy_unit,
                   entry.model_id, entry.operator, entry.at, entry.hash)


@dataclass(frozen=True)
class LedgerHead:
    """The last entry (and last cap change) of a ledger: note it outside to detect truncation.

    ``cap_seq``/``cap_hash`` may be left None in an expected head, and are
    then not checked. An empty chain has seq 0 and hash ``GENESIS_HASH``.
    """

    seq: int
    hash: str
    cap_seq: int | None = None
    cap_hash: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "cap_seq": self.cap_seq,
                "cap_hash": self.cap_hash}

    @classmethod
    def from_value(cls, value: LedgerHead | Mapping[str, Any]) -> LedgerHead:
        if isinstance(value, LedgerHead):
            return value
        if not isinstance(value, Mapping) or "seq" not in value or "hash" not in value:
            raise LedgerInputError("an expected head is a LedgerHead or a mapping with 'seq' and "
                                   "'hash' (and optionally 'cap_seq' and 'cap_hash')")
        head = cls(value["seq"], value["hash"], value.get("cap_seq"), value.get("cap_hash"))
        for name in ("seq", "cap_seq"):
            number = getattr(head, name)
            if number is not None and (not isinstance(number, int) or isinstance(number, bool)
                                       or number < 0):
                raise LedgerInputError(f"expected head: {name} must be an integer >= 0")
        for name in ("hash", "cap_hash"):
            text = getattr(head, name)
            if text is not None and not isinstance(text, str):
                raise LedgerInputError(f"expected head: {name} must be a hex string")
        return head

    def __str__(self) -> str:
        caps = "" if self.cap_seq is None else f"; caps {self.cap_seq} {self.cap_hash}"
        return f"entries {self.seq} {self.hash}{caps}"


@dataclass(frozen=True)
class Problem:
    """One thing :meth:`Ledger.verify` found wrong.

    ``where``: ``entries``, ``caps``, ``meta``, ``schema`` or ``head``; ``seq``:
    the entry or cap change concerned (None when not one row); ``code``: one of
    ``edited`` (content does not match its hash), ``bad-signature``,
    ``chain-broken`` (prev_hash is not the previous row's hash), ``missing``
    (a gap in seq), ``duplicate``, ``malformed``, ``inconsistent`` (violates the
    ledger's rules), ``truncated`` / ``head-mismatch`` (against an expected
    head), ``meta-edited``, ``wrong-key``, ``format``, ``unexpected-schema``.
    """

    where: str
    seq: int | None
    code: str
    message: str

    def __str__(self) -> str:
        at = f"{self.where} {self.seq}" if self.seq is not None else self.where
        return f"{at}: {self.message} [{self.code}]"


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`Ledger.verify` found; ``ok`` is True when ``problems`` is empty."""

    path: str
    ledger_id: str
    ok: bool
    problems: tuple[Problem, ...]
    head: LedgerHead
    entries: int
    caps: int

    def __str__(self) -> str:
        state = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        lines = [f"ledger {self.path} (id {self.ledger_id}): {state}; {self.entries} entries, "
                 f"{self.caps} cap changes; head: {self.head}"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _sha256(obj: Any) -> str:
    return hashlib.sha256(_canonical(obj)).hexdigest()


def _mac(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _sign(key: bytes, hash_hex: str) -> str:
    return _mac(key, hash_hex.encode("utf-8", errors="surrogateescape"))


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, str) and isinstance(b, str) and hmac.compare_digest(
        a.encode("utf-8", errors="surrogateescape"), b.encode("utf-8", errors="surrogateescape"))


def _fingerprint(key: bytes) -> str:
    """A short public name for a ledger key; reveals nothing about it."""
    return _mac(key, FINGERPRINT_LABEL)[:16]


def _meta_mac(key: bytes, meta: Mapping[str, str]) -> str:
    fields = {k: meta.get(k) for k in ("format", "ledger_id", "key_fingerprint", "created")}
    return _mac(key, _canonical({"record": "meta", **fields}))


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _num(x: float) -> str:
    return f"{x:.6g}"


def _check_key(key: Any) -> bytes:
    """Refuse anything but 32 bytes, without ever echoing the value."""
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise LedgerInputError(f"a ledger key must be {KEY_LEN} bytes, got a {type(key).__name__} "
                               "(derive it with ledger_key_from_file)")
    key = bytes(key)
    if len(key) != KEY_LEN:
        raise LedgerInputError(f"a ledger key must be {KEY_LEN} bytes, got {len(key)} bytes")
    return key


def default_key_file(ledger_path: Path) -> Path:
    """Where a ledger's key file is unless told otherwise: ``ledger.key`` beside it."""
    return Path(ledger_path).with_name("ledger.key")


def ledger_key_from_file(path: Path | str) -> bytes:
    """The 32-byte ledger key derived from a fedprofile key file.

    The key file holds 64 hex characters and must be readable by its owner
    only (see :meth:`fedprofile.privacy.keys.Secret.from_key_file`); the
    ledger key is HKDF-SHA256 of it with info ``b"fedprofile ledger"``, so the
    same file can also lock a keyring without the two keys being related.
    """
    try:
        secret = Secret.from_key_file(Path(path))
    except KeyringError as exc:
        raise LedgerError(str(exc)) from None
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=None,
                info=HKDF_INFO).derive(secret.material)


def _name(value: Any, what: str, *, optional: bool = False) -> str | None:
    """A non-empty single-line name without surrounding spaces."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise LedgerInputError(f"{what} must be a string, got a {type(value).__name__}")
    if not value.strip():
        raise LedgerInputError(f"{what} is empty")
    if value != value.strip():
        raise LedgerInputError(f"{what} {value!r:.80} has leading or trailing spaces")
    if len(value) > _MAX_NAME_LEN:
        raise LedgerInputError(f"{what} is longer than {_MAX_NAME_LEN} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise LedgerInputError(f"{what} {value!r:.80} contains control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LedgerInputError(f"{what} is not valid Unicode text") from None
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LedgerInputError(f"{what} must be a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LedgerInputError(f"{what} is not valid Unicode text") from None
    return value


def _real(value: Any, what: str) -> float:
    return finite_real(what, value, LedgerInputError)


def _epsilon(value: Any, what: str = "epsilon") -> float:
    x = _real(value, what)
    if x <= 0:
        raise LedgerInputError(f"{what} must be > 0, got {_num(x)}")
    return x


def _delta(value: Any, what: str = "delta") -> float:
    x = _real(value, what)
    if not 0 < x < 1:
        raise LedgerInputError(f"{what} must be strictly between 0 and 1, got {_num(x)}")
    return x


def _purpose(value: Any) -> str:
    if not isinstance(value, str) or value not in PURPOSES:
        shown = value if isinstance(value, str) else type(value).__name__
        raise LedgerInputError(
            f"unknown purpose {shown!r:.80}; known purposes: {', '.join(sorted(PURPOSES))} "
            "(a new purpose is added to fedprofile.privacy.ledger.PURPOSES deliberately)")
    return value


def _params(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise LedgerInputError(f"mechanism parameters must be a mapping (JSON object), "
                               f"got a {type(value).__name__}")
    if not all(isinstance(k, str) for k in value):
        raise LedgerInputError("mechanism parameter names must be strings")
    try:
        return json.loads(_canonical(dict(value)))
    except (TypeError, ValueError) as exc:
        raise LedgerInputError(f"mechanism parameters must be JSON numbers, strings, lists or "
                               f"objects, and finite: {exc}") from None


def _accountants(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise LedgerInputError(f"epsilon_by_accountant must be a mapping such as "
                               f"{{'rdp': 1.2, 'prv': 1.1}}, got a {type(value).__name__}")
    out = {}
    for name, eps in value.items():
        _name(name, "an accountant name")
        out[name] = _epsilon(eps, f"epsilon of accountant {name!r:.40}")
    return out


def _operator(value: str | None) -> str:
    if value is None:
        try:
            value = getpass.getuser()
        except Exception:  # no login name in some containers
            value = "unknown"
    return _name(value, "operator")


def _fits(total: float, limit: float) -> bool:
    return total <= limit * (1 + TOLERANCE)


def check_delta(delta: float, n_records: int) -> float:
    """Return ``delta`` if it is below 1/N for a data set of ``n_records``; refuse otherwise.

    (epsilon, delta)-DP allows the mechanism to fail outright with probability
    delta; with delta >= 1/N, a mechanism that publishes one whole record of
    the N at random is "private". delta must be much smaller than 1/N.
    """
    delta = _delta(delta)
    if isinstance(n_records, bool) or not isinstance(n_records, numbers.Integral) or n_records < 1:
        raise LedgerInputError(f"n_records must be a positive integer, got {n_records!r:.40}")
    n = int(n_records)
    if delta >= 1 / n:
        suggest = 10.0 ** (math.floor(math.log10(1 / n)) - 1)
        raise LedgerInputError(
            f"delta={_num(delta)} is too large for {n} records: it must be well below "
            f"1/N = {_num(1 / n)}. (epsilon, delta)-DP may fail outright with probability "
            f"delta, so with delta >= 1/N a mechanism that publishes a whole record of one "
            f"person would still qualify; choose delta much smaller than 1/N "
            f"(e.g. {suggest:g} or less)")
    return delta


# --------------------------------------------------------------------------- verification


def _entry_payload(ledger_id: str, e: Entry) -> dict[str, Any]:
    payload = {name: getattr(e, name) for name in _ENTRY_COLUMNS if name not in ("hash", "signature")}
    return {"record": "entry", "ledger": ledger_id, **payload}


def _cap_payload(ledger_id: str, c: CapChange) -> dict[str, Any]:
    payload = {name: getattr(c, name) for name in _CAP_COLUMNS if name not in ("hash", "signature")}
    return {"record": "cap", "ledger": ledger_id, **payload}


def _entry_from_row(row: tuple) -> tuple[Entry, str | None]:
    """An Entry from a raw row; JSON columns parsed. Returns (entry, problem or None)."""
    values = dict(zip(_ENTRY_COLUMNS, row))
    problem = None
    for name in _JSON_COLUMNS:
        raw = values[name]
        try:
            parsed = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            problem = f"its {name} is not a JSON object"
            values[name] = raw
        else:
            values[name] = parsed
    return Entry(**values), problem


def _check_chain(where: str, rows: list, payload: Any, key: bytes,
                 problems: list[Problem]) -> None:
    """Seq continuity, hash, signature and prev_hash of one chain (entries or caps)."""
    expected_seq, prev_hash, prev_seq = 1, GENESIS_HASH, None
    for r in rows:
        seq = r.seq
        if not isinstance(seq, int):
            problems.append(Problem(where, None, "malformed", f"a row has a non-integer seq {seq!r:.40}"))
            continue
        if prev_seq is not None and seq == prev_seq:
            problems.append(Problem(where, seq, "duplicate", "appears more than once"))
        elif seq > expected_seq:
            gap = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}-{seq - 1}"
            problems.append(Problem(where, expected_seq, "missing",
                                    f"{where} {gap} missing (deleted): seq must be gapless"))
        try:
            actual = _sha256(payload(r))
        except (TypeError, ValueError):
            actual = None
        if actual is None:
            problems.append(Problem(where, seq, "malformed",
                                    "a field holds a value that is not valid (non-finite or not JSON)"))
        elif not _same(actual, r.hash):
            problems.append(Problem(where, seq, "edited",
                                    "its content does not match its hash: a field was changed "
                                    "after it was written"))
        elif not _same(_sign(key, r.hash), r.signature):
            problems.append(Problem(where, seq, "bad-signature",
                                    "its signature is not valid for its hash: forged or rewritten "
                                    "without the ledger key"))
        if not _same(r.prev_hash, prev_hash):
            before = "the genesis hash (64 zeros)" if prev_seq is None else f"the hash of {prev_seq}"
            problems.append(Problem(where, seq, "chain-broken",
                                    f"its prev_hash is not {before}: a row before it was deleted, "
                                    "inserted, reordered or rewritten"))
        prev_hash, prev_seq = r.hash, seq
        expected_seq = max(expected_seq, seq + 1)


def _check_rules(entries: list[Entry], caps: list[CapChange], problems: list[Problem]) -> None:
    """The ledger's own rules; only a bug or a key holder's forgery can break them."""
    cap_by_seq = {c.seq: c for c in caps}
    by_seq: dict[int, Entry] = {}
    consumed: dict[int, int] = {}

    def bad(e: Entry, message: str) -> None:
        problems.append(Problem("entries", e.seq, "inconsistent", message))

    for e in entries:
        if e.status not in STATUSES:
            bad(e, f"unknown status {e.status!r:.40}")
        elif not all(isinstance(x, float) and math.isfinite(x) for x in (e.epsilon, e.delta)):
            bad(e, "epsilon or delta is not a finite number")
        elif e.status == RESERVED:
            cap = cap_by_seq.get(e.cap_seq)
            if e.reservation_seq is not None or e.epsilon <= 0:
                bad(e, "a reservation must plan epsilon > 0 and reference no other entry")
            elif cap is None or (cap.silo, cap.purpose) != (e.silo, e.purpose):
                bad(e, f"references cap change {e.cap_seq}, which is missing or for another "
                       "silo/purpose")
        else:
            res = by_seq.get(e.reservation_seq)
            if res is None or res.status != RESERVED or (res.run_id, res.silo, res.purpose) != (
                    e.run_id, e.silo, e.purpose):
                bad(e, f"consumes entry {e.reservation_seq}, which is not an earlier reservation "
                       "of the same run, silo and purpose")
            elif e.reservation_seq in consumed:
                bad(e, f"consumes reservation {e.reservation_seq} already consumed by entry "
                       f"{consumed[e.reservation_seq]}")
            elif e.status == SPENT and not (0 < e.epsilon and _fits(e.epsilon, res.epsilon)):
                bad(e, f"spends epsilon {_num(e.epsilon)} against a reservation of "
                       f"{_num(res.epsilon)}")
            elif e.status == RELEASED and e.epsilon != 0:
                bad(e, "a release must charge epsilon 0")
            if e.reservation_seq is not None:
                consumed.setdefault(e.reservation_seq, e.seq)
        if isinstance(e.seq, int):
            by_seq[e.seq] = e


def _check_head(expected: LedgerHead, entries: list, caps: list,
                problems: list[Problem]) -> None:
    for where, rows, seq, hash_ in (("entries", entries, expected.seq, expected.hash),
                                    ("caps", caps, expected.cap_seq, expected.cap_hash)):
        if seq is None:
            continue
        last = max((r.seq for r in rows if isinstance(r.seq, int)), default=0)
        if seq == 0:
            continue
        if last < seq:
            problems.append(Problem("head", seq, "truncated",
                                    f"{where} end at {last} but the noted head is {seq}: "
                                    f"{where} {last + 1}-{seq} were removed (tail truncated)"))
            continue
        row = next((r for r in rows if r.seq == seq), None)
        if row is None:
            problems.append(Problem("head", seq, "truncated",
                                    f"the noted head ({where} {seq}) is missing"))
        elif hash_ is not None and not _same(row.hash, hash_):
            problems.append(Problem("head", seq, "head-mismatch",
                                    f"{where} {seq} has hash {str(row.hash)[:16]}..., the noted "
                                    f"head says {str(hash_)[:16]}...: history was rewritten "
                                    "or this is another ledger"))


# --------------------------------------------------------------------------- state


@dataclass
class _Totals:
    spent: list[float] = field(default_factory=list)
    reserved: list[float] = field(default_factory=list)
    runs: set[str] = field(default_factory=set)
    delta_max: float = 0.0

    @property
    def total(self) -> float:
        return math.fsum(self.spent + self.reserved)


class _State:
    """A verified snapshot of the ledger and what it implies."""

    def __init__(self, entries: list[Entry], caps: list[CapChange]) -> None:
        self.entries = entries
        self.cap_history = caps
        self.by_seq = {e.seq: e for e in entries}
        self.caps: dict[tuple[str, str], CapChange] = {}
        for c in caps:  # in seq order: the latest change wins
            self.caps[(c.silo, c.purpose)] = c
        self.consumed: dict[int, Entry] = {
            e.reservation_seq: e for e in entries
            if e.status in (SPENT, RELEASED) and e.reservation_seq is not None}
        self.totals: dict[tuple[str, str], _Totals] = {}
        for e in entries:
            t = self.totals.setdefault((e.silo, e.purpose), _Totals())
            if e.status == SPENT or (e.status == RESERVED and e.seq not in self.consumed):
                (t.spent if e.status == SPENT else t.reserved).append(e.epsilon)
                t.runs.add(e.run_id)
                t.delta_max = max(t.delta_max, e.delta)

    def total(self, silo: str, purpose: str) -> float:
        t = self.totals.get((silo, purpose))
        return t.total if t else 0.0

    def outstanding(self) -> list[Entry]:
        return [e for e in self.entries if e.status == RESERVED and e.seq not in self.consumed]


# --------------------------------------------------------------------------- the ledger


def _uri(path: Path) -> str:
    return "file:" + urllib.parse.quote(str(path.absolute())) + "?mode=rw"


class Ledger:
    """An open, verified privacy-budget ledger. Build one with :meth:`create` or :meth:`open`.

    Every query works on a freshly verified snapshot (re-verified whenever the
    file changed), and every write verifies the whole ledger inside its write
    transaction, so a cap is never checked against tampered data.
    """

    def __init__(self, path: Path, key: bytes, conn: sqlite3.Connection, ledger_id: str) -> None:
        """Internal; use :meth:`create` or :meth:`open`."""
        self._path = path
        self._key = key
        self._conn: sqlite3.Connection | None = conn
        self._ledger_id = ledger_id
        self._cache: tuple[int, _State] | None = None

    # ---- construction

    @classmethod
    def create(cls, path: Path | str, key: bytes, *, timeout: float = DEFAULT_TIMEOUT_S) -> Ledger:
        """Create a new, empty ledger file (mode 0600) locked to ``key``; never overwrites.

        The database is built under a temporary name and linked into place, so
        nobody ever sees a half-initialised ledger.
        """
        path = Path(path)
        key = _check_key(key)
        if path.exists() or path.is_symlink():
            raise LedgerError(f"ledger {path} already exists; refusing to overwrite it "
                              "(open it with Ledger.open)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.chmod(tmp, 0o600)
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute("PRAGMA user_version=1")
                for statement in _SCHEMA:
                    conn.execute(statement)
                meta = {"format": FORMAT, "ledger_id": uuid.uuid4().hex,
                        "key_fingerprint": _fingerprint(key), "created": _now()}
                meta["meta_mac"] = _meta_mac(key, meta)
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
                conn.execute("COMMIT")
            finally:
                conn.close()
            try:
                _place_exclusively(tmp, path)
            except FileExistsError:
                raise LedgerError(f"ledger {path} already exists; refusing to overwrite it") from None
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot create ledger {path}: {exc}") from None
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                leftover.unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return cls.open(path, key, timeout=timeout)

    @classmethod
    def open(cls, path: Path | str, key: bytes, *, timeout: float = DEFAULT_TIMEOUT_S) -> Ledger:
        """Open an existing ledger and verify it completely.

        Raises LedgerError (naming the file) for a missing, truncated, corrupt
        or foreign file or an unsupported format; WrongLedgerKeyError for the
        wrong key; LedgerTamperError (with ``.report``) when verification finds
        problems. Never creates, resets or repairs anything.
        """
        path = Path(path)
        key = _check_key(key)
        if not path.exists():
            raise LedgerError(f"ledger {path} does not exist (create one with Ledger.create)")
        if not path.is_file():
            raise LedgerError(f"ledger {path} is not a regular file")
        try:
            with open(path, "rb") as fh:
                header = fh.read(100)
        except OSError as exc:
            raise LedgerError(f"cannot read ledger {path}: {exc.strerror}") from None
        if not header:
            raise LedgerError(f"ledger {path} is empty (truncated, or not a fedprofile ledger)")
        if not header.startswith(_SQLITE_MAGIC):
            raise LedgerError(f"ledger {path} is not a fedprofile ledger (not an SQLite database)")
        if len(header) < 100:
            raise LedgerError(f"ledger {path} is truncated (shorter than an SQLite header)")
        try:
            conn = sqlite3.connect(_uri(path), uri=True, isolation_level=None, timeout=timeout)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc}") from None
        try:
            ledger_id = cls._check_file(path, key, conn)
            ledger = cls(path, key, conn, ledger_id)
            report = ledger.verify()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise LedgerError(f"ledger {path} is damaged or truncated ({exc}); restore it from "
                              "a backup copy") from None
        except BaseException:
            conn.close()
            raise
        if not report.ok:
            ledger.close()
            raise LedgerTamperError(f"ledger {path} failed verification; it was modified "
                                    f"outside fedprofile:\n{report}", str(path), report)
        return ledger

    @staticmethod
    def _check_file(path: Path, key: bytes, conn: sqlite3.Connection) -> str:
        """Structure, format, key and meta of a freshly opened file; returns the ledger id."""
        conn.execute("PRAGMA trusted_schema=OFF")
        check = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        if check != ["ok"]:
            raise LedgerError(f"ledger {path} is damaged ({'; '.join(map(str, check[:3]))}); "
                              "restore it from a backup copy")
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id != APPLICATION_ID:
            raise LedgerError(f"ledger {path} is not a fedprofile ledger (an SQLite database "
                              f"of another application{', or a truncated ledger' if not tables else ''})")
        missing = sorted({"meta", "entries", "caps"} - tables)
        if missing:
            raise LedgerError(f"ledger {path} is damaged: table(s) {', '.join(missing)} are "
                              "missing; restore it from a backup copy")
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError as exc:
            raise LedgerError(f"ledger {path} is damaged: its meta table is unreadable ({exc})") from None
        fmt = meta.get("format")
        if fmt is None:
            raise LedgerError(f"ledger {path} has no format version; it is damaged or not a "
                              "fedprofile ledger")
        if fmt != FORMAT:
            raise LedgerError(f"ledger {path} has format {fmt!r:.60}; this fedprofile reads "
                              f"{FORMAT!r} only")
        if not _same(meta.get("key_fingerprint"), _fingerprint(key)):
            raise WrongLedgerKeyError(f"wrong ledger key for ledger {path}: it was created with "
                                      f"the key of fingerprint {str(meta.get('key_fingerprint'))[:16]}, "
                                      f"the key given has fingerprint {_fingerprint(key)}")
        if not _same(meta.get("meta_mac"), _meta_mac(key, meta)) or not meta.get("ledger_id"):
            raise LedgerTamperError(f"ledger {path}: its meta table was modified (its "
                                    "authentication code does not match); restore it from a "
                                    "backup copy", str(path))
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.OperationalError:
            pass  # WAL is already recorded in the file; a busy writer may refuse the pragma
        return meta["ledger_id"]

    # ---- plumbing

    @property
    def path(self) -> Path:
        return self._path

    @property
    def ledger_id(self) -> str:
        return self._ledger_id

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"ledger {self._path} is closed")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._cache = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"Ledger(path={str(self._path)!r}, id={self._ledger_id!r}, {state})"

    def _read(self) -> tuple[dict[str, str], list[tuple], list[tuple], list[tuple]]:
        conn = self._db()
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            entries = conn.execute(
                f"SELECT {', '.join(_ENTRY_COLUMNS)} FROM entries ORDER BY seq").fetchall()
            caps = conn.execute(
                f"SELECT {', '.join(_CAP_COLUMNS)} FROM caps ORDER BY seq").fetchall()
            objects = conn.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')").fetchall()
        except sqlite3.OperationalError as exc:
            raise LedgerError(f"ledger {self._path} is damaged or not a fedprofile ledger: "
                              f"{exc}") from None
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"ledger {self._path} is damaged or truncated ({exc}); restore it "
                              "from a backup copy") from None
        return meta, entries, caps, sorted(objects)

    def _audit(self, expected_head: LedgerHead | None = None
               ) -> tuple[VerifyReport, list[Entry], list[CapChange]]:
        """Read everything (in the current transaction) and verify it."""
        meta, entry_rows, cap_rows, objects = self._read()
        problems: list[Problem] = []
        for kind, name in objects:
            if kind != "trigger" or name not in _OUR_TRIGGERS:
                problems.append(Problem("schema", None, "unexpected-schema",
                                        f"an unexpected {kind} {name!r:.60} was added to the file"))
        if meta.get("format") != FORMAT:
            problems.append(Problem("meta", None, "format", f"the format version was changed to "
                                                             f"{meta.get('format')!r:.60}"))
        if not _same(meta.get("key_fingerprint"), _fingerprint(self._key)):
            problems.append(Problem("meta", None, "wrong-key",
                                    "the key fingerprint no longer matches the ledger key"))
        if not _same(meta.get("meta_mac"), _meta_mac(self._key, meta)) or meta.get(
                "ledger_id") != self._ledger_id:
            problems.append(Problem("meta", None, "meta-edited",
                                    "the meta table was modified (ledger id, format, key "
                                    "fingerprint or creation time)"))
        entries = []
        for row in entry_rows:
            entry, problem = _entry_from_row(row)
            if problem:
                problems.append(Problem("entries", entry.seq, "malformed", problem))
            entries.append(entry)
        caps = [CapChange(*row) for row in cap_rows]
        _check_chain("entries", entries, lambda e: _entry_payload(self._ledger_id, e),
                     self._key, problems)
        _check_chain("caps", caps, lambda c: _cap_payload(self._ledger_id, c), self._key, problems)
        if not problems:  # the rules are checked on an intact chain: a bug or a key holder's forgery
            _check_rules(entries, caps, problems)
        if expected_head is not None:
            _check_head(expected_head, entries, caps, problems)
        head = LedgerHead(entries[-1].seq if entries else 0,
                          entries[-1].hash if entries else GENESIS_HASH,
                          caps[-1].seq if caps else 0, caps[-1].hash if caps else GENESIS_HASH)
        report = VerifyReport(str(self._path), self._ledger_id, not problems, tuple(problems),
                              head, len(entries), len(caps))
        return report, entries, caps

    def _verified(self) -> _State:
        """A verified snapshot (in the current transaction); raises LedgerTamperError."""
        report, entries, caps = self._audit()
        if not report.ok:
            raise LedgerTamperError(f"ledger {self._path} failed verification; refusing to use "
                                    f"it:\n{report}", str(self._path), report)
        return _State(entries, caps)

    def _state(self) -> _State:
        """The verified state for queries; cached until the file changes."""
        conn = self._db()
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if self._cache is not None and self._cache[0] == version:
            return self._cache[1]
        conn.execute("BEGIN")
        try:
            state = self._verified()
        finally:
            conn.execute("COMMIT")
        self._cache = (version, state)
        return state

    def _write(self, action: Any) -> Any:
        """Run ``action(state)`` in a BEGIN IMMEDIATE transaction on a verified state."""
        conn = self._db()
        self._cache = None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise LedgerError(f"ledger {self._path} is busy (another process held its write "
                              f"lock too long: {exc}); try again") from None
        try:
            result = action(self._verified())
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _append_entry(self, state: _State, **fields: Any) -> Entry:
        last = state.entries[-1] if state.entries else None
        values = {"seq": last.seq + 1 if last else 1, "at": _now(),
                  "prev_hash": last.hash if last else GENESIS_HASH,
                  "reservation_seq": None, "cap_seq": None, "note": None, **fields}
        draft = Entry(**values, hash="", signature="")
        hash_ = _sha256(_entry_payload(self._ledger_id, draft))
        entry = Entry(**values, hash=hash_, signature=_sign(self._key, hash_))
        row = {**entry.to_dict(), "params": _canonical(entry.params).decode("utf-8"),
               "epsilon_by_accountant": _canonical(entry.epsilon_by_accountant).decode("utf-8")}
        self._db().execute(
            f"INSERT INTO entries ({', '.join(_ENTRY_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_ENTRY_COLUMNS))})",
            [row[c] for c in _ENTRY_COLUMNS])
        return entry

    def _resolve(self, state: _State, reservation: Reservation | int) -> Entry:
        if isinstance(reservation, Reservation):
            seq = reservation.seq
        elif isinstance(reservation, int) and not isinstance(reservation, bool):
            seq = reservation
        else:
            raise LedgerInputError(f"expected a Reservation (or its seq), got a "
                                   f"{type(reservation).__name__}")
        entry = state.by_seq.get(seq)
        if entry is None or entry.status != RESERVED:
            raise LedgerInputError(f"ledger {self._path} has no reservation at entry {seq}")
        if isinstance(reservation, Reservation) and not _same(reservation.hash, entry.hash):
            raise LedgerInputError(f"the reservation for run {reservation.run_id!r} (entry {seq}) "
                                   f"does not belong to ledger {self._path}")
        done = state.consumed.get(seq)
        if done is not None:
            verb = "settled" if done.status == SPENT else "released"
            raise LedgerInputError(f"the reservation of run {entry.run_id!r} (entry {seq}, silo "
                                   f"{entry.silo!r}, purpose {entry.purpose!r}) was already "
                                   f"{verb} by entry {done.seq}")
        return entry

    # ---- caps

    def set_cap(self, silo: str, purpose: str, epsilon: float, delta: float, *,
                operator: str | None = None, reason: str | None = None) -> CapChange:
        """Set (raise or lower) the cap of (silo, purpose); recorded as a signed cap change.

        A cap below what is already spent + reserved for the pair, or with a
        delta below the delta of a run that counts against it, is refused.
        """
        silo = _name(silo, "silo")
        purpose = _purpose(purpose)
        epsilon = _epsilon(epsilon, "the cap's epsilon")
        delta = _delta(delta, "the cap's delta")
        operator = _operator(operator)
        reason = _name(reason, "reason", optional=True)

        def action(state: _State) -> CapChange:
            t = state.totals.get((silo, purpose), _Totals())
            used = t.total
            if not _fits(used, epsilon):
                raise LedgerInputError(
                    f"cannot set the cap of silo {silo!r}, purpose {purpose!r} to epsilon "
                    f"{_num(epsilon)}: epsilon {_num(used)} is already spent or reserved there "
                    f"(spent {_num(math.fsum(t.spent))}, reserved {_num(math.fsum(t.reserved))}); "
                    f"a cap cannot go below what was spent")
            if t.delta_max > delta:
                raise LedgerInputError(
                    f"cannot set the cap of silo {silo!r}, purpose {purpose!r} to delta "
                    f"{_num(delta)}: a run counted there already used delta {_num(t.delta_max)}")
            last = state.cap_history[-1] if state.cap_history else None
            values = {"seq": last.seq + 1 if last else 1, "silo": silo, "purpose": purpose,
                      "epsilon": epsilon, "delta": delta, "at": _now(), "operator": operator,
                      "reason": reason, "prev_hash": last.hash if last else GENESIS_HASH}
            hash_ = _sha256(_cap_payload(self._ledger_id, CapChange(**values, hash="",
                                                                    signature="")))
            cap = CapChange(**values, hash=hash_, signature=_sign(self._key, hash_))
            self._db().execute(
                f"INSERT INTO caps ({', '.join(_CAP_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_CAP_COLUMNS))})",
                [getattr(cap, c) for c in _CAP_COLUMNS])
            return cap

        return self._write(action)

    def cap(self, silo: str, purpose: str) -> CapChange | None:
        """The cap in force for (silo, purpose), or None."""
        return self._state().caps.get((_name(silo, "silo"), _purpose(purpose)))

    def cap_history(self, silo: str | None = None, purpose: str | None = None) -> list[CapChange]:
        """Every cap change, oldest first, optionally for one silo and/or purpose."""
        return [c for c in self._state().cap_history
                if (silo is None or c.silo == silo) and (purpose is None or c.purpose == purpose)]

    # ---- budget

    def spent(self, silo: str, purpose: str) -> float:
        """Epsilon charged to (silo, purpose): settled spends plus outstanding reservations."""
        return self._state().total(_name(silo, "silo"), _purpose(purpose))

    def remaining(self, silo: str, purpose: str) -> float | None:
        """Epsilon left under the cap of (silo, purpose) (never below 0), or None without a cap."""
        silo, purpose = _name(silo, "silo"), _purpose(purpose)
        state = self._state()
        cap = state.caps.get((silo, purpose))
        if cap is None:
            return None
        return max(0.0, cap.epsilon - state.total(silo, purpose))

    def reserve(self, run_id: str, silo: str, purpose: str, epsilon_planned: float,
                delta: float, mechanism: str, params: Mapping[str, Any] | None,
                privacy_unit: str, model_id: str | None, operator: str, *,
                n_records: int | None = None) -> Reservation:
        """Hold ``epsilon_planned`` of the (silo, purpose) budget for a run, before it trains.

        In one write transaction: the pair must have a cap (NoCapError), the
        run's delta must not exceed the cap's delta and spent + reserved +
        planned must fit the cap (BudgetExceeded, saying cap, spent, planned and
        remaining); then a ``reserved`` entry is appended. With ``n_records``,
        delta is also checked against 1/N (:func:`check_delta`).
        """
        run_id = _name(run_id, "run_id")
        silo = _name(silo, "silo")
        purpose = _purpose(purpose)
        planned = _epsilon(epsilon_planned, "the planned epsilon")
        delta = _delta(delta)
        if n_records is not None:
            check_delta(delta, n_records)
        mechanism = _name(mechanism, "mechanism")
        params = _params(params)
        privacy_unit = _name(privacy_unit, "privacy_unit")
        model_id = _name(model_id, "model_id", optional=True)
        operator = _name(operator, "operator")

        def action(state: _State) -> Reservation:
            cap = state.caps.get((silo, purpose))
            if cap is None:
                raise NoCapError(
                    f"no privacy budget cap is set for silo {silo!r}, purpose {purpose!r}; "
                    f"every (silo, purpose) must be capped before it can spend: set one with "
                    f"Ledger.set_cap({silo!r}, {purpose!r}, epsilon=..., delta=...)")
            if delta > cap.delta:
                raise BudgetExceeded(
                    f"run {run_id!r}: delta {_num(delta)} exceeds the cap's delta "
                    f"{_num(cap.delta)} for silo {silo!r}, purpose {purpose!r}",
                    silo=silo, purpose=purpose, cap=cap.epsilon, spent=state.total(silo, purpose),
                    planned=planned, remaining=max(0.0, cap.epsilon - state.total(silo, purpose)))
            for e in state.outstanding():
                if (e.run_id, e.silo, e.purpose) == (run_id, silo, purpose):
                    raise LedgerInputError(
                        f"run {run_id!r} already holds a reservation for silo {silo!r}, purpose "
                        f"{purpose!r} (entry {e.seq}); settle or release it first")
            t = state.totals.get((silo, purpose), _Totals())
            used = t.total
            remaining = max(0.0, cap.epsilon - used)
            if not _fits(math.fsum([used, planned]), cap.epsilon):
                raise BudgetExceeded(
                    f"privacy budget exceeded for silo {silo!r}, purpose {purpose!r}: run "
                    f"{run_id!r} plans epsilon {_num(planned)}, but the cap is epsilon "
                    f"{_num(cap.epsilon)} and {_num(used)} is already spent or reserved (spent "
                    f"{_num(math.fsum(t.spent))}, reserved {_num(math.fsum(t.reserved))}); "
                    f"remaining budget: epsilon {_num(remaining)}. Plan less (fewer rounds, "
                    "more noise) or raise the cap with set_cap",
                    silo=silo, purpose=purpose, cap=cap.epsilon, spent=used, planned=planned,
                    remaining=remaining)
            entry = self._append_entry(
                state, run_id=run_id, silo=silo, purpose=purpose, privacy_unit=privacy_unit,
                mechanism=mechanism, params=params, delta=delta, epsilon_by_accountant={},
                epsilon=planned, model_id=model_id, operator=operator, status=RESERVED,
                cap_seq=cap.seq)
            return Reservation.from_entry(entry)

        return self._write(action)

    def settle(self, reservation: Reservation | int,
               epsilon_by_accountant: Mapping[str, float] | None,
               epsilon: float | None = None, params: Mapping[str, Any] | None = None, *,
               delta: float | None = None, model_id: str | None = None,
               operator: str | None = None) -> Entry:
        """Record what a run actually spent; the reservation stops counting.

        The charged epsilon is ``epsilon`` when given (it may not be below the
        lowest accountant's value), else the max over ``epsilon_by_accountant``.
        It may be lower than reserved, never higher (beyond float tolerance):
        OverspendError, and the reservation keeps counting. ``params``,
        ``delta``, ``model_id`` and ``operator`` default to the reservation's.
        """
        accountants = _accountants(epsilon_by_accountant)
        if epsilon is None:
            if not accountants:
                raise LedgerInputError("settle needs epsilon_by_accountant (e.g. {'rdp': 1.2}) "
                                       "or an explicit epsilon")
            charged = max(accountants.values())
        else:
            charged = _epsilon(epsilon, "the spent epsilon")
            if accountants and charged < min(accountants.values()) * (1 - TOLERANCE):
                raise LedgerInputError(
                    f"the charged epsilon {_num(charged)} is below every accountant's value "
                    f"({', '.join(f'{k} {_num(v)}' for k, v in sorted(accountants.items()))})")
        new_params = None if params is None else _params(params)
        new_delta = None if delta is None else _delta(delta)
        model_id = _name(model_id, "model_id", optional=True)
        operator = _name(operator, "operator", optional=True)

        def action(state: _State) -> Entry:
            res = self._resolve(state, reservation)
            if not _fits(charged, res.epsilon):
                raise OverspendError(
                    f"run {res.run_id!r} spent epsilon {_num(charged)} on silo {res.silo!r}, "
                    f"purpose {res.purpose!r}, more than the {_num(res.epsilon)} it reserved "
                    f"(entry {res.seq}); a run must stop before exceeding its reservation")
            if new_delta is not None and new_delta > res.delta:
                raise OverspendError(
                    f"run {res.run_id!r} used delta {_num(new_delta)}, more than the "
                    f"{_num(res.delta)} it reserved (entry {res.seq})")
            return self._append_entry(
                state, run_id=res.run_id, silo=res.silo, purpose=res.purpose,
                privacy_unit=res.privacy_unit, mechanism=res.mechanism,
                params=res.params if new_params is None else new_params,
                delta=res.delta if new_delta is None else new_delta,
                epsilon_by_accountant=accountants, epsilon=charged,
                model_id=res.model_id if model_id is None else model_id,
                operator=res.operator if operator is None else operator,
                status=SPENT, reservation_seq=res.seq)

        return self._write(action)

    def release(self, reservation: Reservation | int, reason: str, *,
                operator: str | None = None) -> Entry:
        """Give back a reservation of a run that never trained; it stops counting."""
        reason = _text(reason, "the reason for the release")
        operator = _name(operator, "operator", optional=True)

        def action(state: _State) -> Entry:
            res = self._resolve(state, reservation)
            return self._append_entry(
                state, run_id=res.run_id, silo=res.silo, purpose=res.purpose,
                privacy_unit=res.privacy_unit, mechanism=res.mechanism, params=res.params,
                delta=res.delta, epsilon_by_accountant={}, epsilon=0.0, model_id=res.model_id,
                operator=res.operator if operator is None else operator, status=RELEASED,
                reservation_seq=res.seq, note=reason)

        return self._write(action)

    def reservation(self, seq: int) -> Reservation:
        """The outstanding reservation at entry ``seq`` (e.g. to settle it from another process)."""
        state = self._state()
        return Reservation.from_entry(self._resolve(state, seq))

    def outstanding(self, silo: str | None = None, purpose: str | None = None) -> list[Reservation]:
        """Reservations neither settled nor released yet (they count as spent)."""
        return [Reservation.from_entry(e) for e in self._state().outstanding()
                if (silo is None or e.silo == silo) and (purpose is None or e.purpose == purpose)]

    # ---- reports

    def worst_case_per_customer(self, purpose: str | None = None, *,
                                silos: Iterable[str] | None = None) -> float:
        """Worst-case epsilon for one customer: the sum over silos (and purposes).

        A customer can be in the training data of every silo of the key
        domain, so by basic composition their worst case is the sum of each
        silo's charged epsilon for ``purpose`` (over all purposes when None).
        ``silos`` restricts the sum, e.g. to the silos of one key domain.
        """
        if purpose is not None:
            _purpose(purpose)
        wanted = None if silos is None else {_name(s, "silo") for s in silos}
        state = self._state()
        return math.fsum(t.total for (silo, p), t in state.totals.items()
                         if (purpose is None or p == purpose) and (wanted is None or silo in wanted))

    def summary(self) -> list[dict[str, Any]]:
        """One dict per (silo, purpose) with a cap or entries, sorted.

        Keys: ``silo``, ``purpose``, ``cap_epsilon``, ``cap_delta`` (None
        without a cap), ``spent`` (settled), ``reserved`` (outstanding),
        ``total`` (spent + reserved: what :meth:`spent` returns), ``remaining``
        (None without a cap), ``runs`` (distinct runs counted), ``max_delta``.
        """
        state = self._state()
        out = []
        for pair in sorted(set(state.caps) | set(state.totals)):
            cap = state.caps.get(pair)
            t = state.totals.get(pair, _Totals())
            out.append({
                "silo": pair[0], "purpose": pair[1],
                "cap_epsilon": cap.epsilon if cap else None,
                "cap_delta": cap.delta if cap else None,
                "spent": math.fsum(t.spent), "reserved": math.fsum(t.reserved),
                "total": t.total,
                "remaining": max(0.0, cap.epsilon - t.total) if cap else None,
                "runs": len(t.runs), "max_delta": t.delta_max,
            })
        return out

    def entries(self, *, silo: str | None = None, purpose: str | None = None,
                run_id: str | None = None, status: str | None = None,
                model_id: str | None = None) -> Iterator[Entry]:
        """The entries, in seq order, matching every filter given."""
        if status is not None and status not in STATUSES:
            raise LedgerInputError(f"unknown status {status!r:.40}; use one of {', '.join(STATUSES)}")
        for e in self._state().entries:
            if ((silo is None or e.silo == silo) and (purpose is None or e.purpose == purpose)
                    and (run_id is None or e.run_id == run_id)
                    and (status is None or e.status == status)
                    and (model_id is None or e.model_id == model_id)):
                yield e

    @property
    def head(self) -> LedgerHead:
        """The current head (last entry and last cap change) of the verified ledger."""
        state = self._state()
        last, cap = (state.entries[-1] if state.entries else None,
                     state.cap_history[-1] if state.cap_history else None)
        return LedgerHead(last.seq if last else 0, last.hash if last else GENESIS_HASH,
                          cap.seq if cap else 0, cap.hash if cap else GENESIS_HASH)

    def verify(self, expected_head: LedgerHead | Mapping[str, Any] | None = None) -> VerifyReport:
        """Recompute every hash, signature and link, and list every problem found.

        With ``expected_head`` (a head noted earlier, outside the file), also
        detect entries or cap changes cut off the end, and a rewritten history.
        Raises LedgerError only when the file cannot be read at all.
        """
        head = None if expected_head is None else LedgerHead.from_value(expected_head)
        conn = self._db()
        conn.execute("BEGIN")
        try:
            report, _entries, _caps = self._audit(head)
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
        return report
