"""The UCI Online Retail data set as regional silos of real, messy interactions.

The synthetic platform shows the product's cases; this adapter shows the
models work on real data, which is messy. The raw file (541,909 invoice lines,
2010-12-01 to 2011-12-09, CC BY 4.0) still holds cancellations, zero or
negative prices, lines with no customer and non-product stock codes. The
cleaning rules below are applied in order and each one's drop count is
reported, so the cleaning is auditable:

1. ``no-customer``: no CustomerID, so the line cannot be attributed to anyone.
2. ``cancellation``: InvoiceNo starting with ``C`` (cancellations) or ``A``
   (bad-debt adjustments): not purchases.
3. ``non-positive-quantity`` / ``non-positive-price``: returns and free items.
4. ``non-product``: StockCodes that are not five digits plus an optional letter
   suffix (``POST``, ``D``, ``M``, ``BANK CHARGES``, ``DOT``, ``AMAZONFEE``, ...):
   fees and postage, not items a customer would be recommended.
5. ``duplicate``: exact duplicate lines (the same line exported twice).

Customers are split into regional silos by country: ``uk`` (United Kingdom),
``eu`` (EU member states of 2011, including ``EIRE`` and ``European Community``)
and ``rest`` (everything else). A customer who appears under several countries
goes to the silo of their first purchase, so no customer is in two silos.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fedprofile.client.ingest_interactions import (ColumnMapping, InteractionsReport,
                                                   ingest_interactions)
from fedprofile.client.interactions import Interactions
from fedprofile.client.store import STORE_FILENAME, SiloStore
from fedprofile.files import atomic_write_bytes
from fedprofile.privacy.silo_keys import SiloKeys

DEFAULT_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "online_retail" / "online_retail.csv.gz"
COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
           "CustomerID", "Country")
PRODUCT_CODE = re.compile(r"^\d{5}[A-Za-z]{0,2}$")
EU_2011 = frozenset({
    "Austria", "Belgium", "Bulgaria", "Cyprus", "Czech Republic", "Denmark", "EIRE",
    "Estonia", "European Community", "Finland", "France", "Germany", "Greece", "Hungary",
    "Italy", "Latvia", "Lithuania", "Luxembourg", "Malta", "Netherlands", "Poland",
    "Portugal", "Romania", "Slovakia", "Slovenia", "Spain", "Sweden",
})
REGIONS = ("uk", "eu", "rest")
SILO_FILE_COLUMNS = ("CustomerID", "StockCode", "InvoiceDate", "Value", "Country")
"""Columns of the files :func:`write_silo_files` writes: an ordinary interactions export."""
SILO_FILE_MAPPING = {"user": "CustomerID", "item": "StockCode", "timestamp": "InvoiceDate",
                     "value": "Value", "region": "Country"}
"""How those columns map onto an interactions ingestion (``--map user=CustomerID`` ...)."""
RULES = ("no-customer", "cancellation", "non-positive-quantity", "non-positive-price",
         "non-product", "duplicate")


def region_of(country: str) -> str:
    """``uk``, ``eu`` or ``rest``: the regional silo a country's customers belong to."""
    if country == "United Kingdom":
        return "uk"
    return "eu" if country in EU_2011 else "rest"


@dataclass(frozen=True)
class Interaction:
    """One cleaned purchase line: who bought which item when, for how much."""

    user: str
    item: str
    timestamp: dt.datetime
    value: float
    country: str


@dataclass
class CleaningReport:
    """What the cleaning kept and dropped, rule by rule."""

    rows: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def __str__(self) -> str:
        drops = ", ".join(f"{rule} {self.dropped[rule]:,}" for rule in RULES if self.dropped[rule])
        return f"{self.rows:,} rows read, {self.kept:,} kept; dropped: {drops or 'none'}"


def _open_text(path: Path) -> io.TextIOBase:
    raw = open(path, "rb")  # noqa: SIM115 - closed with the wrapper
    stream = gzip.open(raw) if path.suffix == ".gz" else raw
    return io.TextIOWrapper(stream, encoding="utf-8", newline="")


def read_rows(path: Path, limit: int | None = None) -> Iterator[dict[str, str]]:
    """Raw rows as dicts; a header that is not the data set's is a clear error."""
    with _open_text(Path(path)) as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: expected the columns {', '.join(COLUMNS)}, got "
                             f"{', '.join(reader.fieldnames or ['nothing'])}")
        for i, row in enumerate(reader):
            if limit is not None and i >= limit:
                return
            yield row


def clean(rows: Iterable[dict[str, str]], report: CleaningReport | None = None
          ) -> list[Interaction]:
    """Apply the cleaning rules (module docstring) in order; count each drop."""
    report = report if report is not None else CleaningReport()
    seen: set[tuple[str, ...]] = set()
    out: list[Interaction] = []
    for row in rows:
        report.rows += 1
        customer = row["CustomerID"].strip()
        quantity = int(row["Quantity"])
        price = float(row["UnitPrice"])
        if not customer:
            rule = "no-customer"
        elif row["InvoiceNo"][:1] in ("C", "A"):
            rule = "cancellation"
        elif quantity <= 0:
            rule = "non-positive-quantity"
        elif price <= 0:
            rule = "non-positive-price"
        elif not PRODUCT_CODE.match(row["StockCode"].strip()):
            rule = "non-product"
        else:
            key = tuple(row[c] for c in COLUMNS)
            rule = "duplicate" if key in seen else ""
            seen.add(key)
        if rule:
            report.dropped[rule] += 1
            continue
        out.append(Interaction(user=customer, item=row["StockCode"].strip().upper(),
                               timestamp=dt.datetime.fromisoformat(row["InvoiceDate"]),
                               value=round(quantity * price, 2), country=row["Country"]))
    report.kept = len(out)
    return out


