"""The ClientApp a business-line silo runs: it trains and evaluates on its own store.

What leaves the silo, per message, is exactly: model weights, example counts,
a mean training loss, and evaluation aggregates (AUC, log-loss, and counts of
positives/negatives per score bin; for the recommender, metric sums). No
customer id, feature row or label does. The recommender's, the
segmentation's and the regional recommendation's handlers live in
:mod:`.recommending`, :mod:`.segmenting` and :mod:`.regional`; this module
routes messages to them.

Which silo a ClientApp serves comes from its node: in a deployment the SuperNode
is started with ``--node-config "silo-dir='/data/flights'"``; in the Simulation
Engine each virtual node's ``partition-id`` picks one silo under ``silos-dir``.
"""

from __future__ import annotations

import functools
from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from fedprofile.models.dp import DPParams, train_local_dp
from fedprofile.models.metrics import BinaryEvaluation
from fedprofile.models.propensity import build_model
from fedprofile.models.training import predict_proba, train_local
from fedprofile.privacy.leak_guard import leak_guard_mod
from fedprofile.privacy.psi import PsiReceiver, PsiSender
from fedprofile.privacy.silo_keys import read_identity_key

from . import joint, recommending, regional, segmenting
from .audiences import audience_counts, cross_sell_audience, psi_elements, save_audience
from .failures import SiloError, silo_failure_mod
from .features import N_FEATURES, SiloData, load_silo_data
from .node import (dp_round, dp_sgd_plan, from_array, plan_reply, resolve_silo_dir,
                   silo_and_stamp, silo_secret, to_array, train_params)
from .store import SiloStore

# A failure names its silo and keeps library messages at home (outermost, so it
# also covers the leak guard); the leak guard inspects every reply before it
# leaves, when the run asks for it.
app = ClientApp(mods=[silo_failure_mod, leak_guard_mod])


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
    """The propensity features of this node's silo (cached while the store is unchanged)."""
    silo_dir, stamp = silo_and_stamp(context)
    data = _cached_data(str(silo_dir), stamp, horizon_days, as_of)
    if len(data.train) == 0 or len(data.test) == 0:
        raise SiloError(f"silo {data.name} has no customers to train or test on "
                         f"(train {len(data.train)}, test {len(data.test)})")
    return data


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


@app.query("dp_plan")
def dp_plan(msg: Message, context: Context) -> Message:
    """Before training: the epsilon this silo would spend over the whole run.

    The server reserves it in the privacy-budget ledger (or refuses the run)
    before any training starts.
    """
    config = msg.content["config"]
    if config.get("job") == "segment":
        return plan_reply(segmenting.plan(config, context), msg, "gaussian-kmeans",
                          segmenting.CLIP_NORM)
    if config.get("job") == "regional":
        return plan_reply(regional.plan(config, context), msg, regional.MECHANISM,
                          regional.sensitivity(int(config["regional-max-items"])))
    if config.get("job") == "joint":
        joint_plan, mechanism = joint.plan(config, context)
        return plan_reply(joint_plan, msg, mechanism, float(config["joint-clip"]))
    if _is_recommender(config):
        return plan_reply(recommending.plan(config, context), msg)
    data = silo_data(context, int(config["horizon-days"]), str(config["as-of"]))
    return plan_reply(dp_sgd_plan(data.name, len(data.train), config), msg)


@app.query("segment_stats")
def segment_stats(msg: Message, context: Context) -> Message:
    """Federated segmentation: one noisy release of per-cluster sums and counts."""
    return segmenting.stats_reply(msg, context)


@app.query("regional_agree")
def regional_agree(msg: Message, context: Context) -> Message:
    """Regional recommendation: this silo's region names and item codes (no counts)."""
    return regional.agree_reply(msg, context)


@app.query("regional_counts")
def regional_counts(msg: Message, context: Context) -> Message:
    """Regional recommendation: the one noisy release of region x item counts."""
    return regional.counts_reply(msg, context)


def _is_recommender(config: ConfigRecord) -> bool:
    return config.get("model") == "recommender"


