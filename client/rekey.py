"""Re-keying a silo after its key domain rotated its pseudonymisation key.

Rotation makes the old key version unusable (retired). A silo re-keys by
recomputing every pseudonym under the new key from the raw identifiers it
sealed at ingestion, and moving each customer's orders and sealed identity to
the new customer key, all in one transaction: afterwards the silo's links to
the other lines of the domain hold again (they re-key to the same version), and
nothing under the old version remains. A silo that kept no raw identifiers
cannot be re-keyed; it must re-ingest its source data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedprofile.privacy.pseudonyms import pseudonymize_values
from fedprofile.privacy.silo_keys import SiloKeys

from .store import SiloStore, StoreError


@dataclass(frozen=True)
class RekeyReport:
    silo_dir: Path
    from_version: int
    to_version: int
    customers: int
    interactions: int = 0  # interaction rows moved to the customers' new keys


def rekey(silo_dir: Path, keys: SiloKeys) -> RekeyReport:
    """Move the silo at ``silo_dir`` to the key version in ``keys`` (the active one)."""
    with SiloStore.open(silo_dir) as store:
        meta = store.meta()
        old = int(meta["key_version"])
        if meta.get("key_domain") != keys.domain:
            raise StoreError(f"{store.path}: belongs to key domain {meta.get('key_domain')!r}, "
                             f"not {keys.domain!r}")
        if old == keys.version:
            return RekeyReport(Path(silo_dir), old, old, 0)
        if meta.get("raw_ids") != "sealed" or not keys.keeps_raw_ids:
            raise StoreError(f"{store.path}: keeps no raw identifiers, so its pseudonyms "
                             "cannot be recomputed; re-ingest the silo's source files into a "
                             "new silo instead")
        rows = store.execute("SELECT customer_key, sealed FROM identities "
                             "ORDER BY customer_key").fetchall()
        raw = [keys.open_identity(key, blob) for key, blob in rows]
        pn = keys.pseudonymizer
        accounts, _ = pseudonymize_values([r["customer_id"] for r in raw], "account", pn)
        phones, _ = pseudonymize_values([r["phone"] for r in raw], "phone", pn)
        emails, _ = pseudonymize_values([r["email"] for r in raw], "email", pn)
        with store.transaction() as conn:
            conn.execute("PRAGMA defer_foreign_keys=ON")
            conn.execute("CREATE TEMP TABLE rekey_map (old TEXT PRIMARY KEY, new TEXT, "
                         "phone TEXT, email TEXT, sealed BLOB)")
            conn.executemany(
                "INSERT INTO rekey_map VALUES (?, ?, ?, ?, ?)",
                [(old_key, new, phone, email, keys.seal_identity(new, r))
                 for (old_key, _), new, phone, email, r
                 in zip(rows, accounts, phones, emails, raw, strict=True)],
            )
            conn.execute("UPDATE orders SET customer_key = (SELECT new FROM rekey_map "
                         "WHERE old = orders.customer_key)")
            moved = conn.execute("UPDATE interactions SET customer_key = m.new "
                                 "FROM rekey_map AS m "
                                 "WHERE m.old = interactions.customer_key").rowcount
            conn.execute("UPDATE customers SET customer_key = m.new, phone_pn = m.phone, "
                         "email_pn = m.email, key_version = ? FROM rekey_map AS m "
                         "WHERE m.old = customers.customer_key", (keys.version,))
            conn.execute("UPDATE identities SET customer_key = m.new, sealed = m.sealed "
                         "FROM rekey_map AS m WHERE m.old = identities.customer_key")
            conn.execute("DROP TABLE rekey_map")
            store.set_meta(conn, "key_version", str(keys.version))
        return RekeyReport(Path(silo_dir), old, keys.version, len(rows), moved)
