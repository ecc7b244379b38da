"""The privacy-budget ledger: chain and signatures, tamper detection, caps and reservations."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import multiprocessing
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fedprofile.privacy.keys import generate_key_file
from fedprofile.privacy.ledger import (
    GENESIS_HASH,
    PURPOSES,
    BudgetExceeded,
    Ledger,
    LedgerError,
    LedgerHead,
    LedgerInputError,
    LedgerTamperError,
    NoCapError,
    OverspendError,
    Reservation,
    WrongLedgerKeyError,
    check_delta,
    ledger_key_from_file,
)
from fedprofile.privacy.sealed import TamperError

PROP = "propensity-training"
XSELL = "cross-sell-datapack"
TRIGGERS = [f"{t}_append_only_{op}" for t in ("entries", "caps", "meta") for op in ("update", "delete")]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "budget.ledger"


def _reserve(ledger: Ledger, run_id: str, silo: str, purpose: str, epsilon: float,
             delta: float = 1e-6, **kw) -> Reservation:
    params = kw.pop("params", {"noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 500,
                               "clip_norm": 1.0})
    return ledger.reserve(run_id, silo, purpose, epsilon, delta, kw.pop("mechanism", "dp-sgd"),
                          params, kw.pop("privacy_unit", "customer"), kw.pop("model_id", "m-1"),
                          kw.pop("operator", "alice"), **kw)


def _populate(ledger: Ledger) -> None:
    """3 cap changes, 7 entries: settled, settled lower, released, and one outstanding."""
    ledger.set_cap("flights", PROP, 5.0, 1e-5, operator="dpo")
    ledger.set_cap("datapacks", PROP, 5.0, 1e-5, operator="dpo")
    ledger.set_cap("flights", XSELL, 2.0, 1e-5, operator="dpo")
    r1 = _reserve(ledger, "run-a", "flights", PROP, 1.0)                     # 1
    r2 = _reserve(ledger, "run-a", "datapacks", PROP, 1.0)                   # 2
    ledger.settle(r1, {"rdp": 0.9, "prv": 0.85})                             # 3
    ledger.settle(r2, {"rdp": 0.4}, params={"steps": 200})                   # 4: dropped out early
    r5 = _reserve(ledger, "run-b", "flights", XSELL, 1.5)                    # 5
    ledger.release(r5, "failed before training started")                     # 6
    _reserve(ledger, "run-c", "flights", PROP, 2.0)                          # 7: outstanding


@pytest.fixture
def populated(path: Path, key: bytes) -> Path:
    with Ledger.create(path, key) as ledger:
        _populate(ledger)
    return path


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, append-only triggers dropped: what an attacker would use."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for trigger in TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    try:
        yield conn
    finally:
        conn.close()


def _rows(conn: sqlite3.Connection, table: str = "entries") -> list[dict]:
    return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY seq")]


def _ledger_id(conn: sqlite3.Connection) -> str:
    return conn.execute("SELECT value FROM meta WHERE key='ledger_id'").fetchone()[0]


def _entry_hash(ledger_id: str, row: dict) -> str:
    """The documented hash, computed independently of the module."""
    payload = {k: v for k, v in row.items() if k not in ("hash", "signature")}
    for name in ("params", "epsilon_by_accountant"):
        payload[name] = json.loads(payload[name])
    payload.update(record="entry", ledger=ledger_id)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _rewrite_entries(conn: sqlite3.Connection, rows: list[dict]) -> None:
    conn.execute("DELETE FROM entries")
    for row in rows:
        cols = list(row)
        conn.execute(f"INSERT INTO entries ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                     [row[c] for c in cols])


def _codes(report) -> set[tuple[str, int | None, str]]:
    return {(p.where, p.seq, p.code) for p in report.problems}


def _tampered(path: Path, key: bytes) -> set[tuple[str, int | None, str]]:
    """Problems found by verify() on an open ledger; also checks that open() refuses."""
    with pytest.raises(LedgerTamperError) as info:
        Ledger.open(path, key)
    assert str(path) in str(info.value)
    assert isinstance(info.value, TamperError)
    report = info.value.report
    assert report is not None and not report.ok
    return _codes(report)


# --------------------------------------------------------------------------- chain


def test_fresh_ledger_chain_and_signatures(populated: Path, key: bytes) -> None:
    with Ledger.open(populated, key) as ledger:
        report = ledger.verify()
        assert report.ok and report.problems == ()
        assert (report.entries, report.caps) == (7, 3)
        assert report.head.seq == 7 and report.head.cap_seq == 3
        entries = list(ledger.entries())
        assert report.head.hash == entries[-1].hash == ledger.head.hash
        assert "OK" in str(report)
    with raw(populated) as conn:
        rows, ledger_id = _rows(conn), _ledger_id(conn)
    assert [r["seq"] for r in rows] == list(range(1, 8))
    prev = GENESIS_HASH
    assert prev == "0" * 64
    for row in rows:
        assert row["prev_hash"] == prev
        assert row["hash"] == _entry_hash(ledger_id, row)
        assert row["signature"] == hmac.new(key, row["hash"].encode(), hashlib.sha256).hexdigest()
        prev = row["hash"]
    assert [r["status"] for r in rows] == ["reserved", "reserved", "spent", "spent", "reserved",
                                           "released", "reserved"]
    assert json.loads(rows[2]["epsilon_by_accountant"]) == {"prv": 0.85, "rdp": 0.9}
    assert rows[2]["epsilon"] == 0.9 and rows[2]["reservation_seq"] == 1
    assert json.loads(rows[0]["params"])["noise_multiplier"] == 1.1


def test_raw_writes_blocked_by_triggers(populated: Path) -> None:
    conn = sqlite3.connect(populated, isolation_level=None)
    try:
        for sql in ("UPDATE entries SET epsilon = 0.01", "DELETE FROM entries WHERE seq = 7",
                    "UPDATE caps SET epsilon = 99", "DELETE FROM meta"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)
    finally:
        conn.close()


@pytest.mark.parametrize("column, value", [
    ("epsilon", 0.01), ("silo", "hotels"), ("status", "released"), ("params", '{"steps":1}'),
    ("operator", "mallory"), ("at", "2020-01-01T00:00:00+00:00"), ("delta", 1e-9),
])
def test_edited_field_detected(populated: Path, key: bytes, column: str, value: object) -> None:
    ledger = Ledger.open(populated, key)  # stays open while the file is edited behind it
    with raw(populated) as conn:
        conn.execute(f"UPDATE entries SET {column} = ? WHERE seq = 3", (value,))
    report = ledger.verify()
    assert _codes(report) == {("entries", 3, "edited")}
    assert "entries 3:" in str(report) and "field was changed" in str(report)
    with pytest.raises(LedgerTamperError):  # every query re-verifies a changed file
        ledger.spent("flights", PROP)
    with pytest.raises(LedgerTamperError):
        _reserve(ledger, "run-x", "flights", PROP, 0.1)
    ledger.close()
    assert _tampered(populated, key) == {("entries", 3, "edited")}


def test_deleted_middle_entry_detected(populated: Path, key: bytes) -> None:
    with raw(populated) as conn:
        conn.execute("DELETE FROM entries WHERE seq = 4")
    problems = _tampered(populated, key)
    assert ("entries", 4, "missing") in problems
    assert ("entries", 5, "chain-broken") in problems
    assert all(seq is not None and seq >= 4 for _w, seq, _c in problems)


def test_forged_entry_with_correct_hash_but_no_key(populated: Path, key: bytes) -> None:
    with raw(populated) as conn:
        rows, ledger_id = _rows(conn), _ledger_id(conn)
        forged = {**rows[-1], "seq": 8, "run_id": "run-z", "epsilon": 0.1, "prev_hash": rows[-1]["hash"]}
        forged["hash"] = _entry_hash(ledger_id, forged)
        forged["signature"] = hmac.new(os.urandom(32), forged["hash"].encode(),
                                       hashlib.sha256).hexdigest()
        _rewrite_entries(conn, [*rows, forged])
    assert _tampered(populated, key) == {("entries", 8, "bad-signature")}


def test_inserted_entry_with_recomputed_chain(populated: Path, key: bytes) -> None:
    with raw(populated) as conn:
        rows, ledger_id = _rows(conn), _ledger_id(conn)
        forged = {**rows[2], "run_id": "run-forged", "epsilon": 0.5}
        rows.insert(3, forged)  # becomes entry 4; 4..7 move to 5..8
        for i in range(3, len(rows)):
            rows[i] = {**rows[i], "seq": i + 1, "prev_hash": rows[i - 1]["hash"]}
            rows[i]["hash"] = _entry_hash(ledger_id, rows[i])  # signatures cannot be redone
        _rewrite_entries(conn, rows)
    problems = _tampered(populated, key)
    assert {("entries", s, "bad-signature") for s in range(4, 9)} <= problems
    assert not {p for p in problems if p[2] in ("edited", "chain-broken")}
    assert all(seq >= 4 for _w, seq, _c in problems)


def test_swapped_entries_detected(populated: Path, key: bytes) -> None:
    with raw(populated) as conn:
        conn.execute("UPDATE entries SET seq = -2 WHERE seq = 2")
        conn.execute("UPDATE entries SET seq = 2 WHERE seq = 4")
        conn.execute("UPDATE entries SET seq = 4 WHERE seq = -2")
    problems = _tampered(populated, key)
    assert {("entries", 2, "edited"), ("entries", 4, "edited"),
            ("entries", 3, "chain-broken")} <= problems


def test_wrong_signature_detected(populated: Path, key: bytes) -> None:
    with raw(populated) as conn:
        conn.execute("UPDATE entries SET signature = ? WHERE seq = 5", ("ab" * 32,))
    assert _tampered(populated, key) == {("entries", 5, "bad-signature")}


def test_edited_cap_detected(populated: Path, key: bytes) -> None:
    ledger = Ledger.open(populated, key)
    with raw(populated) as conn:
        conn.execute("UPDATE caps SET epsilon = 1000 WHERE seq = 1")
    assert _codes(ledger.verify()) == {("caps", 1, "edited")}
    with pytest.raises(LedgerTamperError, match="caps 1"):
        _reserve(ledger, "run-x", "flights", PROP, 100.0)
    ledger.close()
    assert _tampered(populated, key) == {("caps", 1, "edited")}


def test_deleted_cap_change_detected(populated: Path, key: bytes) -> None:
    with raw(populated) as conn:
        conn.execute("DELETE FROM caps WHERE seq = 2")
    problems = _tampered(populated, key)
    assert {("caps", 2, "missing"), ("caps", 3, "chain-broken")} <= problems


def test_edited_meta_and_added_trigger_detected(path: Path, key: bytes) -> None:
    Ledger.create(path, key).close()
    with raw(path) as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")  # harmless extra row
    Ledger.open(path, key).close()
    with raw(path) as conn:
        conn.execute("UPDATE meta SET value = 'feedface' WHERE key = 'ledger_id'")
    with pytest.raises(LedgerTamperError, match="meta table was modified"):
        Ledger.open(path, key)
    path2 = path.with_name("other.ledger")
    Ledger.create(path2, key).close()
    with raw(path2) as conn:
        conn.execute("CREATE TRIGGER sneaky AFTER INSERT ON entries BEGIN "
                     "DELETE FROM entries WHERE seq = NEW.seq; END")
    assert _tampered(path2, key) == {("schema", None, "unexpected-schema")}


def test_tail_truncation_needs_noted_head(populated: Path, key: bytes, tmp_path: Path) -> None:
    copy = tmp_path / "copy.ledger"
    copy.write_bytes(populated.read_bytes())
    with Ledger.open(populated, key) as ledger:
        head = ledger.verify().head
        assert ledger.verify(expected_head=head).ok
        assert ledger.verify(expected_head=head.to_dict()).ok
        assert ledger.verify(expected_head=LedgerHead(head.seq, head.hash)).ok  # caps unchecked
        assert ledger.verify(expected_head={"seq": 3, "hash": next(
            e.hash for e in ledger.entries() if e.seq == 3)}).ok  # an older head still matches
    with raw(populated) as conn:
        conn.execute("DELETE FROM entries WHERE seq >= 5")
        conn.execute("DELETE FROM caps WHERE seq = 3")
    with Ledger.open(populated, key) as ledger:  # a valid prefix: undetectable alone ...
        assert ledger.verify().ok
        report = ledger.verify(expected_head=head)  # ... but not against the noted head
        assert not report.ok
        assert _codes(report) == {("head", 7, "truncated"), ("head", 3, "truncated")}
        assert "entries 5-7 were removed" in str(report)
        bad = ledger.verify(expected_head={"seq": 4, "hash": "0" * 64})
        assert _codes(bad) == {("head", 4, "head-mismatch")}
        with pytest.raises(LedgerInputError):
            ledger.verify(expected_head={"seq": "5"})
    # A removed last cap change that a reservation was checked against shows even without a head.
    with raw(copy) as conn:
        conn.execute("DELETE FROM caps WHERE seq = 3")
    assert _tampered(copy, key) == {("entries", 5, "inconsistent")}


# --------------------------------------------------------------------------- files


def test_create_refuses_to_overwrite(path: Path, key: bytes) -> None:
    Ledger.create(path, key).close()
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="already exists"):
        Ledger.create(path, key)
    other = path.with_name("notes.txt")
    other.write_text("keep me")
    with pytest.raises(LedgerError, match="already exists"):
        Ledger.create(other, key)
    assert path.read_bytes() == before and other.read_text() == "keep me"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_bad_files_refused_with_their_name(populated: Path, key: bytes, tmp_path: Path) -> None:
    data = populated.read_bytes()
    cases = {}
    for name, content in {"half": data[: len(data) // 2], "header": data[:50], "empty": b"",
                          "text": b"just some text\n" * 100}.items():
        p = tmp_path / f"{name}.ledger"
        p.write_bytes(content)
        cases[name] = p
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    cases["foreign"] = foreign
    cases["missing"] = tmp_path / "nope.ledger"
    cases["directory"] = tmp_path
    expected = {"half": "damaged", "header": "truncated", "empty": "empty",
                "text": "not an SQLite database", "foreign": "not a fedprofile ledger",
                "missing": "does not exist", "directory": "not a regular file"}
    for name, p in cases.items():
        with pytest.raises(LedgerError) as info:
            Ledger.open(p, key)
        assert str(p) in str(info.value), name
        assert expected[name] in str(info.value), (name, str(info.value))
    assert not (tmp_path / "nope.ledger").exists()  # opening never creates


def test_missing_table_and_format_refused(populated: Path, key: bytes, tmp_path: Path) -> None:
    copy = tmp_path / "copy.ledger"
    copy.write_bytes(populated.read_bytes())
    with raw(populated) as conn:
        conn.execute("DROP TABLE caps")
    with pytest.raises(LedgerError, match="caps are missing") as info:
        Ledger.open(populated, key)
    assert str(populated) in str(info.value)
    with raw(copy) as conn:
        conn.execute("UPDATE meta SET value = 'fedprofile-ledger/9' WHERE key = 'format'")
    with pytest.raises(LedgerError, match="has format 'fedprofile-ledger/9'"):
        Ledger.open(copy, key)


def test_wrong_key_refused(populated: Path, key: bytes) -> None:
    with pytest.raises(WrongLedgerKeyError, match="wrong ledger key") as info:
        Ledger.open(populated, os.urandom(32))
    assert str(populated) in str(info.value)
    for bad in (b"short", "a" * 32, None):
        with pytest.raises(LedgerInputError, match="32 bytes"):
            Ledger.open(populated, bad)  # type: ignore[arg-type]


def test_ledger_key_from_file(tmp_path: Path) -> None:
    key_file = generate_key_file(tmp_path / "ledger.key")
    key = ledger_key_from_file(key_file)
    material = bytes.fromhex(key_file.read_text().strip())
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    assert key == HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=b"fedprofile ledger").derive(material)
    assert key != material and len(key) == 32
    with Ledger.create(tmp_path / "l.ledger", key):
        pass
    Ledger.open(tmp_path / "l.ledger", ledger_key_from_file(key_file)).close()
    key_file.chmod(0o644)
    with pytest.raises(LedgerError, match="chmod 600"):
        ledger_key_from_file(key_file)
    with pytest.raises(LedgerError, match="does not exist"):
        ledger_key_from_file(tmp_path / "missing.key")


# --------------------------------------------------------------------------- budget


def test_spent_remaining_settle_release(populated: Path, key: bytes) -> None:
    with Ledger.open(populated, key) as ledger:
        assert ledger.spent("flights", PROP) == pytest.approx(0.9 + 2.0)  # settled + outstanding
        assert ledger.remaining("flights", PROP) == pytest.approx(5.0 - 2.9)
        assert ledger.spent("datapacks", PROP) == pytest.approx(0.4)  # settled lower than 1.0
        assert ledger.spent("flights", XSELL) == 0.0  # released
        assert ledger.remaining("flights", XSELL) == pytest.approx(2.0)
        assert ledger.spent("hotels", PROP) == 0.0
        assert ledger.remaining("hotels", PROP) is None
        [outstanding] = ledger.outstanding()
        assert (outstanding.seq, outstanding.run_id, outstanding.epsilon) == (7, "run-c", 2.0)
        settled = ledger.settle(outstanding, {"rdp": 1.6, "prv": 1.5})
        assert settled.epsilon == 1.6 and settled.status == "spent" and settled.reservation_seq == 7
        assert settled.params == outstanding.params and settled.model_id == "m-1"
        assert ledger.spent("flights", PROP) == pytest.approx(0.9 + 1.6)
        assert ledger.outstanding() == []
        rows = {(r["silo"], r["purpose"]): r for r in ledger.summary()}
        assert rows[("flights", PROP)] == {
            "silo": "flights", "purpose": PROP, "cap_epsilon": 5.0, "cap_delta": 1e-5,
            "spent": pytest.approx(2.5), "reserved": 0.0, "total": pytest.approx(2.5),
            "remaining": pytest.approx(2.5), "runs": 2, "max_delta": 1e-6}
        assert rows[("flights", XSELL)]["runs"] == 0
        assert [e.seq for e in ledger.entries(silo="flights", status="spent")] == [3, 8]
        assert [e.seq for e in ledger.entries(run_id="run-b")] == [5, 6]
        assert next(ledger.entries(status="released")).note == "failed before training started"


def test_reserve_refused_over_cap_with_remaining_in_message(path: Path, key: bytes) -> None:
    with Ledger.create(path, key) as ledger:
        ledger.set_cap("flights", PROP, 3.0, 1e-5)
        ledger.settle(_reserve(ledger, "r1", "flights", PROP, 1.0), {"rdp": 1.0})
        _reserve(ledger, "r2", "flights", PROP, 1.5)
        with pytest.raises(BudgetExceeded) as info:
            _reserve(ledger, "r3", "flights", PROP, 0.8)
        message = str(info.value)
        for part in ("cap is epsilon 3", "2.5 is already spent or reserved",
                     "plans epsilon 0.8", "remaining budget: epsilon 0.5", "'flights'", PROP):
            assert part in message, message
        exc = info.value
        assert (exc.cap, exc.spent, exc.planned, exc.remaining) == (3.0, 2.5, 0.8, 0.5)
        assert isinstance(exc, LedgerError)
        assert [e.run_id for e in ledger.entries()] == ["r1", "r1", "r2"]  # nothing appended
        _reserve(ledger, "r3", "flights", PROP, 0.5)  # exactly the rest fits
        assert ledger.remaining("flights", PROP) == 0.0


def test_float_sums_fit_exact_caps(path: Path, key: bytes) -> None:
    with Ledger.create(path, key) as ledger:
        ledger.set_cap("s", PROP, 0.3, 1e-5)
        _reserve(ledger, "a", "s", PROP, 0.1)
        _reserve(ledger, "b", "s", PROP, 0.2)  # 0.1 + 0.2 > 0.3 in floats
        with pytest.raises(BudgetExceeded):
            _reserve(ledger, "c", "s", PROP, 1e-6)


def test_no_cap_refused(path: Path, key: bytes) -> None:
    with Ledger.create(path, key) as ledger:
        ledger.set_cap("flights", XSELL, 1.0, 1e-5)
        with pytest.raises(NoCapError, match=r"no privacy budget cap .*set_cap\('flights', "
                                             r"'propensity-training'"):
            _reserve(ledger, "r1", "flights", PROP, 0.1)
        assert list(ledger.entries()) == []


def test_delta_above_cap_refused(path: Path, key: bytes) -> None:
    with Ledger.create(path, key) as ledger:
        ledger.set_cap("flights", PROP, 1.0, 1e-6)
        with pytest.raises(BudgetExceeded, match="delta 1e-05 exceeds the cap's delta 1e-06"):
            _reserve(ledger, "r1", "flights", PROP, 0.1, delta=1e-5)
        with pytest.raises(LedgerInputError, match="1/N"):
            _reserve(ledger, "r1", "flights", PROP, 0.1, delta=1e-6, n_records=2_000_000)
        _reserve(ledger, "r1", "flights", PROP, 0.1, delta=1e-7, n_records=2_000_000)


def test_cap_changes_and_cap_below_spent(path: Path, key: bytes) -> None:
    with Ledger.create(path, key) as ledger:
        ledger.set_cap("flights", PROP, 2.0, 1e-5, operator="dpo", reason="initial")
        ledger.settle(_reserve(ledger, "r1", "flights", PROP, 1.0), {"rdp": 0.7})
        _reserve(ledger, "r2", "flights", PROP, 0.5)
        with pytest.raises(LedgerInputError) as info:
            ledger.set_cap("flights", PROP, 1.0, 1e-5)
        assert "1.2 is already spent or reserved" in str(info.value)
        assert "spent 0.7, reserved 0.5" in str(info.value)
        with pytest.raises(LedgerInputError, match="already used delta 1e-06"):
            ledger.set_cap("flights", PROP, 2.0, 1e-7)
        ledger.set_cap("flights", PROP, 1.2, 1e-5)  # lowered to exactly what is used
        assert ledger.remaining("flights", PROP) == pytest.approx(0.0)
        ledger.set_cap("flights", PROP, 4.0, 1e-5, reason="approved by DPO")  # raised
        assert ledger.remaining("flights", PROP) == pytest.approx(2.8)
        history = ledger.cap_history("flights", PROP)
        assert [c.epsilon for c in history] == [2.0, 1.2, 4.0]
        assert history[0].operator == "dpo" and history[-1].reason == "approved by DPO"
        assert ledger.cap("flights", PROP).epsilon == 4.0
        assert ledger.verify().ok


def test_settle_rules(path: Path, key: bytes, tmp_path: Path) -> None:
    with Ledger.create(path, key) as ledger:
        ledger.set_cap("flights", PROP, 5.0, 1e-5)
        r1 = _reserve(ledger, "r1", "flights", PROP, 1.0)
        with pytest.raises(LedgerInputError, match="already holds a reservation"):
            _reserve(ledger, "r1", "flights", PROP, 1.0)
        with pytest.raises(OverspendError, match="more than the 1 it reserved"):
            ledger.settle(r1, {"rdp": 1.5})
        assert ledger.spent("flights", PROP) == 1.0  # still reserved after the refusal
        with pytest.raises(LedgerInputError, match="below every accountant"):
            ledger.settle(r1, {"rdp": 0.9, "prv": 0.8}, epsilon=0.5)
        with pytest.raises(LedgerInputError, match="epsilon_by_accountant"):
            ledger.settle(r1, {})
        entry = ledger.settle(r1, {"rdp": 0.9, "prv": 0.8}, epsilon=0.85)  # explicit, in range
        assert entry.epsilon == 0.85
        with pytest.raises(LedgerInputError, match="already settled by entry 2"):
            ledger.settle(r1, {"rdp": 0.1})
        with pytest.raises(LedgerInputError, match="already settled"):
            ledger.release(r1, "oops")
        r3 = _reserve(ledger, "r3", "flights", PROP, 1.0)
        assert ledger.settle(r3, {"rdp": 1.0 + 1e-12}).epsilon == 1.0 + 1e-12  # tolerance
        r5 = _reserve(ledger, "r5", "flights", PROP, 1.0)
        ledger.release(r5, "silo offline")
        with pytest.raises(LedgerInputError, match="already released"):
            ledger.settle(r5, {"rdp": 0.5})
        with pytest.raises(LedgerInputError, match="reason"):
            ledger.release(_reserve(ledger, "r7", "flights", PROP, 0.1), " ")
        with pytest.raises(LedgerInputError, match="no reservation at entry 2"):
            ledger.settle(2, {"rdp": 0.1})
        with Ledger.create(tmp_path / "other.ledger", key) as other:
            other.set_cap("flights", PROP, 5.0, 1e-5)
            foreign = _reserve(other, "x", "flights", PROP, 0.1)
        with pytest.raises(LedgerInputError, match="does not belong"):
            ledger.settle(foreign, {"rdp": 0.1})
        assert ledger.verify().ok


def test_settle_from_another_ledger_object(populated: Path, key: bytes) -> None:
    with Ledger.open(populated, key) as first, Ledger.open(populated, key) as second:
        assert first.spent("flights", PROP) == pytest.approx(2.9)  # cached in `first`
        second.settle(second.reservation(7), {"rdp": 1.0})
        assert first.spent("flights", PROP) == pytest.approx(1.9)  # sees the other's write
        with pytest.raises(LedgerInputError, match="already settled"):
            first.reservation(7)


def _race_worker(path: str, key: bytes, run_id: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger.open(path, key)
    try:
        barrier.wait(timeout=60)
        try:
            _reserve(ledger, run_id, "flights", PROP, 0.6)
            results.put((run_id, "reserved", ""))
        except BudgetExceeded as exc:
            results.put((run_id, "refused", str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            results.put((run_id, "error", f"{type(exc).__name__}: {exc}"))
    finally:
        ledger.close()


def test_two_processes_cannot_overspend(path: Path, key: bytes) -> None:
    with Ledger.create(path, key) as ledger:
        ledger.set_cap("flights", PROP, 1.0, 1e-5)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(str(path), key, f"run-{i}", barrier, results))
             for i in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(o[1] for o in outcomes) == ["refused", "reserved"], outcomes
    refused = next(o for o in outcomes if o[1] == "refused")
    assert "remaining budget: epsilon 0.4" in refused[2]
    with Ledger.open(path, key) as ledger:
        assert ledger.spent("flights", PROP) == pytest.approx(0.6)
        assert len(list(ledger.entries())) == 1
        assert ledger.verify().ok


def test_worst_case_per_customer(path: Path, key: bytes) -> None:
    with Ledger.create(path, key) as ledger:
        for silo in ("flights", "datapacks", "hotels"):
            ledger.set_cap(silo, PROP, 10.0, 1e-5)
            ledger.set_cap(silo, XSELL, 10.0, 1e-5)
        ledger.settle(_reserve(ledger, "p1", "flights", PROP, 2.0), {"rdp": 1.0})
        ledger.settle(_reserve(ledger, "p1", "datapacks", PROP, 2.0), {"rdp": 0.5})  # same run
        ledger.settle(_reserve(ledger, "p2", "flights", PROP, 2.0), {"rdp": 2.0})    # second run
        _reserve(ledger, "x1", "hotels", XSELL, 1.5)                                   # outstanding
        ledger.release(_reserve(ledger, "x2", "datapacks", XSELL, 3.0), "never ran")
        assert ledger.worst_case_per_customer(PROP) == pytest.approx(1.0 + 0.5 + 2.0)
        assert ledger.worst_case_per_customer(XSELL) == pytest.approx(1.5)
        assert ledger.worst_case_per_customer() == pytest.approx(5.0)
        assert ledger.worst_case_per_customer(PROP, silos=["flights"]) == pytest.approx(3.0)
        assert ledger.worst_case_per_customer("segmentation") == 0.0
        with pytest.raises(LedgerInputError, match="unknown purpose"):
            ledger.worst_case_per_customer("advertising")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("epsilon", [0, -1.0, math.nan, math.inf, "1.0", True, None])
def test_bad_epsilon(path: Path, key: bytes, epsilon: object) -> None:
    with Ledger.create(path, key) as ledger:
        with pytest.raises(LedgerInputError, match="epsilon"):
            ledger.set_cap("flights", PROP, epsilon, 1e-5)  # type: ignore[arg-type]
        ledger.set_cap("flights", PROP, 1.0, 1e-5)
        with pytest.raises(LedgerInputError, match="epsilon"):
            _reserve(ledger, "r", "flights", PROP, epsilon)  # type: ignore[arg-type]
        r = _reserve(ledger, "r", "flights", PROP, 1.0)
        with pytest.raises(LedgerInputError, match="epsilon"):
            ledger.settle(r, {"rdp": epsilon})  # type: ignore[dict-item]
        assert [e.seq for e in ledger.entries()] == [1]


@pytest.mark.parametrize("delta", [0, 1, 1.5, -1e-5, math.nan, math.inf])
def test_bad_delta(path: Path, key: bytes, delta: float) -> None:
    with Ledger.create(path, key) as ledger:
        with pytest.raises(LedgerInputError, match="delta"):
            ledger.set_cap("flights", PROP, 1.0, delta)
        ledger.set_cap("flights", PROP, 1.0, 1e-5)
        with pytest.raises(LedgerInputError, match="delta"):
            _reserve(ledger, "r", "flights", PROP, 0.5, delta=delta)


def test_bad_names_and_purposes(path: Path, key: bytes) -> None:
    with Ledger.create(path, key) as ledger:
        with pytest.raises(LedgerInputError) as info:
            ledger.set_cap("flights", "advertising", 1.0, 1e-5)
        for known in PURPOSES:
            assert known in str(info.value)
        assert {"propensity-training", "recommendation-training", "segmentation",
                "cross-sell-datapack", "joint-model"} <= set(PURPOSES)
        for silo in ("", "   ", " flights", "fli\nghts", None, 3):
            with pytest.raises(LedgerInputError, match="silo"):
                ledger.set_cap(silo, PROP, 1.0, 1e-5)  # type: ignore[arg-type]
        ledger.set_cap("flights", PROP, 1.0, 1e-5)
        with pytest.raises(LedgerInputError, match="unknown purpose"):
            ledger.spent("flights", "marketing")
        for field_, value in (("run_id", ""), ("mechanism", ""), ("privacy_unit", " "),
                              ("operator", "")):
            args = {"run_id": "r", "mechanism": "dp-sgd", "privacy_unit": "customer",
                    "operator": "alice", field_: value}
            with pytest.raises(LedgerInputError, match=field_):
                ledger.reserve(args["run_id"], "flights", PROP, 0.1, 1e-6, args["mechanism"], {},
                               args["privacy_unit"], None, args["operator"])
        with pytest.raises(LedgerInputError, match="mechanism parameters"):
            _reserve(ledger, "r", "flights", PROP, 0.1, params={"steps": math.nan})
        with pytest.raises(LedgerInputError, match="mechanism parameters"):
            _reserve(ledger, "r", "flights", PROP, 0.1, params=[1, 2])
        with pytest.raises(ValueError):  # LedgerInputError is a ValueError too
            _reserve(ledger, "r", "", PROP, 0.1)
        assert list(ledger.entries()) == []


def test_check_delta() -> None:
    assert check_delta(1e-6, 10_000) == 1e-6
    with pytest.raises(LedgerInputError, match=r"too large for 10000 records.*1/N = 0.0001"):
        check_delta(1e-4, 10_000)
    with pytest.raises(LedgerInputError, match="much smaller than 1/N"):
        check_delta(0.05, 50)
    with pytest.raises(LedgerInputError, match="n_records"):
        check_delta(1e-6, 0)
    with pytest.raises(LedgerInputError, match="delta"):
        check_delta(0.0, 10)


def test_closed_ledger_refuses(path: Path, key: bytes) -> None:
    ledger = Ledger.create(path, key)
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.spent("flights", PROP)
    assert "closed" in repr(ledger)


# --------------------------------------------------------------------------- secrets


def test_key_never_in_messages(populated: Path, key: bytes, tmp_path: Path) -> None:
    secrets_ = {key.hex(), key.hex().upper(), repr(key)[2:-1], base64.b64encode(key).decode(),
                key.hex()[:16]}
    texts: list[str] = []

    def see(*objs: object) -> None:
        for o in objs:
            texts.extend([repr(o), str(o)])

    def expect(exc_type: type[BaseException], fn, *args, **kw) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(exc_type) as info:
            fn(*args, **kw)
        exc: BaseException | None = info.value
        while exc is not None:
            see(exc)
            exc = exc.__cause__ or exc.__context__

    with Ledger.open(populated, key) as ledger:
        see(ledger, ledger.verify(), ledger.head, ledger.summary(), list(ledger.entries()),
            ledger.cap_history(), ledger.outstanding())
        expect(BudgetExceeded, _reserve, ledger, "big", "flights", PROP, 100.0)
        expect(LedgerInputError, ledger.set_cap, "flights", PROP, 0.1, 1e-5)
        see(_reserve(ledger, "small", "flights", PROP, 0.1))
    expect(WrongLedgerKeyError, Ledger.open, populated, os.urandom(32))
    expect(LedgerInputError, Ledger.open, populated, key[:31])
    expect(LedgerError, Ledger.create, populated, key)
    with raw(populated) as conn:
        conn.execute("UPDATE entries SET epsilon = 0.01 WHERE seq = 1")
    expect(LedgerTamperError, Ledger.open, populated, key)
    key_file = generate_key_file(tmp_path / "k.key")
    file_key = ledger_key_from_file(key_file)
    secrets_ |= {key_file.read_text().strip(), file_key.hex()}
    with Ledger.create(tmp_path / "f.ledger", file_key) as ledger:
        see(ledger, ledger.verify())
    key_file.chmod(0o640)
    expect(LedgerError, ledger_key_from_file, key_file)
    assert texts
    for secret in secrets_:
        for text in texts:
            assert secret not in text, "a key leaked into a message or repr"
