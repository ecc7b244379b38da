"""A check that nothing identifying leaves a silo: in messages and in files.

"Raw rows never leave a silo" is a claim; this makes it a test. The guard knows
the silo's own raw identifiers (account ids, phones, e-mails, unsealed from the
silo's identity table, in their raw and normalised forms) and its raw feature
rows, and inspects:

* every message a ClientApp sends (a Flower mod, :func:`leak_guard_mod`,
  switched on by the run config ``leak-guard = true``): text values of config
  and metric records, and every array, row by row;
* every file written outside the silos (:func:`scan_tree`).

A finding is reported by kind and masked value (never the value itself) and
fails loudly: the mod raises, so the ClientApp answers with an error instead of
the leaking message. Matching is exact on tokens shaped like identifiers
(e-mails, phone-like digit runs, account-like ids), so it is fast enough to run
on every message of a demo; it is a debugging and audit aid, not a proof.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .pseudonyms import InvalidIdentifier, mask_identifier, normalize_email, normalize_phone

_EMAIL = re.compile(rb"[\w.+%-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(rb"\+?\d[\d \-()]{6,}\d")
_TOKEN = re.compile(rb"[A-Za-z0-9][A-Za-z0-9_.@+-]{3,}")


class LeakError(RuntimeError):
    """Something identifying was about to leave the silo."""


@dataclass(frozen=True)
class Finding:
    where: str
    kind: str
    masked: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind} {self.masked}"


@dataclass
class Needles:
    """What must not leave a silo: identifier strings and feature rows."""

    texts: dict[bytes, str] = field(default_factory=dict)  # needle -> kind
    rows: set[bytes] = field(default_factory=set)  # float32 feature rows, as bytes
    width: int = 0

    def add_identifier(self, kind: str, raw: str | None) -> None:
        if not raw or not raw.strip():
            return
        forms = {raw.strip()}
        if kind == "phone":
            try:
                e164 = normalize_phone(raw)
                forms |= {e164, e164.lstrip("+"), e164[3:] if e164.startswith("+86") else e164}
            except InvalidIdentifier:
                pass
            forms = {re.sub(r"\D", "", f) for f in forms} | forms
        elif kind == "email":
            try:
                forms.add(normalize_email(raw))
            except InvalidIdentifier:
                pass
        for form in forms:
            if len(form) >= 5:  # shorter strings would match by chance
                self.texts[form.encode()] = kind

    def merge(self, other: Needles) -> None:
        """Add another silo's needles (to check files that several silos' runs wrote)."""
        self.texts.update(other.texts)
        self.rows |= other.rows
        self.width = other.width or self.width

    def add_rows(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim == 2 and rows.size:
            self.width = rows.shape[1]
            self.rows.update(r.tobytes() for r in rows)


def _tokens(data: bytes) -> Iterable[bytes]:
    for pattern in (_EMAIL, _TOKEN):
        yield from pattern.findall(data)
    for match in _PHONE.findall(data):
        yield match.strip()
        yield re.sub(rb"\D", b"", match)


def scan_bytes(data: bytes, needles: Needles, where: str) -> list[Finding]:
    """Identifier needles that occur in ``data`` as whole tokens."""
    found: dict[bytes, Finding] = {}
    texts = needles.texts
    for token in _tokens(data):
        for candidate in (token, token.lower()):
            kind = texts.get(candidate)
            if kind is not None and candidate not in found:
                found[candidate] = Finding(where, kind, mask_identifier(candidate.decode()))
    return list(found.values())


def scan_array(array: np.ndarray, needles: Needles, where: str) -> list[Finding]:
    """Feature rows of the silo that appear as rows of ``array``."""
    if not needles.rows or array.dtype.kind != "f" or array.size % max(needles.width, 1):
        return []
    rows = np.ascontiguousarray(array, dtype=np.float32).reshape(-1, needles.width)
    hits = sum(1 for r in rows if r.tobytes() in needles.rows)
    return [Finding(where, "feature rows", f"{hits} of {len(rows)}")] if hits else []


def scan_tree(root: Path, needles: Needles, exclude: Iterable[Path] = ()) -> list[Finding]:
    """Every file under ``root`` except those under ``exclude`` (the silos themselves)."""
    skip = [Path(p).resolve() for p in exclude]
    findings: list[Finding] = []
    for path in sorted(Path(root).rglob("*")):
        resolved = path.resolve()
        if not path.is_file() or any(resolved.is_relative_to(s) for s in skip):
            continue
        data = path.read_bytes()
        findings.extend(scan_bytes(data, needles, str(path)))
        if path.suffix == ".npy":
            findings.extend(scan_array(np.load(path, allow_pickle=False), needles, str(path)))
    return findings


def scan_message_content(content: object, needles: Needles, where: str) -> list[Finding]:
    """Every record of a Flower message's content: texts, metrics and arrays."""
    findings: list[Finding] = []
    for name, record in content.items():  # type: ignore[attr-defined]
        label = f"{where} record {name!r}"
        if hasattr(record, "to_numpy_ndarrays"):
            for key, array in record.items():
                values = array.numpy()
                findings.extend(scan_array(values, needles, f"{label}[{key}]"))
                if values.dtype == np.uint8 or values.dtype.kind in "SUO":
                    findings.extend(scan_bytes(values.tobytes(), needles, f"{label}[{key}]"))
        else:
            for key, value in record.items():
                items = value if isinstance(value, list) else [value]
                for item in items:
                    data = item if isinstance(item, bytes) else str(item).encode()
                    findings.extend(scan_bytes(data, needles, f"{label}[{key}]"))
    return findings


