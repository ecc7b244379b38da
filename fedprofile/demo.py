"""The main job: from nothing to a federated model compared with its alternatives.

Generate the synthetic travel platform, load each business line into its own
silo store, train the propensity model federatedly on Flower's Simulation
Engine, and print the federated model next to the centralized oracle and each
silo alone. Everything lands in one workspace directory that can be inspected.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from fedprofile.client.ingest import ingest
from fedprofile.config import TrainConfig
from fedprofile.privacy.keys import Keyring, Secret, generate_key_file
from fedprofile.privacy.silo_keys import load_silo_keys
from fedprofile.simulations.platform import PlatformConfig, generate_platform
from fedprofile.simulations.training import TrainingResult, run_training, summary_table

MARKER = ".fedprofile-demo"
DEMO_DOMAIN = "travel"


@dataclass(frozen=True)
class DemoResult:
    workspace: Path
    training: TrainingResult
    seconds: float


def demo_keys(workspace: Path) -> tuple[Path, Secret]:
    """The demo's key domain: a keyring unlocked by a key file, both under ``keys/``.

    In a real deployment each silo keeps its copy of the domain keyring and its
    secret on its own machine; the demo keeps them in one place because one
    machine plays every silo. The server never reads them.
    """
    keys_dir = workspace / "keys"
    key_file = keys_dir / "demo.key"
    keyring = keys_dir / f"{DEMO_DOMAIN}.keyring"
    if not key_file.exists():
        keys_dir.mkdir(parents=True, exist_ok=True)
        keyring.unlink(missing_ok=True)  # useless without the key file that sealed it
        generate_key_file(key_file)
    secret = Secret.from_key_file(key_file)
    if not keyring.exists():
        Keyring.create(keyring, DEMO_DOMAIN, secret)
    return keyring, secret


def build_silos(platform_dir: Path, silos_dir: Path, keyring: Path, secret: Secret,
                progress: Callable[[str], None] = print) -> list[Path]:
    """Ingest every generated line into a fresh silo store, replacing ``silos_dir`` at the end.

    The new stores are built next to the old ones and swapped in only when all
    of them loaded, so an interrupted demo never leaves a half-built silo set.
    """
    sources = sorted(p for p in (platform_dir / "silos").iterdir() if p.is_dir())
    staging = silos_dir.with_name(silos_dir.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    built = []
    for src in sources:
        keys = load_silo_keys(keyring, secret, staging / src.name)
        report = ingest(staging / src.name, customers=src / "customers.csv",
                        orders=src / "orders.csv", silo_name=src.name, keys=keys)
        invalid = sum(r.invalid for r in report.identifiers if r.kind != "account")
        progress(f"  silo {src.name}: {report.customers_added:,} customers, "
                 f"{report.orders_added:,} orders; identifiers pseudonymised with key "
                 f"{report.key_domain} v{report.key_version}"
                 + (f" ({invalid:,} unusable phone/e-mail values dropped)" if invalid else ""))
        built.append(silos_dir / src.name)
    old = silos_dir.with_name(silos_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if silos_dir.exists():
        silos_dir.rename(old)
    staging.rename(silos_dir)
    shutil.rmtree(old, ignore_errors=True)
    return built


def _claim_workspace(workspace: Path) -> None:
    """The demo rewrites its workspace; refuse to do that to someone else's directory."""
    if workspace.exists() and any(workspace.iterdir()) and not (workspace / MARKER).exists():
        raise FileExistsError(
            f"{workspace} exists and was not made by `fedprofile demo`; "
            "choose another --workspace"
        )
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / MARKER).write_text("This directory is rewritten by `fedprofile demo`.\n")


def run_demo(workspace: Path, platform: PlatformConfig, train: TrainConfig,
             progress: Callable[[str], None] = print) -> DemoResult:
    """Run the whole demo in ``workspace``; returns where everything is."""
    started = time.perf_counter()
    _claim_workspace(workspace)
    platform_dir = workspace / "platform"

    progress(f"[1/4] generating the synthetic travel platform "
             f"({platform.n_customers:,} people, seed {platform.seed})")
    t0 = time.perf_counter()
    summary = generate_platform(platform, platform_dir, overwrite=True)
    lines = ", ".join(f"{line} {n:,}" for line, n in summary.customers_per_line.items())
    progress(f"  customers per line: {lines} ({time.perf_counter() - t0:.1f}s); "
             f"ground truth kept apart in {platform_dir / 'ground_truth'}")

    progress("[2/4] loading each business line into its own silo store")
    silos_dir = workspace / "silos"
    keyring, secret = demo_keys(workspace)
    build_silos(platform_dir, silos_dir, keyring, secret, progress)

    progress("[3/4] federated training")
    cfg = replace(train, workspace=str(workspace), silos_dir=str(silos_dir))
    result = run_training(cfg, progress=progress, oracle=True)

    progress("[4/4] results")
    progress(summary_table(result.metrics))
    return DemoResult(workspace=workspace, training=result,
                      seconds=time.perf_counter() - started)
