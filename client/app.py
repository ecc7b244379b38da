"""The ClientApp a business-line silo runs: it trains and evaluates on its own store.

What leaves the silo, per message, is exactly: model weights, example counts,
a mean training loss, and evaluation aggregates (AUC, log-loss, and counts of
positives/negatives per score bin). No customer id, feature row or label does.

Which silo a ClientApp serves comes from its node: in a deployment the SuperNode
is started with ``--node-config "silo-dir='/data/flights'"``; in the Simulation
Engine each virtual node's ``partition-id`` picks one silo under ``silos-dir``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from logging import INFO
from pathlib import Path

import numpy as np
import torch
from flwr.app import (Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord,
                      RecordDict)
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from fedprofile.config import ConfigError, TrainConfig
from fedprofile.models.dp import (DPParams, DPTrainStats, sample_rate, steps_per_epoch,
                                  train_local_dp)
from fedprofile.models.metrics import BinaryEvaluation
from fedprofile.models.propensity import build_model
from fedprofile.models.training import TrainParams, predict_proba, train_local

from fedprofile.privacy.accounting import AccountantState, MechanismStep, epsilon, noise_for_target
from fedprofile.privacy.keys import Secret
from fedprofile.privacy.leak_guard import leak_guard_mod
from fedprofile.privacy.psi import ELEMENT_SIZE, PsiReceiver, PsiSender
from fedprofile.privacy.silo_keys import read_identity_key

from .audiences import audience_counts, cross_sell_audience, psi_elements, save_audience
from .features import N_FEATURES, SiloData, load_silo_data
from .silos import list_silos
from .store import STORE_FILENAME, SiloStore

# The leak guard inspects every reply before it leaves, when the run asks for it.
app = ClientApp(mods=[leak_guard_mod])


def resolve_silo_dir(context: Context) -> Path:
    """The directory of the silo this node serves (see module docstring)."""
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


@functools.lru_cache(maxsize=16)
def _cached_data(silo_dir: str, stamp: tuple[tuple[int, int], ...], horizon_days: int,
                 as_of: str) -> SiloData:
    # Keyed by the store's modification time so a re-ingested silo is re-read,
    # while repeated rounds in one process reuse the features. In simulation one
    # Ray worker serves several virtual nodes, hence room for several silos.
    del stamp
    with SiloStore.open(Path(silo_dir)) as store:
        return load_silo_data(store, horizon_days=horizon_days, as_of=as_of)


def silo_data(context: Context, horizon_days: int, as_of: str) -> SiloData:
    if "partition-id" in context.node_config:
        # Simulation: the engine runs one ClientApp worker per core already;
        # more torch threads per worker only oversubscribe the CPU.
        torch.set_num_threads(1)
    silo_dir = resolve_silo_dir(context)
    store = SiloStore.open(silo_dir)  # checks it exists and is a store
    store.close()
    # The store's files' times and sizes (the WAL too: a write may sit there
    # until a checkpoint) tell whether the cached features are still current.
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size)
                  for p in (silo_dir / STORE_FILENAME, silo_dir / f"{STORE_FILENAME}-wal")
                  if p.exists())
    data = _cached_data(str(silo_dir), stamp, horizon_days, as_of)
    if len(data.train) == 0 or len(data.test) == 0:
        raise ValueError(f"silo {data.name} has no customers to train or test on "
                         f"(train {len(data.train)}, test {len(data.test)})")
    return data


def _params(config: ConfigRecord, epochs_key: str = "local-epochs") -> TrainParams:
    return TrainParams(
        epochs=int(config[epochs_key]),
        batch_size=int(config["batch-size"]),
        learning_rate=float(config["learning-rate"]),
        seed=int(config["seed"]) + int(config.get("server-round", 0)),
    )


def _model_from(msg: Message):
    config = msg.content["config"]
    model = build_model(N_FEATURES, hidden=int(config["hidden-units"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model, config


def evaluation_record(evaluation: BinaryEvaluation) -> MetricRecord:
    """The evaluation aggregates a silo may share."""
    return MetricRecord(
        {
            "num-examples": evaluation.examples,
            "silo-weight": 1.0,  # the strategy's weight key under server-side DP
            "positives": evaluation.positives,
            "auc": evaluation.auc,
            "log-loss": evaluation.log_loss,
            "log-loss-sum": evaluation.log_loss_sum,
            "pos-hist": [int(v) for v in evaluation.pos_hist],
            "neg-hist": [int(v) for v in evaluation.neg_hist],
        }
    )


DP_STATE = "dp-accountant"


@dataclass(frozen=True)
class _DPPlan:
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    delta: float
    customers: int


def _dp_plan(data: SiloData, config: ConfigRecord) -> _DPPlan:
    """The mechanism this silo will run each round (the same for every round)."""
    n = len(data.train)
    delta = float(config["dp-delta"])
    if delta >= 1.0 / n:
        raise ValueError(f"dp-delta {delta:g} is not below 1/N = {1.0 / n:.2e} for silo "
                         f"{data.name} ({n} customers): a delta that large allows leaking a "
                         "whole customer with that probability; lower it")
    batch = int(config["batch-size"])
    q = sample_rate(batch, n)
    steps_per_round = int(config["local-epochs"]) * steps_per_epoch(batch, n)
    sigma = float(config["dp-noise-multiplier"])
    target = float(config["dp-target-epsilon"])
    if target > 0:
        sigma = noise_for_target(target, delta, q,
                                 steps_per_round * int(config["num-server-rounds"]))
    return _DPPlan(sigma, q, steps_per_round, delta, n)


def _dp_round(model, data: SiloData, config: ConfigRecord, context: Context
              ) -> tuple[DPTrainStats, dict[str, float]]:
    """One round of DP-SGD; the accountant's history lives in this node's state.

    The history (one mechanism step per round) makes the epsilon cumulative
    over the rounds of the run; the ledger makes it cumulative over runs.
    """
    plan = _dp_plan(data, config)
    state = (AccountantState.from_dict(json.loads(str(context.state[DP_STATE]["json"])))
             if DP_STATE in context.state else AccountantState())
    stats = train_local_dp(model, data.train.x, data.train.y, _params(config),
                           DPParams(noise_multiplier=plan.noise_multiplier,
                                    clip_norm=float(config["dp-clip-norm"])))
    state.append(MechanismStep(noise_multiplier=plan.noise_multiplier,
                               sample_rate=stats.sample_rate, steps=stats.steps))
    context.state[DP_STATE] = ConfigRecord({"json": json.dumps(state.to_dict())})
    return stats, {
        "dp-epsilon-rdp": epsilon(state.history, plan.delta, "rdp"),
        "dp-epsilon-prv": epsilon(state.history, plan.delta, "prv"),
        "dp-delta": plan.delta,
        "dp-noise-multiplier": plan.noise_multiplier,
        "dp-sample-rate": stats.sample_rate,
        "dp-steps": float(state.total_steps),
        "dp-clip-norm": float(config["dp-clip-norm"]),
    }


@app.query("dp_plan")
def dp_plan(msg: Message, context: Context) -> Message:
    """Before training: the epsilon this silo would spend over the whole run.

    The server reserves it in the privacy-budget ledger (or refuses the run)
    before any training starts.
    """
    config = msg.content["config"]
    data = silo_data(context, int(config["horizon-days"]), str(config["as-of"]))
    plan = _dp_plan(data, config)
    total = [MechanismStep(plan.noise_multiplier, plan.sample_rate,
                           plan.steps_per_round * int(config["num-server-rounds"]))]
    eps = {acc: epsilon(total, plan.delta, acc) for acc in ("rdp", "prv")}
    record = ConfigRecord({"name": data.name, "customers": plan.customers,
                           "noise-multiplier": plan.noise_multiplier,
                           "sample-rate": plan.sample_rate,
                           "steps": plan.steps_per_round * int(config["num-server-rounds"]),
                           "delta": plan.delta, "epsilon-rdp": eps["rdp"],
                           "epsilon-prv": eps["prv"]})
    return Message(content=RecordDict({"plan": record}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One federated round: start from the global weights, train locally, send weights."""
    model, config = _model_from(msg)
    data = silo_data(context, int(config["horizon-days"]), str(config["as-of"]))
    privacy: dict[str, float] = {}
    if bool(config.get("dp", False)):
        stats, privacy = _dp_round(model, data, config, context)
    else:
        stats = train_local(model, data.train.x, data.train.y, _params(config))
    log(INFO, "silo %s: trained on %d customers (%.0f samples/s)%s", data.name,
        len(data.train), stats.samples_per_second,
        f", epsilon so far {privacy['dp-epsilon-rdp']:.2f} (RDP)" if privacy else "")
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord(
                {
                    "num-examples": len(data.train),
                    "silo-weight": 1.0,  # for uniform averaging (server-side DP)
                    "train-loss": stats.mean_loss,
                    "samples-per-second": stats.samples_per_second,
                    "train-seconds": stats.seconds,
                    **privacy,
                }
            ),
            "silo": ConfigRecord({"name": data.name}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the global model on this silo's out-of-time test snapshot."""
    model, config = _model_from(msg)
    data = silo_data(context, int(config["horizon-days"]), str(config["as-of"]))
    evaluation = BinaryEvaluation.of(data.test.y, predict_proba(model, data.test.x))
    content = RecordDict(
        {"metrics": evaluation_record(evaluation), "silo": ConfigRecord({"name": data.name})}
    )
    return Message(content=content, reply_to=msg)


@app.train("silo_alone")
def silo_alone(msg: Message, context: Context) -> Message:
    """Baseline: the same model trained on this silo's data only, never shared.

    It answers "what would this line get without the federation?" and runs
    inside the silo, so it is as private as the federated run itself.
    """
    model, config = _model_from(msg)
    data = silo_data(context, int(config["horizon-days"]), str(config["as-of"]))
    train_local(model, data.train.x, data.train.y, _params(config, "total-epochs"))
    evaluation = BinaryEvaluation.of(data.test.y, predict_proba(model, data.test.x))
    content = RecordDict(
        {"metrics": evaluation_record(evaluation), "silo": ConfigRecord({"name": data.name})}
    )
    return Message(content=content, reply_to=msg)


# ---------------------------------------------------------------------------
# Private set intersection (see fedprofile.privacy.psi for the protocol)
# ---------------------------------------------------------------------------
def to_array(values: list[bytes]) -> Array:
    """Blinded 32-byte values as one uint8 array: compact on the wire, order kept."""
    flat = np.frombuffer(b"".join(values), dtype=np.uint8)
    return Array(flat.reshape(-1, ELEMENT_SIZE).copy())


def from_array(array: Array) -> list[bytes]:
    data = array.numpy()
    if data.ndim != 2 or data.shape[1] != ELEMENT_SIZE or data.dtype != np.uint8:
        raise ValueError(f"expected blinded values as uint8[n, {ELEMENT_SIZE}], got "
                         f"{data.dtype}{list(data.shape)}")
    return [row.tobytes() for row in data]


def silo_secret(context: Context) -> Secret:
    """The silo's secret: node config ``key-file``, else run config (simulation), else env."""
    for source in (context.node_config, context.run_config):
        value = source.get("key-file")
        if value:
            return Secret.from_key_file(Path(str(value)).expanduser())
    return Secret.from_env()


def _psi_context(config: ConfigRecord) -> bytes:
    return f"{config['key-domain']}|v{config['key-version']}|{config['session']}".encode()


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """Which silo this node serves and which key domain/version its pseudonyms use."""
    with SiloStore.open(resolve_silo_dir(context)) as store:
        meta = store.meta()
    record = ConfigRecord({"name": meta["name"], "key-domain": meta.get("key_domain", ""),
                           "key-version": int(meta.get("key_version", 0))})
    return Message(content=RecordDict({"silo": record}), reply_to=msg)


@app.query("psi_request")
def psi_request(msg: Message, context: Context) -> Message:
    """Receiver, step 1: blind our selected elements; keep the session in node state.

    The session scalar and element order are kept only in this SuperNode's own
    context state (never sent), because the finishing message may be handled
    by another worker process.
    """
    config = msg.content["config"]
    with SiloStore.open(resolve_silo_dir(context)) as store:
        elements = psi_elements(store, str(config["selection"]))
    receiver = PsiReceiver(elements, _psi_context(config),
                           cardinality_only=config["mode"] == "cardinality")
    blinded = receiver.request()
    context.state[f"psi-{config['session']}"] = ConfigRecord(receiver.suspend())
    return Message(content=RecordDict({"blinded": ArrayRecord({"a": to_array(blinded)})}),
                   reply_to=msg)


@app.query("psi_respond")
def psi_respond(msg: Message, context: Context) -> Message:
    """Sender, step 2: blind our elements and re-blind the receiver's; learn only |X|."""
    config = msg.content["config"]
    with SiloStore.open(resolve_silo_dir(context)) as store:
        elements = psi_elements(store, str(config["selection"]))
    sender = PsiSender(elements, _psi_context(config))
    b, ab = sender.respond(from_array(msg.content["blinded"]["a"]),
                           cardinality_only=config["mode"] == "cardinality")
    content = RecordDict({"blinded": ArrayRecord({"b": to_array(b), "ab": to_array(ab)})})
    return Message(content=content, reply_to=msg)


@app.query("psi_finish")
def psi_finish(msg: Message, context: Context) -> Message:
    """Receiver, step 3: match, and keep the result in the silo (sealed)."""
    config = msg.content["config"]
    state_key = f"psi-{config['session']}"
    if state_key not in context.state:
        raise ValueError(f"no PSI session {config['session']} on this node")
    receiver = PsiReceiver.resume(context.state[state_key], _psi_context(config))
    del context.state[state_key]
    blinded = msg.content["blinded"]
    result = receiver.finish(from_array(blinded["b"]), from_array(blinded["ab"]))
    silo_dir = resolve_silo_dir(context)
    with SiloStore.open(silo_dir) as store:
        opted_out, no_phone = audience_counts(store)
        members = (cross_sell_audience(store, result.intersection)
                   if result.intersection is not None else None)
    summary = {"selected": result.receiver_size, "matched_elsewhere": result.cardinality,
               "opted_out": opted_out, "no_phone": no_phone}
    key = read_identity_key(silo_dir, silo_secret(context)) if members is not None else None
    saved = save_audience(silo_dir, str(config["audience"]), str(config["session"]), members,
                          key, summary)
    # No counts in the log: in a simulation, ClientApp logs reach the run's log stream.
    log(INFO, "silo %s: PSI done; audience %s saved in the silo", silo_dir.name, saved.name)
    # Only an acknowledgement goes back: the server learns set sizes, never the overlap.
    return Message(content=RecordDict({"status": ConfigRecord({"done": True})}), reply_to=msg)
