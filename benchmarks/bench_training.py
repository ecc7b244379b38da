"""Federated round time and local training throughput, for 3 and 10 silos.

Run: ``.venv/bin/python benchmarks/bench_training.py [--customers N] [--rounds R]``

For each federation size it generates the synthetic platform and cuts it into
that many silos: the three business lines, each split by customer into shards
(10 silos = flights x4, hotels x3, datapacks x3). It then runs the real Flower
app on the Simulation Engine and prints:

* round 1 wall time: it includes starting the Ray workers and importing torch in
  them, so it is reported apart;
* mean wall time per round after start-up (rounds 2..R): train + evaluate on
  every silo, aggregation included;
* local training throughput in the ClientApps (samples/s, example-weighted over
  silos, from what each silo reports), next to the same training loop run
  in-process on the pooled data in this same run, as a reference.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from fedprofile.client.features import N_FEATURES
from fedprofile.client.ingest import ingest
from fedprofile.config import TrainConfig
from fedprofile.models.propensity import build_model
from fedprofile.models.training import TrainParams, train_local
from fedprofile.simulations.oracle import load_all
from fedprofile.simulations.platform import PlatformConfig, generate_platform
from fedprofile.simulations.training import run_training

SHARDS = {3: {"flights": 1, "hotels": 1, "datapacks": 1},
          10: {"flights": 4, "hotels": 3, "datapacks": 3}}


def _split(src: Path, dst_root: Path, line: str, shards: int) -> list[Path]:
    """Write ``shards`` customer-disjoint copies of one line's files and ingest them."""
    def shard_of(customer_id: str) -> int:
        return zlib.crc32(customer_id.encode()) % shards

    out = []
    for k in range(shards):
        name = line if shards == 1 else f"{line}-{k}"
        out.append(dst_root / "src" / name)
        out[-1].mkdir(parents=True, exist_ok=True)
    for table in ("customers", "orders"):
        with open(src / f"{table}.csv", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            key = header.index("customer_id")
            writers = []
            files = [open(d / f"{table}.csv", "w", newline="") for d in out]  # noqa: SIM115
            try:
                for f in files:
                    writers.append(csv.writer(f))
                    writers[-1].writerow(header)
                for row in reader:
                    writers[shard_of(row[key])].writerow(row)
            finally:
                for f in files:
                    f.close()
    silos = []
    for d in out:
        silo = dst_root / "silos" / d.name
        ingest(silo, d / "customers.csv", d / "orders.csv", silo_name=d.name)
        silos.append(silo)
    return silos


def bench(n_silos: int, customers: int, rounds: int, work: Path) -> dict[str, float]:
    platform = work / "platform"
    if not platform.exists():
        generate_platform(PlatformConfig(n_customers=customers, seed=7), platform)
    root = work / f"silos-{n_silos}"
    silos = [s for line, k in SHARDS[n_silos].items()
             for s in _split(platform / "silos" / line, root, line, k)]
    cfg = TrainConfig(num_server_rounds=rounds, silo_alone=False,
                      silos_dir=str(root / "silos"), run_dir=str(root / "run"))
    result = run_training(cfg, progress=lambda m: print(f"    {m}", flush=True), oracle=False)
    rounds_info = result.metrics["rounds"]
    later = [r["seconds"] for r in rounds_info[1:]]
    speeds = [r["samples_per_second"] for r in rounds_info if r.get("samples_per_second")]

    data = load_all(silos, cfg)
    x = np.concatenate([d.train.x for d in data])
    y = np.concatenate([d.train.y for d in data])
    params = TrainParams(epochs=cfg.local_epochs)
    train_local(build_model(N_FEATURES), x[:4096], y[:4096], params)  # warm-up, not measured
    stats = train_local(build_model(N_FEATURES), x, y, params)
    return {
        "silos": n_silos,
        "customers": float(len(y)),
        "round1": rounds_info[0]["seconds"],
        "per_round": float(np.mean(later)) if later else float("nan"),
        "client_sps": float(np.median(speeds)) if speeds else float("nan"),
        "inprocess_sps": stats.samples_per_second,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--silos", type=int, nargs="+", default=[3, 10], choices=sorted(SHARDS))
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 to measure rounds after start-up")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedprofile-bench-") as tmp:
        for n in args.silos:
            print(f"== {n} silos, {args.customers:,} people, {args.rounds} rounds", flush=True)
            t0 = time.perf_counter()
            rows.append(bench(n, args.customers, args.rounds, Path(tmp)))
            print(f"   ({time.perf_counter() - t0:.0f}s)", flush=True)
    print()
    print(f"{'silos':>5} {'train rows':>10} {'round 1 (s)':>11} {'s/round after start-up':>23} "
          f"{'ClientApp samples/s':>20} {'in-process samples/s':>21} {'ratio':>6}")
    for r in rows:
        print(f"{r['silos']:>5} {r['customers']:>10,.0f} {r['round1']:>11.2f} {r['per_round']:>23.2f} "
              f"{r['client_sps']:>20,.0f} {r['inprocess_sps']:>21,.0f} "
              f"{r['client_sps'] / r['inprocess_sps']:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
