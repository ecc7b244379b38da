"""What a silo puts into a private set intersection, and the audience it builds from the result.

Elements are the phone pseudonyms of the key domain: the same person has the
same phone pseudonym on every line of the domain, and nothing else about them
enters the protocol. A silo chooses *which* of its customers take part (a
selection), so the flights line can ask only about its international flyers.

The first marketing case: flight customers with international trips who are
not data-pack customers get a coupon for their destination's data pack. The
flights silo (the PSI receiver) learns which of its international flyers are
data-pack customers, and keeps the rest, minus those who opted out of
marketing (PIPL Art. 24), as a sealed audience list in its own directory.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from fedprofile.config import PSI_SELECTIONS
from fedprofile.files import atomic_write_json
from fedprofile.privacy.sealed import read_sealed_json, write_sealed_json

from .store import SiloStore

AUDIENCE_DIR = "audiences"


def psi_elements(store: SiloStore, selection: str) -> list[bytes]:
    """The distinct phone pseudonyms of the selected customers."""
    if selection == "all":
        sql = "SELECT DISTINCT phone_pn FROM customers WHERE phone_pn IS NOT NULL"
    elif selection == "international-flyers":
        sql = ("SELECT DISTINCT c.phone_pn FROM customers c JOIN orders o "
               "ON o.customer_key = c.customer_key "
               "WHERE o.category = 'flight_international' AND c.phone_pn IS NOT NULL")
    else:
        raise ValueError(f"unknown PSI selection {selection!r}; known: {', '.join(PSI_SELECTIONS)}")
    return [row[0].encode() for row in store.execute(sql)]


@dataclass(frozen=True)
class AudienceSummary:
    """Counts about an audience (no one in it is named): safe to show an operator."""

    name: str
    selected: int
    matched_elsewhere: int
    opted_out: int
    no_phone: int
    audience: int
    path: str

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def cross_sell_audience(store: SiloStore, matched: Collection[bytes]) -> list[tuple[str, str]]:
    """International flyers not matched in the other line, not opted out.

    Returns (customer key, destination of their latest international flight).
    """
    rows = store.execute(
        "SELECT c.customer_key, c.phone_pn, c.marketing_opt_out, o.destination, o.order_time "
        "FROM customers c JOIN orders o ON o.customer_key = c.customer_key "
        "WHERE o.category = 'flight_international' ORDER BY c.customer_key, o.order_time"
    ).fetchall()
    latest: dict[str, tuple[bytes | None, int, str]] = {}
    for key, phone, opt_out, destination, _ in rows:
        latest[key] = (phone.encode() if phone else None, int(opt_out), destination or "")
    return [(key, dest) for key, (phone, opt_out, dest) in sorted(latest.items())
            if phone is not None and phone not in matched and not opt_out]


def audience_counts(store: SiloStore) -> tuple[int, int]:
    """(opted-out, without usable phone) among international flyers: for the summary."""
    row = store.execute(
        "SELECT SUM(marketing_opt_out), SUM(phone_pn IS NULL) FROM customers WHERE customer_key "
        "IN (SELECT customer_key FROM orders WHERE category = 'flight_international')"
    ).fetchone()
    return int(row[0] or 0), int(row[1] or 0)


def _sealed(silo_dir: Path, name: str, suffix: str = ".sealed") -> tuple[Path, bytes]:
    """Where audience ``name``'s sealed file lies and the AAD that binds it to that name."""
    kind = "audience" if suffix == ".sealed" else "audience-scores"
    return Path(silo_dir) / AUDIENCE_DIR / f"{name}{suffix}", f"{kind}:{name}".encode()


def seal_audience(silo_dir: Path, name: str, payload: dict[str, object], key: bytes) -> Path:
    """Seal an audience's payload (personal data) under ``audiences/<name>.sealed``."""
    path, aad = _sealed(silo_dir, name)
    write_sealed_json(path, payload, key, aad=aad)
    return path


def save_audience(silo_dir: Path, name: str, session: str,
                  members: list[tuple[str, str]] | None, key: bytes | None,
                  summary: dict[str, int]) -> AudienceSummary:
    """Seal the audience list (AES-GCM) and write its counts next to it, in clear.

    ``members=None`` (cardinality mode: nobody is known by name) writes the
    counts only.
    """
    folder = Path(silo_dir) / AUDIENCE_DIR
    path, _ = _sealed(silo_dir, name)
    if members is not None:
        if key is None:
            raise ValueError("an audience list is personal data: a key is needed to seal it")
        seal_audience(silo_dir, name, {
            "name": name, "session": session,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "columns": ["customer_key", "destination"], "rows": members}, key)
    result = AudienceSummary(name=name, audience=len(members or []),
                             path=str(path) if members is not None else "", **summary)
    atomic_write_json(folder / f"{name}.summary.json", result.to_json())
    return result


def load_audience(silo_dir: Path, name: str, key: bytes) -> dict[str, object]:
    """Open a sealed audience; any tampering raises :class:`TamperError`."""
    path, aad = _sealed(silo_dir, name)
    return read_sealed_json(path, key, aad=aad)


def load_summary(silo_dir: Path, name: str) -> dict[str, object]:
    return json.loads((Path(silo_dir) / AUDIENCE_DIR / f"{name}.summary.json").read_text())


SCORES_SUFFIX = ".scores.sealed"


def save_audience_scores(silo_dir: Path, name: str, session: str, model: str,
                         scores: dict[str, float], key: bytes) -> Path:
    """Seal a model's score per member of audience ``name`` next to it (who has which score is personal data)."""
    path, aad = _sealed(silo_dir, name, SCORES_SUFFIX)
    payload = {"audience": name, "audience_session": session, "model": model,
               "scores": [[k, float(v)] for k, v in scores.items()]}
    write_sealed_json(path, payload, key, aad=aad)
    return path


def load_audience_scores(silo_dir: Path, name: str, key: bytes) -> dict[str, object] | None:
    """The sealed scores of audience ``name``; ``None`` when it was never scored."""
    path, aad = _sealed(silo_dir, name, SCORES_SUFFIX)
    if not path.is_file():
        return None
    return read_sealed_json(path, key, aad=aad)
