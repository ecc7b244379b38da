"""Key rotation re-keys silos without losing links; retired versions cannot be used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedprofile.client.audiences import psi_elements
from fedprofile.client.features import load_silo_data
from fedprofile.client.ingest import IngestError, ingest
from fedprofile.client.rekey import rekey
from fedprofile.client.store import SiloStore, StoreError
from fedprofile.privacy.keys import Keyring, RetiredKeyError, Secret, generate_key_file
from fedprofile.privacy.pseudonyms import Pseudonymizer
from fedprofile.privacy.psi import private_intersection
from fedprofile.privacy.silo_keys import load_silo_keys

LINES = ("flights", "datapacks")


def _snapshot(silo: Path) -> tuple[set[bytes], np.ndarray, dict[str, str]]:
    with SiloStore.open(silo) as store:
        phones = set(psi_elements(store, "all"))
        data = load_silo_data(store, horizon_days=30, as_of="2026-01-01")
        meta = store.meta()
    rows = np.sort(data.train.x.view(np.uint32).reshape(len(data.train), -1), axis=0)
    return phones, rows, meta


def test_rotate_then_rekey_keeps_links(platform_dir: Path, tmp_path: Path) -> None:
    secret = Secret.from_key_file(generate_key_file(tmp_path / "k"))
    keyring = tmp_path / "d.keyring"
    Keyring.create(keyring, "rot", secret)
    silos = {}
    for line in LINES:
        silos[line] = tmp_path / line
        src = platform_dir / "silos" / line
        ingest(silos[line], src / "customers.csv", src / "orders.csv",
               keys=load_silo_keys(keyring, secret, silos[line]))
    before = {line: _snapshot(silos[line]) for line in LINES}
    overlap = private_intersection(before["flights"][0], before["datapacks"][0], b"c", workers=1)
    assert overlap.cardinality > 0

    ring = Keyring.open(keyring, secret)
    assert ring.rotate(secret) == 2
    with pytest.raises(RetiredKeyError):
        Pseudonymizer.from_keyring(Keyring.open(keyring, secret), version=1)

    # A silo still on version 1 refuses new data until it is re-keyed.
    src = platform_dir / "silos" / "flights"
    with pytest.raises(IngestError, match="run `fedprofile silo rekey` first"):
        ingest(silos["flights"], src / "customers.csv",
               keys=load_silo_keys(keyring, secret, silos["flights"]))

    for line in LINES:
        report = rekey(silos[line], load_silo_keys(keyring, secret, silos[line]))
        assert (report.from_version, report.to_version) == (1, 2)
    after = {line: _snapshot(silos[line]) for line in LINES}
    for line in LINES:
        phones_before, rows_before, _ = before[line]
        phones_after, rows_after, meta = after[line]
        assert meta["key_version"] == "2"
        assert not phones_before & phones_after, "old pseudonyms must all be gone"
        assert len(phones_after) == len(phones_before)
        np.testing.assert_array_equal(rows_before, rows_after)  # same customers, same history
    again = private_intersection(after["flights"][0], after["datapacks"][0], b"c", workers=1)
    assert again.cardinality == overlap.cardinality, "links across lines survive rotation"
    # Re-keying twice is a no-op, and the silo accepts new data again.
    assert rekey(silos["flights"], load_silo_keys(keyring, secret, silos["flights"])).customers == 0


def test_silo_without_raw_ids_cannot_be_rekeyed(platform_dir: Path, tmp_path: Path) -> None:
    secret = Secret.from_key_file(generate_key_file(tmp_path / "k"))
    keyring = tmp_path / "d.keyring"
    Keyring.create(keyring, "rot", secret)
    silo = tmp_path / "hotels"
    src = platform_dir / "silos" / "hotels"
    ingest(silo, src / "customers.csv", src / "orders.csv",
           keys=load_silo_keys(keyring, secret, silo, keep_raw_ids=False))
    with SiloStore.open(silo) as store:
        assert store.counts()["identities"] == 0 and store.meta()["raw_ids"] == "none"
    assert not list(silo.glob("identity-key*"))
    Keyring.open(keyring, secret).rotate(secret)
    with pytest.raises(StoreError, match="keeps no raw identifiers"):
        rekey(silo, load_silo_keys(keyring, secret, silo, keep_raw_ids=False))
