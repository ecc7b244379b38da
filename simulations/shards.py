"""Cut a generated platform into any number of silos, with a held-out population per line.

A simulation needs federations of other shapes than "one silo per business
line": 10 or 100 silos (partners, regions, franchises), and, for a
membership-inference audit, customers the models never saw who come from the
same population as those they did. This module splits each line's files by
customer (a keyed hash of the customer id, so the cut is reproducible and
independent of file order), ingests every shard into its own silo store with
the key domain's pseudonymisation keys (exactly as ``fedprofile silo ingest``
would), and ingests the held-out customers of each line into a store that is
*not* in the federation's silos folder. Only the simulator reads those.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedprofile.client.ingest import ingest
from fedprofile.privacy.keys import Secret
from fedprofile.privacy.silo_keys import load_silo_keys

from .canaries import Canaries, make_canaries

TABLES = ("customers", "orders")


@dataclass(frozen=True)
class Federation:
    """Where a cut platform's silos and held-out stores are."""

    silos_dir: Path
    silos: tuple[Path, ...]
    holdout: dict[str, Path]
    """Line -> the store of that line's held-out customers (empty when none were held out)."""


def silo_line(silo_name: str) -> str:
    """The business line a silo of a cut platform serves: ``flights-03`` -> ``flights``.

    >>> silo_line("flights-03"), silo_line("hotels")
    ('flights', 'hotels')
    """
    base, _, index = silo_name.rpartition("-")
    return base if base and index.isdigit() else silo_name


def shard_counts(lines: list[str], silos: int) -> dict[str, int]:
    """How many silos each line becomes: ``silos`` spread as evenly as possible, in line order.

    >>> shard_counts(["flights", "hotels", "datapacks"], 10)
    {'flights': 4, 'hotels': 3, 'datapacks': 3}
    """
    if silos < len(lines):
        raise ValueError(f"{silos} silos cannot hold {len(lines)} business lines (one each at least)")
    base, extra = divmod(silos, len(lines))
    return {line: base + (1 if i < extra else 0) for i, line in enumerate(lines)}


def _unit(seed: int, customer_id: str) -> float:
    """A customer's reproducible position in [0, 1): decides holdout and shard."""
    digest = hashlib.blake2b(customer_id.encode(), digest_size=8, key=seed.to_bytes(8, "big")).digest()
    return int.from_bytes(digest, "big") / 2**64


def _write_parts(src: Path, parts: list[Path], holdout_dir: Path | None, holdout: float,
                 seed: int, canaries: Canaries | None = None) -> None:
    """Route every row of ``src``'s tables (and the canaries') to its shard's or the holdout's copy."""
    def target(customer_id: str) -> int:
        u = _unit(seed, customer_id)
        if canaries is not None and customer_id in canaries.member:
            if not canaries.member[customer_id]:
                return -1
            return min(int(u * len(parts)), len(parts) - 1)
        if u < holdout:
            return -1
        return min(int((u - holdout) / (1 - holdout) * len(parts)), len(parts) - 1)

    for table in TABLES:
        with open(src / f"{table}.csv", newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            key = header.index("customer_id")
            dirs = parts + ([holdout_dir] if holdout_dir is not None else [])
            files = [open(d / f"{table}.csv", "w", newline="", encoding="utf-8")  # noqa: SIM115
                     for d in dirs]
            try:
                writers = [csv.writer(f) for f in files]
                for w in writers:
                    w.writerow(header)
                for row in reader:
                    writers[target(row[key])].writerow(row)
                planted = [] if canaries is None else (
                    canaries.customers if table == "customers" else canaries.orders)
                for record in planted:
                    writers[target(record["customer_id"])].writerow([record[h] for h in header])
            finally:
                for f in files:
                    f.close()


def cut_platform(platform_dir: Path, out_dir: Path, silos: int, keyring: Path, secret: Secret,
                 holdout: float = 0.0, seed: int = 0, canaries: int = 0,
                 train_time: dt.datetime | None = None, horizon_days: int = 30,
                 progress: Callable[[str], None] = lambda _m: None) -> Federation:
    """Split the platform's lines into ``silos`` stores under ``out_dir/silos``; hold out a share.

    ``holdout`` is the share of each line's customers kept out of every silo
    and ingested into ``out_dir/holdout/<line>`` instead. With as many silos
    as lines, each silo keeps its line's name; otherwise ``flights-03``.
    ``canaries`` audit canaries per line (:mod:`.canaries`, modelled on the
    training snapshot at ``train_time``) go to a random shard of their line
    when drawn as members and to the line's held-out store otherwise.
    ``out_dir`` must not exist yet: a half-cut federation is never mistaken
    for a whole one (the work happens in ``out_dir.building``, renamed at the end).
    """
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout!r}")
    if canaries and train_time is None:
        raise ValueError("canaries need the training snapshot time (train_time)")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists")
    lines = [p.name for p in sorted((Path(platform_dir) / "silos").iterdir()) if p.is_dir()]
    counts = shard_counts(lines, silos)
    staging = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    names: list[str] = []
    holdout_names: dict[str, str] = {}
    for line in lines:
        n = counts[line]
        shard_names = [line] if n == 1 else [f"{line}-{k:02d}" for k in range(n)]
        parts = [staging / "src" / name for name in shard_names]
        hold = staging / "src" / f"holdout-{line}" if holdout > 0 or canaries else None
        for d in parts + ([hold] if hold is not None else []):
            d.mkdir(parents=True)
        source = Path(platform_dir) / "silos" / line
        planted = (make_canaries(line, source, canaries, train_time, horizon_days, seed)
                   if canaries and train_time is not None else None)
        _write_parts(source, parts, hold, holdout, seed, planted)
        for name, part in zip(shard_names, parts):
            _ingest(part, staging / "silos" / name, name, keyring, secret)
            names.append(name)
        if hold is not None:
            _ingest(hold, staging / "holdout" / line, line, keyring, secret)
            holdout_names[line] = line
        progress(f"  line {line}: {n} silo(s)"
                 + (f", {holdout:.0%} of its customers held out" if holdout > 0 else "")
                 + (f", {canaries} audit canaries ({sum(planted.member.values())} planted)"
                    if planted is not None else ""))
    shutil.rmtree(staging / "src")
    staging.rename(out_dir)
    return Federation(silos_dir=out_dir / "silos",
                      silos=tuple(out_dir / "silos" / n for n in sorted(names)),
                      holdout={line: out_dir / "holdout" / line for line in holdout_names})


def _ingest(src: Path, silo_dir: Path, name: str, keyring: Path, secret: Secret) -> None:
    keys = load_silo_keys(keyring, secret, silo_dir)
    ingest(silo_dir, customers=src / "customers.csv", orders=src / "orders.csv",
           silo_name=name, keys=keys)
