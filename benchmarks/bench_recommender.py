"""The federated recommender on the full UCI Online Retail data set, with and without DP.

Run: ``.venv/bin/python benchmarks/bench_recommender.py [--epsilons 1,4,8] [--rounds 5]``

It builds the three regional silos (uk, eu, rest) from ``../shared/data/online_retail``
through the generic interactions ingestion, then runs the real Flower app on
the Simulation Engine, all in one run, side by side:

* federated (FedAvg, no DP), with the centralized oracle (same model on the
  pooled data), the most-popular ranking and each silo alone;
* the federated model with customer-level DP-SGD in every silo, for each
  epsilon in ``--epsilons`` (each silo's noise chosen to end the run at that
  epsilon), every run charged to a privacy-budget ledger.

It prints HR@10 / NDCG@10 / Recall@20 on each customer's held-out last basket,
the ratios to the centralized model, the issue's targets (federated >= 0.95x
centralized HR@10; at epsilon 8 >= 0.85x; every private model beats the
most-popular ranking) as PASS/FAIL, the ledger's entries for the DP runs, and
writes a plot of HR@10 against epsilon.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedprofile.config import TrainConfig  # noqa: E402
from fedprofile.privacy.keys import Keyring, Secret, generate_key_file  # noqa: E402
from fedprofile.privacy.ledger import Ledger, ledger_key_from_file  # noqa: E402
from fedprofile.privacy.silo_keys import load_silo_keys  # noqa: E402
from fedprofile.simulations.online_retail import DEFAULT_PATH, build_retail_silos  # noqa: E402
from fedprofile.simulations.training import run_training  # noqa: E402

METRICS = ("hr@10", "ndcg@10", "recall@20")
PURPOSE = "recommendation-training"


def _silos(work: Path, data: Path, limit: int | None) -> Path:
    keys = work / "keys"
    keys.mkdir(parents=True)
    secret = Secret.from_key_file(generate_key_file(keys / "retail.key"))
    Keyring.create(keys / "retail.keyring", "retail", secret)
    silos = work / "silos"
    build_retail_silos(silos, lambda d: load_silo_keys(keys / "retail.keyring", secret, d),
                       data, limit, progress=lambda m: print(f"  {m}", flush=True))
    return silos


def _ledger(work: Path, cap: float) -> Path:
    path = work / "ledger" / "privacy-ledger.sqlite"
    path.parent.mkdir(parents=True)
    key = ledger_key_from_file(generate_key_file(path.with_name("ledger.key")))
    with Ledger.create(path, key) as ledger:
        for silo in ("uk", "eu", "rest"):
            ledger.set_cap(silo, PURPOSE, cap, 1e-4, reason="benchmark")
    return path


def _row(name: str, overall: dict[str, float], central: float | None) -> str:
    ratio = f"{overall['hr@10'] / central:>7.3f}x" if central else f"{'':>8}"
    return (f"{name:<30} " + " ".join(f"{overall[m]:>9.4f}" for m in METRICS) + f"  {ratio}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--limit", type=int, default=None, help="first N rows only (a quick try)")
    parser.add_argument("--epsilons", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="keep the workspace here")
    args = parser.parse_args(argv)
    epsilons = [float(e) for e in args.epsilons.split(",") if e]
    if not args.data.is_file():
        print(f"{args.data}: the UCI Online Retail file is not there (--data)", file=sys.stderr)
        return 2

    work = args.out or Path(tempfile.mkdtemp(prefix="fedprofile-bench-rec-"))
    started = time.perf_counter()
    print(f"workspace: {work}", flush=True)
    print("building the regional silos from the real data set", flush=True)
    silos = _silos(work, args.data, args.limit)
    ledger = _ledger(work, cap=sum(epsilons) + 1.0)
    base = TrainConfig(num_server_rounds=args.rounds, local_epochs=args.local_epochs,
                       model="recommender", min_silos=3, workspace=str(work),
                       silos_dir=str(silos), ledger=str(ledger), dp_delta=1e-5)

    def show(message: str) -> None:
        print(message, flush=True)

    print("\nfederated, no DP (with the centralized oracle, most popular, each silo alone)")
    plain = run_training(base, progress=show).metrics
    private: dict[float, dict[str, Any]] = {}
    run_ids: dict[float, str] = {}
    for eps in epsilons:
        print(f"\nfederated with customer-level DP-SGD, epsilon {eps:g} per silo")
        cfg = TrainConfig(**{**base.__dict__, "dp": True, "dp_target_epsilon": eps,
                             "silo_alone": False})
        result = run_training(cfg, progress=show, oracle=False)
        private[eps] = result.metrics
        run_ids[eps] = str(result.metrics["flower_run_id"])

    central = plain["oracle"]["overall"]["hr@10"]
    popular = plain["popularity"]["overall"]["hr@10"]
    print(f"\n{'model':<30} " + " ".join(f"{m:>9}" for m in METRICS) + "  vs central")
    print(_row("centralized (pooled, oracle)", plain["oracle"]["overall"], central))
    print(_row("federated (FedAvg)", plain["federated"]["overall"], central))
    for silo, values in sorted(plain["silo_alone"]["silos"].items()):
        print(_row(f"silo alone: {silo}", values, None))
    print(_row("most popular", plain["popularity"]["overall"], central))
    for eps, metrics in private.items():
        print(_row(f"federated + DP, epsilon {eps:g}", metrics["federated"]["overall"], central))
    print("(HR@10 / NDCG@10 / Recall@20 over "
          f"{int(plain['federated']['overall']['users']):,} customers' held-out last baskets; "
          "silo-alone rows are each silo's own customers)")

    checks = [("federated >= 0.95x centralized HR@10",
               plain["federated"]["overall"]["hr@10"] >= 0.95 * central)]
    if 8.0 in private:
        checks.append(("federated + DP at epsilon 8 >= 0.85x centralized HR@10",
                       private[8.0]["federated"]["overall"]["hr@10"] >= 0.85 * central))
    for eps, metrics in private.items():
        checks.append((f"federated + DP at epsilon {eps:g} beats most popular (HR@10)",
                       metrics["federated"]["overall"]["hr@10"] > popular))
    print()
    for name, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")

    print("\nprivacy-budget ledger entries of the DP runs (purpose recommendation-training):")
    with Ledger.open(ledger, ledger_key_from_file(ledger.with_name("ledger.key"))) as book:
        assert book.verify().ok, "the ledger failed verification"
        for entry in book.entries(status="spent"):
            eps = next((e for e, rid in run_ids.items() if rid == entry.run_id), None)
            print(f"  run {entry.run_id} (target {eps:g}): {entry.silo:<5} charged epsilon "
                  f"{entry.epsilon:.3f} (delta {entry.delta:g}, noise "
                  f"{entry.params['noise_multiplier']:.3f}, {entry.params['steps']} steps)")

    plot = work / "hr10_vs_epsilon.png"
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    xs = list(private)
    ax.plot(xs, [private[e]["federated"]["overall"]["hr@10"] for e in xs], marker="o",
            label="federated + DP")
    ax.axhline(plain["federated"]["overall"]["hr@10"], linestyle="-", color="grey",
               label="federated, no DP")
    ax.axhline(central, linestyle="--", color="black", label="centralized (oracle)")
    ax.axhline(popular, linestyle="-.", color="black", label="most popular")
    ax.set_xlabel("customer-level epsilon per silo (delta 1e-5)")
    ax.set_ylabel("HR@10 (held-out last basket)")
    ax.set_title("Federated recommender on UCI Online Retail: utility vs privacy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plot)
    plt.close(fig)
    print(f"\nplot: {plot}\ntotal {time.perf_counter() - started:.0f}s")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
