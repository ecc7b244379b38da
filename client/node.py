"""What every ClientApp handler needs from its node: which silo, the training knobs, DP state.

Shared by the propensity, recommender and segmentation handlers so that the
silo a node serves, the way a round's seed is derived and the way a silo's
privacy spend accumulates over rounds are decided in one place.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ConfigRecord, Context, Message, RecordDict

from fedprofile.config import ConfigError, TrainConfig
from fedprofile.models.dp import DPTrainStats, sample_rate, steps_per_epoch
from fedprofile.models.training import TrainParams
from fedprofile.privacy.accounting import AccountantState, MechanismStep, epsilon, noise_for_target
from fedprofile.privacy.keys import Secret
from fedprofile.privacy.psi import ELEMENT_SIZE

from .failures import SiloError
from .interactions import Interactions, load_interactions
from .silos import list_silos
from .store import STORE_FILENAME, SiloStore

DP_STATE = "dp-accountant"


def resolve_silo_dir(context: Context) -> Path:
    """The directory of the silo this node serves.

    In a deployment the SuperNode is started with ``--node-config
    "silo-dir='/data/flights'"``; in the Simulation Engine each virtual node's
    ``partition-id`` picks one silo under ``silos-dir``.
    """
    node = context.node_config
    if "silo-dir" in node:
        return Path(str(node["silo-dir"])).expanduser()
    if "partition-id" in node:
        cfg = TrainConfig.from_mapping(context.run_config)
        silos = list_silos(cfg.silos_path)
        partition, total = int(node["partition-id"]), int(node["num-partitions"])
        if total != len(silos):
            raise ConfigError(
                f"the federation has {total} SuperNodes but {cfg.silos_path} holds "
                f"{len(silos)} silos ({', '.join(s.name for s in silos)}); run with "
                f"--federation-config \"num-supernodes={len(silos)}\""
            )
        return silos[partition]
    raise ConfigError("this SuperNode has no silo: start it with --node-config \"silo-dir='...'\"")


def silo_and_stamp(context: Context) -> tuple[Path, tuple[tuple[int, int], ...]]:
    """The node's silo directory and a stamp that changes whenever its store does.

    The store files' times and sizes (the WAL too: a write may sit there until
    a checkpoint) key the per-process caches of features and histories, so a
    re-ingested silo is re-read while repeated rounds reuse what was computed.
    """
    if "partition-id" in context.node_config:
        # Simulation: the engine runs one ClientApp worker per core already;
        # more torch threads per worker only oversubscribe the CPU.
        torch.set_num_threads(1)
    silo_dir = resolve_silo_dir(context)
    SiloStore.open(silo_dir).close()  # checks it exists and is a store
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size)
                  for p in (silo_dir / STORE_FILENAME, silo_dir / f"{STORE_FILENAME}-wal")
                  if p.exists())
    return silo_dir, stamp


@functools.lru_cache(maxsize=16)
def _cached_interactions(silo_dir: str, stamp: tuple[tuple[int, int], ...]) -> Interactions:
    del stamp  # part of the cache key only
    with SiloStore.open(Path(silo_dir)) as store:
        return load_interactions(store)


def cached_interactions(silo_dir: Path, stamp: tuple[tuple[int, int], ...]) -> Interactions:
    """A silo's interactions, read once per store state and shared by every handler.

    The recommender, segmentation and regional handlers all start from the
    same interactions; one cache (keyed by :func:`silo_and_stamp`'s stamp)
    reads them once per process instead of once per job kind.
    """
    return _cached_interactions(str(silo_dir), stamp)


def silo_interactions(context: Context) -> Interactions:
    """This node's silo's interactions (cached while the store is unchanged)."""
    silo_dir, stamp = silo_and_stamp(context)
    return cached_interactions(silo_dir, stamp)


def train_params(config: ConfigRecord, epochs_key: str = "local-epochs") -> TrainParams:
    """The round's training knobs; the seed moves with the round so rounds differ."""
    return TrainParams(
        epochs=int(config[epochs_key]),
        batch_size=int(config["batch-size"]),
        learning_rate=float(config["learning-rate"]),
        seed=int(config["seed"]) + int(config.get("server-round", 0)),
    )


@dataclass(frozen=True)
class DPPlan:
    """The DP-SGD mechanism a silo runs each round (the same for every round)."""

    name: str
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    delta: float
    customers: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_round * self.rounds

    rounds: int = 1


def checked_delta(name: str, customers: int, config: Mapping[str, Any]) -> float:
    """The run's delta, refused unless below 1/N for this silo's N customers."""
    if customers < 1:
        raise SiloError(f"silo {name} has no customers to take part")
    delta = float(config["dp-delta"])
    if delta >= 1.0 / customers:
        raise SiloError(f"dp-delta {delta:g} is not below 1/N = {1.0 / customers:.2e} for silo "
                         f"{name} ({customers} customers): a delta that large allows leaking a "
                         "whole customer with that probability; lower it")
    return delta


def gaussian_plan(name: str, customers: int, config: Mapping[str, Any], releases: int,
                  noise_for_target: Callable[[float, float], float]) -> DPPlan:
    """A Gaussian mechanism over the whole silo (sample rate 1), ``releases`` times.

    The noise is ``dp-noise-multiplier``, or, with ``dp-target-epsilon`` set,
    ``noise_for_target(target, delta)`` (the job knows its own composition).
    """
    delta = checked_delta(name, customers, config)
    sigma = float(config["dp-noise-multiplier"])
    target = float(config["dp-target-epsilon"])
    if target > 0:
        sigma = noise_for_target(target, delta)
    return DPPlan(name, sigma, 1.0, releases, delta, customers, 1)


def dp_sgd_plan(name: str, customers: int, config: ConfigRecord) -> DPPlan:
    """Plan DP-SGD over ``customers`` training examples (one per customer)."""
    n = customers
    delta = checked_delta(name, n, config)
    batch = int(config["batch-size"])
    q = sample_rate(batch, n)
    steps_per_round = int(config["local-epochs"]) * steps_per_epoch(batch, n)
    rounds = int(config["num-server-rounds"])
    sigma = float(config["dp-noise-multiplier"])
    target = float(config["dp-target-epsilon"])
    if target > 0:
        sigma = noise_for_target(target, delta, q, steps_per_round * rounds)
    return DPPlan(name, sigma, q, steps_per_round, delta, n, rounds)


def plan_reply(plan: DPPlan, msg: Message, mechanism: str = "dp-sgd",
               clip_norm: float | None = None) -> Message:
    """The ``dp_plan`` answer: what the whole run would cost this silo, before it starts."""
    total = [MechanismStep(plan.noise_multiplier, plan.sample_rate, plan.total_steps)]
    eps = {acc: epsilon(total, plan.delta, acc) for acc in ("rdp", "prv")}
    record = ConfigRecord({"name": plan.name, "customers": plan.customers,
                           "mechanism": mechanism,
                           "noise-multiplier": plan.noise_multiplier,
                           "sample-rate": plan.sample_rate, "steps": plan.total_steps,
                           "delta": plan.delta, "epsilon-rdp": eps["rdp"],
                           "epsilon-prv": eps["prv"]})
    if clip_norm is not None:
        record["clip-norm"] = clip_norm
    return Message(content=RecordDict({"plan": record}), reply_to=msg)


def record_dp_step(context: Context, plan: DPPlan, sample_rate_run: float, steps: int,
                   clip_norm: float) -> dict[str, float]:
    """Add one round's mechanism to the node's accountant history; the cumulative spend.

    The history lives in this node's context state, which Flower keeps between
    the rounds of a run: it makes the epsilon cumulative over rounds (the
    ledger makes it cumulative over runs).
    """
    state = (AccountantState.from_dict(json.loads(str(context.state[DP_STATE]["json"])))
             if DP_STATE in context.state else AccountantState())
    state.append(MechanismStep(noise_multiplier=plan.noise_multiplier,
                               sample_rate=sample_rate_run, steps=steps))
    context.state[DP_STATE] = ConfigRecord({"json": json.dumps(state.to_dict())})
    return {
        "dp-epsilon-rdp": epsilon(state.history, plan.delta, "rdp"),
        "dp-epsilon-prv": epsilon(state.history, plan.delta, "prv"),
        "dp-delta": plan.delta,
        "dp-noise-multiplier": plan.noise_multiplier,
        "dp-sample-rate": sample_rate_run,
        "dp-steps": float(state.total_steps),
        "dp-round-steps": float(steps),
        "dp-clip-norm": clip_norm,
    }


def dp_round(plan: DPPlan, config: ConfigRecord, context: Context,
             run: Callable[[float, float], DPTrainStats]) -> tuple[DPTrainStats, dict[str, float]]:
    """Run one round of DP-SGD (``run(noise_multiplier, clip_norm)``) and account for it."""
    clip = float(config["dp-clip-norm"])
    stats = run(plan.noise_multiplier, clip)
    return stats, record_dp_step(context, plan, stats.sample_rate, stats.steps, clip)


def to_array(values: list[bytes]) -> Array:
    """Blinded 32-byte values as one uint8 array: compact on the wire, order kept."""
    flat = np.frombuffer(b"".join(values), dtype=np.uint8)
    return Array(flat.reshape(-1, ELEMENT_SIZE).copy())


def from_array(array: Array) -> list[bytes]:
    data = array.numpy()
    if data.ndim != 2 or data.shape[1] != ELEMENT_SIZE or data.dtype != np.uint8:
        raise SiloError(f"expected blinded values as uint8[n, {ELEMENT_SIZE}], got "
                         f"{data.dtype}{list(data.shape)}")
    return [row.tobytes() for row in data]


def silo_secret(context: Context) -> Secret:
    """The silo's secret: node config ``key-file``, else run config (simulation), else env."""
    for source in (context.node_config, context.run_config):
        value = source.get("key-file")
        if value:
            return Secret.from_key_file(Path(str(value)).expanduser())
    return Secret.from_env()