@app.query("rec_catalog")
def rec_catalog(msg: Message, context: Context) -> Message:
    """Recommender: this silo's catalogue proposal (item codes bought by enough customers)."""
    return recommending.catalog_reply(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One federated round: start from the global weights, train locally, send weights."""
    if _is_recommender(msg.content["config"]):
        return recommending.train(msg, context)
    model, config = _model_from(msg)
    data = silo_data(context, int(config["horizon-days"]), str(config["as-of"]))
    privacy: dict[str, float] = {}
    if bool(config.get("dp", False)):
        plan = dp_sgd_plan(data.name, len(data.train), config)
        stats, privacy = dp_round(plan, config, context, lambda sigma, clip: train_local_dp(
            model, data.train.x, data.train.y, train_params(config),
            DPParams(noise_multiplier=sigma, clip_norm=clip)))
    else:
        stats = train_local(model, data.train.x, data.train.y, train_params(config))
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
    if _is_recommender(msg.content["config"]):
        return recommending.evaluate(msg, context)
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
    if _is_recommender(msg.content["config"]):
        return recommending.silo_alone(msg, context)
    model, config = _model_from(msg)
    data = silo_data(context, int(config["horizon-days"]), str(config["as-of"]))
    train_local(model, data.train.x, data.train.y, train_params(config, "total-epochs"))
    evaluation = BinaryEvaluation.of(data.test.y, predict_proba(model, data.test.x))
    content = RecordDict(
        {"metrics": evaluation_record(evaluation), "silo": ConfigRecord({"name": data.name})}
    )
    return Message(content=content, reply_to=msg)


# ---------------------------------------------------------------------------
# Private set intersection (see fedprofile.privacy.psi for the protocol)
# ---------------------------------------------------------------------------
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
        raise SiloError(f"no PSI session {config['session']} on this node")
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


# ---------------------------------------------------------------------------
# Vertical (split) learning (see fedprofile.client.joint)
# ---------------------------------------------------------------------------
@app.query("joint_align_request")
def joint_align_request(msg: Message, context: Context) -> Message:
    """Joint model, label silo: the PSI request of the alignment."""
    return joint.align_request(msg, context)


@app.query("joint_align_respond")
def joint_align_respond(msg: Message, context: Context) -> Message:
    """Joint model, feature silo: the PSI answer; the shuffle stays here."""
    return joint.align_respond(msg, context)


@app.query("joint_align_finish")
def joint_align_finish(msg: Message, context: Context) -> Message:
    """Joint model, label silo: the aligned rows, as positions in each feature silo's list."""
    return joint.align_finish(msg, context)


@app.query("joint_align_set")
def joint_align_set(msg: Message, context: Context) -> Message:
    """Joint model, feature silo: resolve the positions to its own customers."""
    return joint.align_set(msg, context)


@app.query("joint_embed")
def joint_embed(msg: Message, context: Context) -> Message:
    """Joint model, feature silo: update the bottom model, release embeddings."""
    return joint.embed(msg, context)


@app.query("joint_top")
def joint_top(msg: Message, context: Context) -> Message:
    """Joint model, label silo: a training round (label-DP gradients back) or the evaluation."""
    return joint.top_step(msg, context)


@app.query("joint_audience_embed")
def joint_audience_embed(msg: Message, context: Context) -> Message:
    """Joint model, feature silo: embeddings of a sealed audience, to be scored."""
    return joint.audience_embed(msg, context)


@app.query("joint_score")
def joint_score(msg: Message, context: Context) -> Message:
    """Joint model, label silo: scores for released embeddings of people it does not know."""
    return joint.score(msg, context)


@app.query("joint_audience_scores")
def joint_audience_scores(msg: Message, context: Context) -> Message:
    """Joint model, feature silo: keep its audience's scores, sealed."""
    return joint.audience_scores(msg, context)


@app.query("joint_forget")
def joint_forget(msg: Message, context: Context) -> Message:
    """Joint model: drop the session's state on this node."""
    return joint.forget(msg, context)
