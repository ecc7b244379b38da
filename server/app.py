"""The ServerApp: coordinates federated training of the propensity model.

The server holds no customer data. It sends the global weights out, averages
what comes back (FedAvg, weighted by each silo's number of customers), and
collects evaluation aggregates. At the end it asks every silo for its
silo-alone baseline, so the federation's benefit is visible per line, and writes
the model, its config and its metrics to the run directory.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from pathlib import Path
from logging import INFO, WARNING

import torch
from torch import nn
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

from fedprofile import __version__
from fedprofile.client.features import FEATURE_NAMES, N_FEATURES
from fedprofile.config import TrainConfig
from fedprofile.privacy.accounting import MechanismStep
from fedprofile.files import atomic_write_bytes, atomic_write_json
from fedprofile.models.propensity import build_model
from fedprofile.models.recommender import RecommenderModel
from fedprofile.simulations.plots import plot_file, plot_metric_by_round

from .evaluation import BINARY, RANKING, Evaluator
from .recommend import collect_catalog
from .budget import charged, charged_server_dp, mechanism_spent
from .joint import run_joint
from .psi import run_psi
from .regional import run_regional
from .segment import run_segmentation
from .strategy import SiloFedAvg

app = ServerApp()

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"


def client_config(cfg: TrainConfig) -> ConfigRecord:
    """The part of the config every silo needs; no paths, no secrets."""
    return ConfigRecord(
        {
            "local-epochs": cfg.local_epochs,
            "total-epochs": cfg.local_epochs * cfg.num_server_rounds,
            "batch-size": cfg.batch_size,
            "learning-rate": cfg.learning_rate,
            "hidden-units": cfg.hidden_units,
            "horizon-days": cfg.horizon_days,
            "as-of": cfg.as_of,
            "seed": cfg.seed,
            "num-server-rounds": cfg.num_server_rounds,
            "dp": cfg.dp,
            "dp-noise-multiplier": cfg.dp_noise_multiplier,
            "dp-target-epsilon": cfg.dp_target_epsilon,
            "dp-clip-norm": cfg.dp_clip_norm,
            "dp-delta": cfg.dp_delta,
        }
    )


def run_silo_alone(grid: Grid, arrays: ArrayRecord, config: ConfigRecord,
                   timeout: float, evaluator: Evaluator = BINARY) -> dict[str, object]:
    """Ask every silo to train the same model on its own data only and report."""
    messages = [
        Message(content=RecordDict({"arrays": arrays, "config": config}),
                message_type="train.silo_alone", dst_node_id=node_id)
        for node_id in grid.get_node_ids()
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    ok = [r for r in replies if not r.has_error()]
    for r in replies:
        if r.has_error():
            log(WARNING, "fedprofile: a silo failed its silo-alone baseline: %s",
                r.error.reason)
    return evaluator.summarise([r.content for r in ok]) if ok else {}


PSI_FILE = "psi.json"


def spent_by_silo(strategy: SiloFedAvg, delta: float,
                  in_flight: Mapping[str, tuple[MechanismStep, float]] | None = None
                  ) -> dict[str, dict[str, float]]:
    """What each silo spent, composed by the server over the rounds it trained in.

    A silo reports the mechanism it ran in each round it trained (noise,
    sample rate, that round's steps); the server composes them itself. It does
    not rest on the silo's own running total, which lives in the SuperNode's
    state and starts again from zero if the SuperNode restarts mid-run.

    ``in_flight`` (silo: its planned per-round step and clip norm) adds one
    round for a run that ended while training replies were awaited: a silo may
    have trained and released that round without the server hearing of it.
    """
    rounds: dict[str, list[MechanismStep]] = {}
    clip: dict[str, float] = {}
    for record in strategy.history:
        for silo, reported in record.privacy.items():
            rounds.setdefault(silo, []).append(MechanismStep(
                float(reported["noise-multiplier"]), float(reported["sample-rate"]),
                int(reported["round-steps"])))
            clip[silo] = float(reported["clip-norm"])
    for silo, (step, clip_norm) in (in_flight or {}).items():
        rounds.setdefault(silo, []).append(step)
        clip.setdefault(silo, clip_norm)
    return {silo: mechanism_spent(history, delta, clip[silo]) for silo, history in rounds.items()}


def privacy_summary(cfg: TrainConfig, strategy: SiloFedAvg) -> dict[str, object]:
    """What the run cost each silo in privacy (cumulative over the rounds it trained in)."""
    server = ({"mechanism": "dp-fedavg-server (Flower's server-side fixed clipping)",
               "privacy_unit": "silo (a whole silo's update)",
               "noise_multiplier": cfg.server_dp_noise_multiplier,
               "clip_norm": cfg.server_dp_clip_norm} if cfg.server_dp else None)
    if not cfg.dp:
        return {"dp": False, "server_dp": server,
                "note": "no customer-level DP-SGD in the silos"}
    return {"dp": True, "server_dp": server, "mechanism": "dp-sgd (Opacus, Poisson sampling)",
            "privacy_unit": "customer (one training example per customer per silo)",
            "purpose": cfg.effective_purpose, "delta": cfg.dp_delta,
            "silos": spent_by_silo(strategy, cfg.dp_delta)}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the job the run config names: training (default), PSI, segmentation, regional or joint."""
    cfg = TrainConfig.from_mapping(context.run_config)
    run_dir = cfg.run_path(f"flwr-{context.run_id}")
    if cfg.job == "psi":
        result = run_psi(grid, cfg)
        atomic_write_json(run_dir / PSI_FILE, {"flower_run_id": context.run_id, **result})
        return
    if cfg.job == "segment":
        run_segmentation(grid, str(context.run_id), cfg, run_dir)
        return
    if cfg.job == "regional":
        run_regional(grid, str(context.run_id), cfg, run_dir)
        return
    if cfg.job == "joint":
        run_joint(grid, str(context.run_id), cfg, run_dir)
        return
    train(grid, context, cfg, run_dir)


@dataclass
class ModelKind:
    """What differs between the models ``job = "train"`` can train; the loop is shared."""

    title: str
    model: nn.Module
    config: ConfigRecord
    evaluator: Evaluator
    saved: dict[str, Any]  # stored with the weights in model.pt
    described: dict[str, Any]  # what metrics.json says about the model


def propensity_kind(cfg: TrainConfig) -> ModelKind:
    return ModelKind(
        title="propensity", model=build_model(N_FEATURES, hidden=cfg.hidden_units, seed=cfg.seed),
        config=client_config(cfg), evaluator=BINARY,
        saved={"hidden_units": cfg.hidden_units, "feature_names": list(FEATURE_NAMES)},
        described={"hidden_units": cfg.hidden_units, "feature_names": list(FEATURE_NAMES)})


def recommender_kind(grid: Grid, cfg: TrainConfig) -> ModelKind:
    catalog = collect_catalog(grid, cfg)
    torch.manual_seed(cfg.seed)
    config = client_config(cfg)
    config.update({"model": "recommender", "rec-dim": cfg.rec_dim, "catalog": list(catalog.items)})
    return ModelKind(
        title="recommender", model=RecommenderModel(len(catalog), dim=cfg.rec_dim),
        config=config, evaluator=RANKING,
        saved={"rec_dim": cfg.rec_dim, "catalog": list(catalog.items)},
        described={"rec_dim": cfg.rec_dim, "catalog_items": len(catalog)})


def train(grid: Grid, context: Context, cfg: TrainConfig, run_dir: Path) -> None:
    """Federated training of the configured model, then silo-alone baselines."""
    started = time.perf_counter()
    kind = recommender_kind(grid, cfg) if cfg.model == "recommender" else propensity_kind(cfg)
    log(INFO, "fedprofile: federated %s training, %d rounds, results in %s", kind.title,
        cfg.num_server_rounds, run_dir)
    model = kind.model
    initial = ArrayRecord(model.state_dict())
    strategy = SiloFedAvg(
        evaluator=kind.evaluator,
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=cfg.min_silos,
        min_evaluate_nodes=cfg.min_silos,
        min_available_nodes=cfg.min_silos,
        # Server-side DP's noise scale assumes a uniform average of the clipped updates.
        weighted_by_key="silo-weight" if cfg.server_dp else "num-examples",
    )
    runner: Strategy = strategy
    config = kind.config
    with ExitStack() as stack:
        budget = (stack.enter_context(charged(grid, cfg, config, str(context.run_id), run_dir.name))
                  if cfg.dp else None)
        server_dp = None
        if cfg.server_dp:
            n_silos = len(list(grid.get_node_ids()))
            server_dp = stack.enter_context(
                charged_server_dp(cfg, str(context.run_id), run_dir.name, n_silos))
            runner = DifferentialPrivacyServerSideFixedClipping(
                strategy, cfg.server_dp_noise_multiplier, cfg.server_dp_clip_norm, n_silos)
        try:
            result = runner.start(
                grid=grid,
                initial_arrays=initial,
                num_rounds=cfg.num_server_rounds,
                timeout=cfg.round_timeout,
                train_config=config,
                evaluate_config=config,
            )
        finally:
            # A run cut off while training replies were awaited (the SuperLink stopped, the
            # ServerApp was interrupted) charges that round too: it may have been released.
            cut_off = bool(strategy.history) and not strategy.history[-1].train_aggregated
            if server_dp is not None:
                server_dp["rounds"] = sum(1 for r in strategy.history if r.trained)
            if budget is not None:  # charge what each silo actually spent
                budget.spent = spent_by_silo(  # type: ignore[assignment]
                    strategy, cfg.dp_delta,
                    budget.planned_round(cfg.num_server_rounds) if cut_off else None)
    if not strategy.history or not strategy.history[-1].evaluation:
        raise RuntimeError("federated training produced no evaluation: see the log above")

    alone: dict[str, object] = {}
    if cfg.silo_alone and cfg.dp:
        # A baseline is a model trained on customer data too: with DP on, it would
        # spend budget; fedprofile does not spend budget silently on a comparison.
        log(INFO, "fedprofile: silo-alone baselines skipped (DP is on)")
    elif cfg.silo_alone:
        log(INFO, "fedprofile: training silo-alone baselines")
        alone = run_silo_alone(grid, initial, config, cfg.round_timeout, kind.evaluator)

    model.load_state_dict(result.arrays.to_torch_state_dict())
    buffer = io.BytesIO()
    torch.save({"model": cfg.model, "state_dict": model.state_dict(), **kind.saved,
                "config": cfg.to_mapping(), "fedprofile_version": __version__}, buffer)
    atomic_write_bytes(run_dir / MODEL_FILE, buffer.getvalue())
    metrics = {
        "flower_run_id": context.run_id,
        "model": cfg.model,
        "config": cfg.to_mapping(),
        **kind.described,
        "rounds": [
            {"round": r.round, "seconds": r.seconds, "trained": r.trained,
             "train_loss": r.train_loss, "samples_per_second": r.samples_per_second,
             "failures": r.failures, "missing": r.missing, "failed": r.failed,
             "errors": r.errors,
             **r.evaluation}
            for r in strategy.history
        ],
        "federated": strategy.history[-1].evaluation,
        "privacy": privacy_summary(cfg, strategy),
        "silo_alone": alone,
        "seconds": time.perf_counter() - started,
    }
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    plot_metric_by_round(metrics, run_dir / plot_file(cfg.model), cfg.model)
    log(INFO, "fedprofile: done in %.1fs; model and metrics in %s",
        time.perf_counter() - started, run_dir)
