"""A federated training run on one machine, with the comparisons only a simulation can make.

It runs the real Flower app on Flower's Simulation Engine (one virtual
SuperNode per silo), then adds the centralized oracle, and leaves a run
directory a data scientist can open: ``metrics.json``, ``model.pt``,
``config.json``, the by-round plot (``auc_by_round.png`` or ``hr10_by_round.png``)
and Flower's logs.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from fedprofile.client.silos import list_silos
from fedprofile.config import ConfigError, TrainConfig
from fedprofile.files import atomic_write_json
from fedprofile.client.serving import load_recommender
from fedprofile.server.app import METRICS_FILE, MODEL_FILE
from fedprofile.server.budget import require_ledger
from fedprofile.server.deployment import run_deployment
from fedprofile.server.local_superlink import SimulationError, run_simulation

from .oracle import centralized_oracle, load_all
from .recommender_baselines import centralized_oracle as recommender_oracle
from .recommender_baselines import load_splits, popularity_baseline
from .plots import plot_file, plot_metric_by_round

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SHOWN = re.compile(r"fedprofile: (.*)$")
_ERROR = re.compile(r"\b[A-Z]\w*(?:Error|Exception): \S.*$")
_REPLY_ERROR = "Received error in reply from node"


@dataclass(frozen=True)
class TrainingResult:
    """Where a run's results are and the headline numbers."""

    run_dir: Path
    metrics: dict[str, Any]
    seconds: float


def new_run_id() -> str:
    """Sortable and unique: ``20261124-101500-3fa2``."""
    return f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def relay_progress(progress: Callable[[str], None]) -> Callable[[str], None]:
    """Show the ServerApp's own progress lines and the errors' messages, not Flower's chatter.

    A failing ClientApp makes Flower and Ray print the same traceback several
    times; what a user needs is the exception's own line (``ValueError: silo
    ... has no customers``), once.
    """
    shown: set[str] = set()

    def on_line(line: str) -> None:
        clean = _ANSI.sub("", line)
        match = _SHOWN.search(clean)
        if match:
            progress(f"  {match.group(1)}")
            return
        error = _ERROR.search(clean)
        if error and _REPLY_ERROR in clean:
            return  # a silo's failed reply: the strategy's own line says which silo, and why
        if error and error.group(0) not in shown:
            shown.add(error.group(0))
            progress(f"  error: {error.group(0)}")
    return on_line


def prepare_run(cfg: TrainConfig) -> tuple[list[Path], TrainConfig, Path]:
    """Before any Flower process starts: the silos, the ledger, an empty run directory.

    Returns the silos, the config resolved to absolute paths (written to the
    run directory's ``config.json``) and the run directory.
    """
    silos = list_silos(cfg.silos_path)
    if len(silos) < cfg.min_silos:
        raise ConfigError(f"{cfg.silos_path} has {len(silos)} silo(s); min-silos is {cfg.min_silos}")
    require_ledger(cfg)
    run_dir = cfg.run_path(new_run_id())
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"run directory {run_dir} is not empty")
    cfg = cfg.resolved(run_dir)
    atomic_write_json(run_dir / "config.json", cfg.to_mapping())
    return silos, cfg, run_dir


Reference = Callable[[list[Path], TrainConfig, dict[str, Any]], dict[str, Any]]
"""What only a simulation can add to a job's result: ``(silos, resolved config, result) -> entry``."""


