"""Per-round wall time on the Deployment Engine against the Simulation Engine, in one run.

Run: ``.venv/bin/python benchmarks/bench_deployment.py [--customers N] [--rounds R] [--no-cold]``

Same platform, same 3 silos (flights, hotels, datapacks), same model, config
and seed, three ways:

* ``simulation``: Flower's Simulation Engine (Ray workers that live for the run);
* ``deployment``: a loopback Deployment Engine as ``fedprofile deploy run``
  starts it (TLS SuperLink, SuperNode authentication, one SuperNode per
  silo), each silo's ClientApp tasks forked from a warm forkserver
  (:mod:`fedprofile.client.superexec`);
* ``deployment, cold``: the same, with Flower's own SuperExec, which starts a
  fresh ``flwr-clientapp`` interpreter per message (``--cold-clientapps``).

It prints, per engine, round 1 (start-up included) and the mean wall time of
rounds 2..R, with the ratio to the simulation's; for the warm deployment it
also prints how long each ClientApp task process lived (from the silos'
SuperExec logs), to show what the rest of a round is: Flower 1.41's SuperNode
waits 3 s between polls of the SuperLink when it has no message, and the
ServerApp waits 3 s between polls for replies. A round is two exchanges
(train, evaluate), so those fixed pauses, not imports, are most of it.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fedprofile.config import TrainConfig
from fedprofile.demo import build_silos
from fedprofile.privacy.keys import Keyring, Secret, generate_key_file
from fedprofile.simulations.platform import PlatformConfig, generate_platform
from fedprofile.simulations.training import run_training

_TASK = re.compile(r"ClientApp task \d+: process ended after ([0-9.]+)s")


def _silos(work: Path, customers: int) -> tuple[Path, Path]:
    secret_path = generate_key_file(work / "keys" / "bench.key")
    secret = Secret.from_key_file(secret_path)
    Keyring.create(work / "keys" / "bench.keyring", "bench", secret)
    generate_platform(PlatformConfig(n_customers=customers, seed=7), work / "platform")
    build_silos(work / "platform", work / "silos", work / "keys" / "bench.keyring", secret,
                progress=lambda _m: None)
    return work / "silos", secret_path


def _run(name: str, silos: Path, key_file: Path, rounds: int, work: Path,
         deployment: bool, warm: bool = True) -> dict[str, object]:
    print(f"== {name}", flush=True)
    cfg = TrainConfig(silos_dir=str(silos), workspace=str(work), num_server_rounds=rounds,
                      silo_alone=False, key_file=str(key_file), run_dir=str(work / name))
    started = time.perf_counter()
    result = run_training(cfg, progress=lambda m: print(f"   {m}", flush=True), oracle=False,
                          deployment=deployment, warm_clientapps=warm)
    seconds = [float(r["seconds"]) for r in result.metrics["rounds"]]
    tasks = [float(t) for log in (result.run_dir / "flower" / "deployment").glob("superexec-*.log")
             for t in _TASK.findall(log.read_text())]
    return {"name": name, "round1": seconds[0], "later": statistics.fmean(seconds[1:]),
            "total": time.perf_counter() - started, "tasks": tasks,
            "auc": float(result.metrics["federated"]["overall"]["auc"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-cold", action="store_true",
                        help="skip the deployment with Flower's per-message interpreters")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 to measure rounds after start-up")
    with tempfile.TemporaryDirectory(prefix="fedprofile-bench-") as tmp:
        work = Path(tmp)
        silos, key_file = _silos(work, args.customers)
        rows = [_run("simulation", silos, key_file, args.rounds, work, deployment=False),
                _run("deployment", silos, key_file, args.rounds, work, deployment=True)]
        if not args.no_cold:
            rows.append(_run("deployment-cold", silos, key_file, args.rounds, work,
                             deployment=True, warm=False))
    base = float(rows[0]["later"])  # type: ignore[arg-type]
    print()
    print(f"{args.customers:,} people, 3 silos, {args.rounds} rounds, the same model and seed")
    print(f"{'engine':<16} {'round 1 (s)':>11} {'s/round after start-up':>23} "
          f"{'x simulation':>13} {'test AUC':>9}")
    for r in rows:
        print(f"{r['name']:<16} {r['round1']:>11.2f} {r['later']:>23.2f} "
              f"{float(r['later']) / base:>13.1f} {r['auc']:>9.4f}")
    warm = rows[1]["tasks"]
    if warm:
        print(f"\ndeployment: {len(warm)} ClientApp task processes (2 per silo per round), "
              f"each alive {statistics.median(warm):.2f} s median, {max(warm):.2f} s at most; "
              "the rest of a round is Flower's 3 s polling pauses (SuperNode and ServerApp)")
    if len(rows) == 3:
        print(f"warm forkserver vs cold interpreter per message: "
              f"{float(rows[2]['later']) / float(rows[1]['later']):.2f}x faster per round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
