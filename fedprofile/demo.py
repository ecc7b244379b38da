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
from fedprofile.simulations.platform import PlatformConfig, generate_platform
from fedprofile.simulations.training import TrainingResult, run_training, summary_table

MARKER = ".fedprofile-demo"


@dataclass(frozen=True)
class DemoResult:
    workspace: Path
    training: TrainingResult
    seconds: float


def build_silos(platform_dir: Path, silos_dir: Path,
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
        report = ingest(staging / src.name, customers=src / "customers.csv",
                        orders=src / "orders.csv", silo_name=src.name)
        progress(f"  silo {src.name}: {report.customers_added:,} customers, "
                 f"{report.orders_added:,} orders")
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
    build_silos(platform_dir, silos_dir, progress)

    progress("[3/4] federated training")
    cfg = replace(train, workspace=str(workspace), silos_dir=str(silos_dir))
    result = run_training(cfg, progress=progress, oracle=True)

    progress("[4/4] results")
    progress(summary_table(result.metrics))
    return DemoResult(workspace=workspace, training=result,
                      seconds=time.perf_counter() - started)