@functools.lru_cache(maxsize=16)
def _silo_needles(silo_dir: str, stamp: float, key_file: str, horizon_days: int,
                  as_of: str) -> Needles:
    """Needles of one silo: its unsealed raw identifiers and its feature rows."""
    del stamp
    from fedprofile.client.features import load_silo_data
    from fedprofile.client.store import SiloStore

    from .keys import Secret
    from .sealed import unseal
    from .silo_keys import IDENTITY_KEY_FILE, read_identity_key

    needles = Needles()
    with SiloStore.open(Path(silo_dir)) as store:
        if (Path(silo_dir) / IDENTITY_KEY_FILE).exists() and key_file:
            key = read_identity_key(Path(silo_dir), Secret.from_key_file(Path(key_file)))
            for customer_key, blob in store.execute("SELECT customer_key, sealed FROM identities"):
                raw = json.loads(unseal(blob, key, aad=customer_key.encode()))
                needles.add_identifier("account", raw.get("customer_id"))
                needles.add_identifier("phone", raw.get("phone"))
                needles.add_identifier("email", raw.get("email"))
        try:
            data = load_silo_data(store, horizon_days=horizon_days, as_of=as_of)
            needles.add_rows(np.concatenate([data.train.x, data.test.x]))
        except ValueError:
            pass
    return needles


def silo_needles(silo_dir: Path, key_file: str, horizon_days: int = 30, as_of: str = "") -> Needles:
    """The needles of the silo at ``silo_dir`` (cached while its store is unchanged)."""
    store = Path(silo_dir) / "store.sqlite"
    return _silo_needles(str(silo_dir), store.stat().st_mtime, key_file, horizon_days, as_of)


def leak_guard_mod(msg, context, call_next):  # type: ignore[no-untyped-def]
    """Flower ClientApp mod: inspect the reply before it leaves; raise on any leak.

    Active only when the run config says ``leak-guard = true``. Each checked
    reply is noted (type, size, findings) in ``leak-guard.log`` inside the silo.
    """
    reply = call_next(msg, context)
    if not context.run_config.get("leak-guard"):
        return reply
    from fedprofile.client.node import resolve_silo_dir

    silo_dir = resolve_silo_dir(context)
    key_file = str(context.node_config.get("key-file") or context.run_config.get("key-file") or "")
    needles = silo_needles(silo_dir, key_file, int(context.run_config.get("horizon-days", 30)),
                           str(context.run_config.get("as-of", "")))
    findings = ([] if reply.has_error() else
                scan_message_content(reply.content, needles, msg.metadata.message_type))
    with open(silo_dir / "leak-guard.log", "a", encoding="utf-8") as log:
        log.write(f"{msg.metadata.message_type}\tidentifiers={len(needles.texts)}\t"
                  f"rows={len(needles.rows)}\tfindings={len(findings)}\n")
    if findings:
        raise LeakError("leak guard stopped a reply: " + "; ".join(map(str, findings[:5])))
    return reply
