"""PSI as a Flower message exchange, end to end, checked against plain sets and ground truth."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fedprofile.client.audiences import load_audience, psi_elements
from fedprofile.client.store import SiloStore
from fedprofile.config import TrainConfig
from fedprofile.privacy.sealed import TamperError
from fedprofile.privacy.silo_keys import read_identity_key
from fedprofile.simulations.psi_run import run_psi_job

from .conftest import Domain


def _elements(silo: Path, selection: str) -> set[bytes]:
    with SiloStore.open(silo) as store:
        return set(psi_elements(store, selection))


def _cfg(silos_dir: Path, tmp_path: Path, domain: Domain, **extra: object) -> TrainConfig:
    return TrainConfig(silos_dir=str(silos_dir), workspace=str(tmp_path),
                       key_file=str(domain.secret.path), **extra)  # type: ignore[arg-type]


def test_cross_sell_audience_over_flower(silos_dir: Path, platform_dir: Path, tmp_path: Path,
                                         domain: Domain) -> None:
    result = run_psi_job(_cfg(silos_dir, tmp_path, domain), progress=lambda _m: None)
    flyers = _elements(silos_dir / "flights", "international-flyers")
    packs = _elements(silos_dir / "datapacks", "all")
    server, receiver = result["server"], result["receiver"]

    # The server saw set sizes, nothing else; the receiver learned the true overlap.
    assert (server["receiver_size"], server["sender_size"]) == (len(flyers), len(packs))
    assert receiver["selected"] == len(flyers)
    assert receiver["matched_elsewhere"] == len(flyers & packs) > 0
    run_files = b"".join(p.read_bytes() for p in Path(result["run_dir"]).rglob("*") if p.is_file())
    assert not any(e in run_files for e in flyers | packs), "a pseudonym reached the run directory"

    # The audience is sealed; opened with the silo's key it names international flyers
    # who are truly not data-pack customers (checked against the generator's ground truth).
    key = read_identity_key(silos_dir / "flights", domain.secret)
    audience = load_audience(silos_dir / "flights", "cross-sell-datapack", key)
    assert len(audience["rows"]) == receiver["audience"] > 0
    keys = domain.keys(silos_dir / "flights")
    with SiloStore.open(silos_dir / "flights") as store:
        sealed = dict(store.execute("SELECT customer_key, sealed FROM identities").fetchall())
        opted_out = {k for (k,) in store.execute(
            "SELECT customer_key FROM customers WHERE marketing_opt_out = 1")}
    with open(platform_dir / "ground_truth" / "accounts.csv", newline="") as fh:
        accounts = list(csv.DictReader(fh))
    person = {(a["line"], a["customer_id"]): a["person_id"] for a in accounts}
    pack_people = {a["person_id"] for a in accounts if a["line"] == "datapacks"}
    for customer_key, destination in audience["rows"]:
        raw = keys.open_identity(customer_key, sealed[customer_key])
        assert person[("flights", raw["customer_id"])] not in pack_people
        assert customer_key not in opted_out
        assert destination  # the coupon names the trip's destination

    # Tampering with the sealed audience is detected on read.
    path = silos_dir / "flights" / "audiences" / "cross-sell-datapack.sealed"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(TamperError):
        load_audience(silos_dir / "flights", "cross-sell-datapack", key)


def test_cardinality_mode_reveals_only_the_count(silos_dir: Path, tmp_path: Path,
                                                 domain: Domain) -> None:
    result = run_psi_job(_cfg(silos_dir, tmp_path, domain, psi_mode="cardinality",
                              psi_selection="all", psi_receiver="hotels",
                              psi_audience="hotel-overlap"), progress=lambda _m: None)
    hotels = _elements(silos_dir / "hotels", "all")
    packs = _elements(silos_dir / "datapacks", "all")
    assert result["receiver"]["matched_elsewhere"] == len(hotels & packs)
    assert result["receiver"]["audience"] == 0 and result["receiver"]["path"] == ""
    assert not (silos_dir / "hotels" / "audiences" / "hotel-overlap.sealed").exists()
