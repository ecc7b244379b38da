"""The Online Retail adapter: stated cleaning rules, regional silos without overlap."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from fedprofile.simulations.online_retail import (COLUMNS, DEFAULT_PATH, PRODUCT_CODE, RULES,
                                                  SILO_FILE_COLUMNS, CleaningReport, clean, load,
                                                  read_rows, region_of, split_by_region,
                                                  write_silo_files)

HEADER = ",".join(COLUMNS)
LINES = [
    "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850,United Kingdom",  # kept
    "536366,22633,HAND WARMER,6,2010-12-01 08:28:00,1.85,,United Kingdom",  # no customer
    "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527,United Kingdom",  # cancellation
    "A563185,B,Adjust bad debt,1,2011-08-12 14:50:00,11062.06,12346,United Kingdom",  # adjustment
    "536367,84879,BIRD ORNAMENT,-2,2010-12-01 08:34:00,1.69,13047,United Kingdom",  # qty <= 0
    "536368,22960,JAM MAKING SET,3,2010-12-01 08:34:00,0.0,13047,United Kingdom",  # price <= 0
    "536369,POST,POSTAGE,1,2010-12-01 08:35:00,18.0,12583,France",  # non-product
    "536370,22728,ALARM CLOCK,24,2010-12-01 08:45:00,3.75,12583,France",  # kept (eu)
    "536370,22728,ALARM CLOCK,24,2010-12-01 08:45:00,3.75,12583,France",  # duplicate
    "536371,21730,GLASS LANTERN,2,2010-12-02 10:00:00,4.25,12583,United Kingdom",  # kept: eu (first)
    "536372,22752,SET 7 BABUSHKA,2,2010-12-03 10:00:00,7.65,12431,Australia",  # kept: rest
]


def _write(tmp_path: Path, lines: list[str], gz: bool = True) -> Path:
    data = ("\n".join([HEADER, *lines]) + "\n").encode()
    path = tmp_path / ("retail.csv.gz" if gz else "retail.csv")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_each_cleaning_rule_by_hand(tmp_path: Path) -> None:
    report = CleaningReport()
    kept = clean(read_rows(_write(tmp_path, LINES)), report)
    assert report.rows == 11 and report.kept == 4 == len(kept)
    assert dict(report.dropped) == {"no-customer": 1, "cancellation": 2,
                                    "non-positive-quantity": 1, "non-positive-price": 1,
                                    "non-product": 1, "duplicate": 1}
    assert kept[0].value == pytest.approx(6 * 2.55) and kept[0].item == "85123A"
    assert "no-customer 1" in str(report)


def test_regions_and_first_country_wins(tmp_path: Path) -> None:
    silos = split_by_region(clean(read_rows(_write(tmp_path, LINES, gz=False))))
    assert {i.user for i in silos["uk"]} == {"17850"}
    assert {i.user for i in silos["eu"]} == {"12583"}  # bought in France first, then the UK
    assert len(silos["eu"]) == 2
    assert {i.user for i in silos["rest"]} == {"12431"}
    assert (region_of("EIRE"), region_of("Norway"), region_of("Unspecified")) == ("eu", "rest", "rest")


def test_wrong_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="other.csv: expected the columns InvoiceNo"):
        list(read_rows(path))


def test_write_silo_files(tmp_path: Path) -> None:
    files, report = write_silo_files(tmp_path / "out", _write(tmp_path, LINES))
    assert report.kept == 4 and set(files) == {"uk", "eu", "rest"}
    assert files["eu"] == tmp_path / "out" / "online_retail_eu.csv"
    assert files["eu"].read_text().splitlines() == [
        ",".join(SILO_FILE_COLUMNS),
        "12583,22728,2010-12-01T08:45:00,90.00,France",
        "12583,21730,2010-12-02T10:00:00,8.50,United Kingdom",  # the customer's first silo
    ]
    assert files["uk"].read_text().splitlines()[1] == (
        "17850,85123A,2010-12-01T08:26:00,15.30,United Kingdom")
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.suffix != ".csv"], \
        "no temporary file is left behind"


def test_write_silo_files_skips_empty_regions_and_needs_the_file(tmp_path: Path) -> None:
    files, _ = write_silo_files(tmp_path / "out", _write(tmp_path, LINES[:1]))
    assert list(files) == ["uk"]
    with pytest.raises(FileNotFoundError, match="missing.csv.gz: the UCI Online Retail file"):
        write_silo_files(tmp_path / "out2", tmp_path / "missing.csv.gz")
    assert not (tmp_path / "out2").exists()


@pytest.mark.skipif(not DEFAULT_PATH.exists(), reason="shared/data/online_retail is not beside "
                    "this checkout")
def test_the_real_file(tmp_path: Path) -> None:
    silos, report = load(DEFAULT_PATH)
    assert report.rows == 541_909  # the data set's documented row count
    assert report.kept + sum(report.dropped.values()) == report.rows
    assert set(report.dropped) <= set(RULES) and all(report.dropped[r] for r in
                                                     ("no-customer", "cancellation", "non-product"))
    users = [{i.user for i in silos[r]} for r in ("uk", "eu", "rest")]
    assert not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])
    assert sum(len(u) for u in users) > 4000
    for interactions in silos.values():
        for i in interactions[:2000]:
            assert PRODUCT_CODE.match(i.item) and i.value > 0


def test_build_retail_silos_is_all_or_nothing(tmp_path: Path, domain) -> None:  # noqa: ANN001
    """A failure in one region leaves no silo and no cleaned file (raw ids) behind."""
    from fedprofile.client.store import SiloStore
    from fedprofile.simulations.online_retail import build_retail_silos

    data = _write(tmp_path, LINES)
    silos = tmp_path / "silos"

    def keys_failing_on_eu(silo_dir: Path):  # noqa: ANN202
        if silo_dir.name == "eu":
            raise RuntimeError("keyring unavailable")
        return domain.keys(silo_dir)

    with pytest.raises(RuntimeError, match="keyring unavailable"):
        build_retail_silos(silos, keys_failing_on_eu, data, progress=lambda _m: None)
    assert list(silos.iterdir()) == []

    built = build_retail_silos(silos, domain.keys, data, progress=lambda _m: None)
    assert sorted(p.name for p in silos.iterdir()) == ["eu", "rest", "uk"] == sorted(built)
    with SiloStore.open(silos / "eu") as store:
        assert store.counts()["interactions"] == 2 and store.name == "eu"
    with pytest.raises(FileExistsError, match="already holds a silo store"):
        build_retail_silos(silos, domain.keys, data, progress=lambda _m: None)
