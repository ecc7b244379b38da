"""Federated round time and local training throughput, for 3 and 10 silos.

Run: ``.venv/bin/python benchmarks/bench_training.py [--customers N] [--rounds R]``

For each federation size it generates the synthetic platform and cuts it into
that many silos: the three business lines, each split by customer into shards
(10 silos = flights x4, hotels x3, datapacks x3; :mod:`fedprofile.simulations.shards`). It then runs the real Flower
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
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fedprofile.client.features import N_FEATURES
from fedprofile.config import TrainConfig
from fedprofile.models.propensity import build_model
from fedprofile.models.training import TrainParams, train_local
from fedprofile.simulations.oracle import load_all
from fedprofile.privacy.keys import Keyring, Secret, generate_key_file
from fedprofile.simulations.platform import PlatformConfig, generate_platform
from fedprofile.simulations.shards import cut_platform
from fedprofile.simulations.training import run_training


def _keys(work: Path) -> tuple[Path, Secret]:
    secret = Secret.from_key_file(generate_key_file(work / "keys" / "bench.key"))
    Keyring.create(work / "keys" / "bench.keyring", "bench", secret)
    return work / "keys" / "bench.keyring", secret


def bench(n_silos: int, customers: int, rounds: int, work: Path) -> dict[str, float]:
    platform = work / "platform"
    if not platform.exists():
        generate_platform(PlatformConfig(n_customers=customers, seed=7), platform)
    root = work / f"silos-{n_silos}"
    keyring, secret = _keys(work) if not (work / "keys").exists() else (
        work / "keys" / "bench.keyring", Secret.from_key_file(work / "keys" / "bench.key"))
    federation = cut_platform(platform, root / "federation", n_silos, keyring, secret)
    silos = list(federation.silos)
    cfg = TrainConfig(num_server_rounds=rounds, silo_alone=False,
                      silos_dir=str(federation.silos_dir), run_dir=str(root / "run"),
                      key_file=str(work / "keys" / "bench.key"))
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
    parser.add_argument("--silos", type=int, nargs="+", default=[3, 10])
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