def run_job(cfg: TrainConfig, job: str, result_file: str, title: str,
            progress: Callable[[str], None],
            reference: tuple[str, Reference] | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """Run one non-training job (PSI, segmentation, regional counts, joint model) over every silo.

    ``title`` is the progress line naming the run. Validates the job's config
    (segmentation and regional counts are DP only), checks a DP job's ledger
    exists before any Flower process starts, and returns the resolved config
    and the ServerApp's ``result_file`` with ``run_dir`` added. ``reference``
    (key, function) adds a simulation-only entry, written back to the file.
    """
    silos, cfg, run_dir = prepare_run(replace(cfg, job=job))
    progress(title)
    run_simulation(cfg, len(silos), run_dir / "flower", relay_progress(progress))
    path = run_dir / result_file
    if not path.is_file():
        raise SimulationError(f"the {job} run did not finish; see {run_dir / 'flower' / 'flower.log'}")
    result: dict[str, Any] = json.loads(path.read_text())
    if reference is not None:
        key, compute = reference
        result[key] = compute(silos, cfg, result)
        atomic_write_json(path, result)
    result["run_dir"] = str(run_dir)
    return cfg, result


def run_training(cfg: TrainConfig, progress: Callable[[str], None] = print,
                 oracle: bool = True, deployment: bool = False,
                 warm_clientapps: bool = True) -> TrainingResult:
    """Train federatedly on every silo under ``cfg.silos_path``; add the oracle.

    ``deployment``: run on Flower's Deployment Engine on this machine (a TLS
    SuperLink with SuperNode authentication and one SuperNode process per
    silo, :mod:`fedprofile.server.deployment`) instead of the Simulation Engine.
    ``warm_clientapps=False`` starts each ClientApp task from a bare
    interpreter, as Flower's own SuperExec does (slower; for comparison).
    """
    silos, cfg, run_dir = prepare_run(cfg)

    started = time.perf_counter()
    engine = "Deployment Engine (loopback)" if deployment else "Simulation Engine"
    progress(f"federated training on Flower's {engine}: {len(silos)} silos "
             f"({', '.join(s.name for s in silos)}), {cfg.num_server_rounds} rounds")
    if deployment:
        run_deployment(silos, cfg.to_mapping(), run_dir / "flower", relay_progress(progress),
                       key_file=cfg.key_file, warm=warm_clientapps)
    else:
        run_simulation(cfg, len(silos), run_dir / "flower", relay_progress(progress))
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise SimulationError(f"the ServerApp did not finish; see {run_dir / 'flower' / 'flower.log'}")
    metrics: dict[str, Any] = json.loads(metrics_path.read_text())
    federated_seconds = time.perf_counter() - started

    if oracle and cfg.model == "recommender":
        progress("centralized oracle and most-popular baseline (pooled data, simulation only)")
        _, catalog = load_recommender(run_dir / MODEL_FILE)
        splits = load_splits(silos)
        metrics["popularity"] = popularity_baseline(splits, catalog)
        metrics["oracle"] = recommender_oracle(splits, catalog, cfg)
    elif oracle:
        progress("centralized oracle (pooled data, simulation only)")
        metrics["oracle"] = centralized_oracle(load_all(silos, cfg), cfg)
    metrics["timing"] = {"federated_seconds": federated_seconds,
                         "total_seconds": time.perf_counter() - started}
    atomic_write_json(metrics_path, metrics)
    plot_metric_by_round(metrics, run_dir / plot_file(cfg.model), cfg.model)
    return TrainingResult(run_dir=run_dir, metrics=metrics,
                          seconds=time.perf_counter() - started)


TABLES: dict[str, tuple[tuple[str, str], str, tuple[tuple[str, str], ...]]] = {
    # model: ((metric 1, metric 2) per cell, legend, rows (metrics key, label))
    "propensity": (("auc", "log_loss"), "(each cell: test AUC / log-loss, out-of-time)",
                   (("federated", "federated (FedAvg)"), ("oracle", "centralized oracle"),
                    ("silo_alone", "each silo alone"))),
    "recommender": (("hr@10", "ndcg@10"),
                    "(each cell: HR@10 / NDCG@10 on each customer's held-out last basket)",
                    (("federated", "federated (FedAvg)"), ("oracle", "centralized oracle"),
                     ("popularity", "most popular"), ("silo_alone", "each silo alone"))),
}


def summary_table(metrics: dict[str, Any]) -> str:
    """Rows are models; columns are the overall and per-silo test metrics."""
    (first, second), legend, rows_spec = TABLES[metrics.get("model", "propensity")]
    rows = [(name, metrics.get(key)) for key, name in rows_spec]
    rows = [(name, m) for name, m in rows if m]
    silos = sorted(metrics["federated"]["silos"])

    def cell(values: dict[str, float] | None) -> str:
        if not values:
            return f"{'-':>15}"
        return f"{values[first]:>7.3f} /{values[second]:>6.3f}"

    head = f"{'model':<20} {'overall':>15} | " + " ".join(f"{s[:15]:>15}" for s in silos)
    lines = [head, "-" * len(head)]
    for name, m in rows:
        cells = " ".join(cell(m["silos"].get(s)) for s in silos)
        lines.append(f"{name:<20} {cell(m['overall'])} | {cells}")
    lines.append(legend)
    return "\n".join(lines)