def split_by_region(interactions: Iterable[Interaction]) -> dict[str, list[Interaction]]:
    """Interactions per regional silo; each customer in exactly one silo."""
    ordered = sorted(interactions, key=lambda i: (i.timestamp, i.user, i.item))
    home: dict[str, str] = {}
    silos: dict[str, list[Interaction]] = {region: [] for region in REGIONS}
    for interaction in ordered:
        region = home.setdefault(interaction.user, region_of(interaction.country))
        silos[region].append(interaction)
    return silos


def load(path: Path = DEFAULT_PATH, limit: int | None = None
         ) -> tuple[dict[str, list[Interaction]], CleaningReport]:
    """Read, clean and split the data set (``limit`` rows only, for quick tests)."""
    report = CleaningReport()
    return split_by_region(clean(read_rows(path, limit), report)), report


def to_interactions(records: Iterable[Interaction], name: str = "") -> Interactions:
    """Cleaned lines as the :class:`~fedprofile.client.interactions.Interactions` a silo reads.

    The region of each line is its country: what a regional recommendation groups by.
    (Used by tests and benchmarks; silos get the same data through ingestion.)
    """
    return Interactions.from_records(
        ((r.user, r.item, r.timestamp, r.value, r.country) for r in records), name=name)


def write_silo_files(out_dir: Path, path: Path = DEFAULT_PATH, limit: int | None = None
                     ) -> tuple[dict[str, Path], CleaningReport]:
    """Clean the data set and write one interactions CSV per regional silo.

    The files look like any line's own interactions export (columns
    :data:`SILO_FILE_COLUMNS`, InvoiceDate in ISO 8601), so the silos are
    loaded through :func:`fedprofile.client.ingest_interactions.ingest_interactions`,
    the same validated path a user's data takes, rather than through a
    side door. Each file is written atomically (never half a file). A region
    with no customer left (possible with a small ``limit``) gets no file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the UCI Online Retail file is not there; pass its path "
                                "(online_retail.csv.gz, see shared/data/online_retail/README.md)")
    silos, report = load(path, limit)
    files: dict[str, Path] = {}
    for region, records in silos.items():
        if not records:
            continue
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(SILO_FILE_COLUMNS)
        writer.writerows((r.user, r.item, r.timestamp.isoformat(), f"{r.value:.2f}", r.country)
                         for r in records)
        files[region] = Path(out_dir) / f"online_retail_{region}.csv"
        atomic_write_bytes(files[region], text.getvalue().encode("utf-8"))
    return files, report


def refuse_populated_silo(silo_dir: Path) -> None:
    """A silo that already holds data would get every interaction twice: refuse it."""
    if not (silo_dir / STORE_FILENAME).is_file():
        return
    with SiloStore.open(silo_dir) as store:
        counts = store.counts()
    if counts["customers"] or counts["orders"] or counts["interactions"]:
        raise FileExistsError(
            f"{silo_dir} already holds a silo store with data ({counts['customers']:,} "
            f"customers, {counts['interactions']:,} interactions); loading the data set into "
            "it again would double it: pass a new --silos-dir")


def build_retail_silos(silos_dir: Path, keys_for: Callable[[Path], SiloKeys],
                       path: Path = DEFAULT_PATH, limit: int | None = None,
                       progress: Callable[[str], None] = print,
                       on_report: Callable[[Path, InteractionsReport], None] | None = None
                       ) -> dict[str, Path]:
    """Clean the data set and load each region into its own silo, through generic ingestion.

    The same path a user's own export takes (``fedprofile silo ingest-interactions``
    with a column mapping). All or nothing across the regions: the silos are
    built in a staging folder and moved into ``silos_dir`` only when every one
    of them loaded. The cleaned files still carry raw customer ids, so they
    live only in that staging folder, which is removed at the end, and on
    failure.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the UCI Online Retail file is not there; pass --data "
                                "PATH to online_retail.csv.gz")
    silos_dir = Path(silos_dir)
    for region in REGIONS:
        if (silos_dir / region).exists():
            refuse_populated_silo(silos_dir / region)
            if any((silos_dir / region).iterdir()):
                raise FileExistsError(f"{silos_dir / region} exists and is not empty: pass a new "
                                      "--silos-dir")
    progress(f"reading and cleaning {path}" + (f" (first {limit:,} rows)" if limit else "") + " ...")
    silos_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=silos_dir, prefix=".building-"))
    try:
        files, cleaning = write_silo_files(staging / "cleaned", path, limit)
        progress(f"  {cleaning}")
        mapping = ColumnMapping(**SILO_FILE_MAPPING)
        maps = " ".join(f"--map {target}={source}" for target, source in mapping.pairs())
        for region, export in files.items():
            progress(f"ingesting the cleaned {region} lines into {silos_dir / region} (the same "
                     f"as `fedprofile silo ingest-interactions {silos_dir / region} "
                     f"{export.name} {maps}`) ...")
            # The silo's identity key is written inside it, so it moves with the silo.
            report = ingest_interactions(staging / region, export, mapping,
                                         keys=keys_for(staging / region), silo_name=region)
            if on_report is not None:
                on_report(silos_dir / region, report)
        shutil.rmtree(staging / "cleaned")  # raw ids: gone before anything is moved into place
        built: dict[str, Path] = {}
        for region in files:
            if (silos_dir / region).exists():
                (silos_dir / region).rmdir()  # checked empty above
            (staging / region).rename(silos_dir / region)
            built[region] = silos_dir / region
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for region in REGIONS:
        if region not in files:
            progress(f"  note: no customer left in region {region!r}; no silo written for it")
    return built
