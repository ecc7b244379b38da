"""A silo's side of vertical (split) learning on Flower: alignment, bottom or top model.

Roles, per run: one *label silo* (holds the labels, the top model and a bottom
model for its own block) and one or more *feature silos* (each a bottom model
over its own block). The protocol is :mod:`fedprofile.models.split_learning`'s;
this module runs its steps as message handlers and keeps each party's state in
the node's own ``context.state`` (Flower keeps it between messages; it never
leaves the node).

Alignment (who is row ``r``?) is a PSI with the label silo as receiver and
each feature silo as sender (:meth:`PsiSender.respond_ordered`,
:meth:`PsiReceiver.finish_positions`). The label silo keeps the customers
every feature silo also has, draws their row order from the OS CSPRNG and
tells each feature silo, through the server, the *position* of row ``r``'s
customer in that silo's own shuffled list. Only that silo, which kept its
shuffle, can resolve a position; the server sees positions and sizes. The
rows are the customers every party has, among those the label silo had by
the training snapshot (so train and test rows are the same and no per-row
list about the label silo crosses). What each party learns is what
intersection-mode PSI reveals: the label silo which of its customers the
feature silos have, each feature silo which of its customers are aligned
(customers of the label silo by the training snapshot), and the row count.

Opted-out customers (PIPL Art. 24) take no part: they are not in either side's
PSI elements, so they are in no row and no training; an audience member who
opted out since the audience was built is left out of scoring.

Per message, what leaves a silo: blinded PSI values; positions; clipped (and,
when configured, noised) embeddings of rows or of an audience; clipped and
noised gradients (label DP); from the label silo, aggregates over its labels
(the mean training loss of each round, the test AUCs and the test positive
rate) and the scores of an audience it does not know. No customer key,
pseudonym, feature row or label.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedprofile.models.metrics import roc_auc
from fedprofile.models.split_learning import (VerticalConfig, accounted_noise,
                                              embedding_gradients, entropy_generator, local_embeddings, new_bottom,
                                              new_optimizer, new_top, pack_party, predict_vertical,
                                              release_embeddings, release_gradients,
                                              train_top, train_vertical, unpack_party,
                                              update_bottom)
from fedprofile.privacy.psi import PsiReceiver, PsiSender, random_permutation

from .failures import SiloError
from .features import N_FEATURES, end_of_data, snapshot_all, snapshot_times
from .node import (DPPlan, checked_delta, from_array, resolve_silo_dir, silo_and_stamp,
                   silo_secret, to_array)
from .store import CustomerArrays, OrderArrays, SiloStore

GRADIENT_MECHANISM = "label-dp-gradients"
EMBEDDING_MECHANISM = "gaussian-embeddings"


def vertical_config(config: ConfigRecord | dict[str, Any]) -> VerticalConfig:
    """The protocol settings a joint run's config carries (the rest are the protocol defaults)."""
    clip = float(config["joint-clip"])
    return VerticalConfig(rounds=int(config["joint-rounds"]), clip_embedding=clip,
                          clip_gradient=clip,
                          noise_embedding=float(config["joint-noise-embedding"]),
                          noise_gradient=float(config["joint-noise-gradient"]),
                          delta=float(config["dp-delta"]), seed=int(config["seed"]),
                          label_block=0, remote_head=bool(config.get("joint-remote-head", False)))


def psi_context(config: ConfigRecord) -> bytes:
    return f"joint|{config['key-domain']}|v{config['key-version']}|{config['session']}".encode()


# ---------------------------------------------------------------------------
# the silo's data: every customer's block at the two snapshots


@dataclass(frozen=True)
class JointData:
    """A silo's features and labels for all its customers, and who may take part."""

    name: str
    index_of_phone: dict[bytes, int]  # opted-in customers with an unambiguous phone pseudonym
    x_train: np.ndarray
    y_train: np.ndarray
    eligible_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    customer_ids: np.ndarray  # pseudonymous customer keys, in the order of the rows above
    opted_out: np.ndarray  # marketing opt-out (PIPL Art. 24) now
    customers: CustomerArrays
    orders: OrderArrays
    end: int  # the end of the data
    horizon_days: int

    @functools.cached_property
    def x_now(self) -> np.ndarray:
        """Every customer's row at the end of the data: what scoring an audience uses."""
        return snapshot_all(self.customers, self.orders, self.end, self.horizon_days)[0]


@functools.lru_cache(maxsize=8)
def _cached(silo_dir: str, stamp: tuple[tuple[int, int], ...], horizon_days: int,
            as_of: str) -> JointData:
    del stamp  # part of the key only: a changed store is read again
    with SiloStore.open(Path(silo_dir)) as store:
        customers = store.customer_arrays()
        orders = store.order_arrays(customers)
        rows = store.execute("SELECT customer_key, phone_pn, marketing_opt_out FROM customers "
                             "WHERE phone_pn IS NOT NULL").fetchall()
        name = store.name
    position = {str(k): i for i, k in enumerate(customers.customer_ids)}
    seen: dict[str, int] = {}
    for _key, phone, _ in rows:
        seen[phone] = seen.get(phone, 0) + 1
    # A phone shared by two customers of one line cannot say which one is meant: left out.
    index = {phone.encode(): position[key] for key, phone, opt_out in rows
             if seen[phone] == 1 and not opt_out}
    end = end_of_data(orders, as_of)
    t_train, t_test = snapshot_times(end, horizon_days)
    x_tr, y_tr = snapshot_all(customers, orders, t_train, horizon_days)
    x_te, y_te = snapshot_all(customers, orders, t_test, horizon_days)
    return JointData(name, index, x_tr, y_tr, customers.signup_date < t_train,
                     x_te, y_te, customers.customer_ids,
                     customers.marketing_opt_out.astype(bool), customers, orders, end, horizon_days)


def joint_data(context: Context, config: ConfigRecord) -> JointData:
    silo_dir, stamp = silo_and_stamp(context)
    return _cached(str(silo_dir), stamp, int(config["joint-horizon-days"]), str(config["as-of"]))


def _state_key(kind: str, config: ConfigRecord) -> str:
    return f"joint-{kind}-{config['session']}"


def _take(context: Context, key: str) -> Any:
    if key not in context.state:
        raise SiloError(f"this node holds no {key.split('-')[1]} state for joint session "
                         f"{key.rsplit('-', 1)[-1][:8]}: the step that creates it did not run "
                         "here (or the node restarted)")
    return context.state[key]


def _ints(values: np.ndarray) -> Array:
    return Array(np.ascontiguousarray(values, dtype=np.int64))


def _floats(values: torch.Tensor | np.ndarray) -> Array:
    arr = values.numpy() if isinstance(values, torch.Tensor) else values
    return Array(np.ascontiguousarray(arr, dtype=np.float32))


def _rows(context: Context, config: ConfigRecord) -> np.ndarray:
    """The customer index (into this silo's arrays) of each aligned row, from node state."""
    return np.asarray(_take(context, _state_key("rows", config))["customers"], dtype=np.int64)


def _block(data: JointData, customers: np.ndarray, split: str) -> torch.Tensor:
    x = data.x_train if split == "train" else data.x_test
    return torch.from_numpy(np.ascontiguousarray(x[customers], dtype=np.float32))


# ---------------------------------------------------------------------------
# alignment


def _elements(data: JointData) -> list[bytes]:
    return list(data.index_of_phone)


def align_request(msg: Message, context: Context) -> Message:
    """Label silo, step 1: blind its opted-in customers' phone pseudonyms; keep the session."""
    config = msg.content["config"]
    data = joint_data(context, config)
    receiver = PsiReceiver(_elements(data), psi_context(config))
    blinded = receiver.request()
    context.state[_state_key("psi", config)] = ConfigRecord(receiver.suspend())
    return Message(content=RecordDict({"blinded": ArrayRecord({"a": to_array(blinded)})}),
                   reply_to=msg)


def align_respond(msg: Message, context: Context) -> Message:
    """Feature silo, step 2: answer the PSI and keep its shuffle (the key to the positions)."""
    config = msg.content["config"]
    data = joint_data(context, config)
    sender = PsiSender(_elements(data), psi_context(config))
    b, ab, order = sender.respond_ordered(from_array(msg.content["blinded"]["a"]))
    context.state[_state_key("psi", config)] = ConfigRecord({"order": order})
    return Message(content=RecordDict({"blinded": ArrayRecord({"b": to_array(b),
                                                               "ab": to_array(ab)})}),
                   reply_to=msg)


def align_finish(msg: Message, context: Context) -> Message:
    """Label silo, step 3: keep the customers every feature silo has; draw the row order.

    Replies, per feature silo, the position of each row's customer in that
    silo's shuffled list.
    """
    config = msg.content["config"]
    n_features = int(config["joint-n-features"])
    key = _state_key("psi", config)
    receiver = PsiReceiver.resume(_take(context, key), psi_context(config))
    del context.state[key]
    blinded = msg.content["blinded"]
    where = receiver.finish_positions([(from_array(blinded[f"b-{k}"]), from_array(blinded[f"ab-{k}"]))
                                       for k in range(n_features)])
    common = set(where[0]).intersection(*where[1:]) if where else set()
    data = joint_data(context, config)
    # Only customers the label silo had by the training snapshot: then every row
    # trains and tests, and no per-row fact about the label silo has to cross.
    eligible = sorted(p for p in common if data.eligible_train[data.index_of_phone[p]])
    phones = [eligible[i] for i in random_permutation(len(eligible))]
    customers = np.array([data.index_of_phone[p] for p in phones], dtype=np.int64)
    context.state[_state_key("rows", config)] = ConfigRecord({"customers": customers.tolist()})
    arrays = {f"pos-{k}": _ints(np.array([where[k][p] for p in phones], dtype=np.int64))
              for k in range(n_features)}
    return Message(content=RecordDict({"alignment": ArrayRecord(arrays)}), reply_to=msg)


def align_set(msg: Message, context: Context) -> Message:
    """Feature silo, step 4: resolve the positions to its own customers; keep the row list."""
    config = msg.content["config"]
    key = _state_key("psi", config)
    order = [bytes(v) for v in _take(context, key)["order"]]
    del context.state[key]
    alignment = msg.content["alignment"]
    positions = alignment["pos"].numpy().astype(np.int64)
    if len(positions) and (positions.min() < 0 or positions.max() >= len(order)):
        raise SiloError(f"alignment positions outside this silo's list of {len(order)}")
    if len(set(positions.tolist())) != len(positions):
        raise SiloError("alignment names one customer for two rows")
    data = joint_data(context, config)
    customers = np.array([data.index_of_phone[order[j]] for j in positions], dtype=np.int64)
    context.state[_state_key("rows", config)] = ConfigRecord({"customers": customers.tolist()})
    return Message(content=RecordDict({"rows": ConfigRecord({"rows": len(customers)})}),
                   reply_to=msg)


# ---------------------------------------------------------------------------
# privacy plan


def plan(config: ConfigRecord, context: Context) -> tuple[DPPlan, str]:
    """What this silo's releases cost its customers: label DP (label silo) or embedding DP.

    Replace-one neighbours (the rows are fixed by the alignment): the
    accounted noise multiplier is half the configured one. Feature silos
    release every train row once per round, the test rows once more, and an
    audience to score once more again (counted for everybody: conservative).
    """
    data = joint_data(context, config)
    n = len(_rows(context, config))
    delta = checked_delta(data.name, n, config)
    rounds = int(config["joint-rounds"])
    if data.name == str(config["joint-label-silo"]):
        sigma, releases, mechanism = float(config["joint-noise-gradient"]), rounds, GRADIENT_MECHANISM
    else:
        # Every round, the test rows, and an audience to score (counted as one more).
        releases = rounds + 1 + (1 if str(config.get("joint-audience", "")) else 0)
        sigma = float(config["joint-noise-embedding"])
        mechanism = EMBEDDING_MECHANISM
        if sigma <= 0:
            raise SiloError(f"silo {data.name} releases its embeddings without noise "
                             "(joint-noise-embedding = 0): there is no DP spend to plan")
    return DPPlan(data.name, accounted_noise(sigma), 1.0, releases, delta, n, 1), mechanism


# ---------------------------------------------------------------------------
# training and evaluation


def _party(context: Context, config: ConfigRecord, build: Any, create: bool = False
           ) -> tuple[Any, Any]:
    """This node's models and optimiser for the session; new ones only when ``create``.

    Only a session's first round creates them: later steps without them (a
    node that restarted, a step out of order) fail loudly instead of going on
    with an untrained model.
    """
    model, optimizer = build()
    key = _state_key("party", config)
    if key in context.state:
        unpack_party(bytes(context.state[key]["blob"]), model, optimizer)
    elif not create:
        _take(context, key)  # raises, naming the missing state
    return model, optimizer


def _save_party(context: Context, config: ConfigRecord, model: Any, optimizer: Any) -> None:
    context.state[_state_key("party", config)] = ConfigRecord({"blob": pack_party(model, optimizer)})


def _generator(config: ConfigRecord, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(config["seed"]) * 1_000_003 + salt)


def embed(msg: Message, context: Context) -> Message:
    """Feature silo: apply last round's released gradient (if any), then release embeddings."""
    config = msg.content["config"]
    cfg = vertical_config(config)
    data = joint_data(context, config)
    customers = _rows(context, config)
    x_train = _block(data, customers, "train")
    bottom, optimizer = _party(context, config, lambda: _new_bottom(x_train.shape[1], cfg),
                               create=int(config["joint-round"]) == 1)
    if "gradient" in msg.content:
        gradient = torch.from_numpy(msg.content["gradient"]["g"].numpy().astype(np.float32))
        if gradient.shape != (len(customers), cfg.embed_dim):
            raise SiloError(f"gradient of shape {tuple(gradient.shape)}, expected "
                             f"{(len(customers), cfg.embed_dim)}")
        update_bottom(bottom, optimizer, x_train, gradient, cfg,
                      _generator(config, int(config["joint-round"])))
    split = str(config["joint-split"])
    x = x_train if split == "train" else _block(data, customers, "test")
    released = release_embeddings(local_embeddings(bottom, x, cfg.clip_embedding),
                                  cfg.clip_embedding, cfg.noise_embedding, entropy_generator())
    _save_party(context, config, bottom, optimizer)
    return Message(content=RecordDict({"embeddings": ArrayRecord({"z": _floats(released)}),
                                       "silo": ConfigRecord({"name": data.name})}),
                   reply_to=msg)


def _new_bottom(in_dim: int, cfg: VerticalConfig) -> tuple[Any, Any]:
    # Initialised from OS entropy, not the run's seed: the server knows the seed, and
    # with clipped-only embeddings a known initial map would say more about the rows.
    bottom = new_bottom(in_dim, cfg, secrets.randbits(63))
    return bottom, new_optimizer(bottom.parameters(), cfg)


class _LabelParty(torch.nn.Module):
    """The label silo's trainable parts, one module so one optimiser state covers them."""

    def __init__(self, in_dim: int, n_blocks: int, cfg: VerticalConfig, seed: int) -> None:
        super().__init__()
        self.own = new_bottom(in_dim, cfg, seed + 1)
        self.top = new_top(n_blocks, cfg, seed)
        # For people the label silo does not know: a head on the released embeddings alone.
        self.remote = new_top(n_blocks - 1, cfg, seed + 2) if cfg.remote_head else None


def _received(msg: Message, n_features: int, rows: int, cfg: VerticalConfig) -> list[torch.Tensor]:
    out = []
    for k in range(n_features):
        z = torch.from_numpy(msg.content["embeddings"][f"z-{k}"].numpy().astype(np.float32))
        if z.shape != (rows, cfg.embed_dim):
            raise SiloError(f"embeddings of feature silo {k} have shape {tuple(z.shape)}, "
                             f"expected {(rows, cfg.embed_dim)}")
        if not torch.isfinite(z).all():
            raise SiloError(f"embeddings of feature silo {k} hold non-finite values")
        out.append(z)
    return out


def top_step(msg: Message, context: Context) -> Message:
    """Label silo: a training round (reply: label-DP gradients) or the test evaluation."""
    config = msg.content["config"]
    cfg = vertical_config(config)
    n_features = int(config["joint-n-features"])
    data = joint_data(context, config)
    customers = _rows(context, config)
    own_train = _block(data, customers, "train")
    y_train = torch.from_numpy(data.y_train[customers].astype(np.float32))

    def build() -> tuple[Any, Any]:
        party = _LabelParty(own_train.shape[1], 1 + n_features, cfg, int(config["seed"]))
        return party, new_optimizer(party.parameters(), cfg)

    party, optimizer = _party(context, config, build, create=int(config["joint-round"]) == 1)
    split = str(config["joint-split"])
    if split == "train":
        received = _received(msg, n_features, len(customers), cfg)
        loss = train_top(party.top, optimizer, received, y_train, cfg,
                         _generator(config, 10_000 + int(config["joint-round"])),
                         party.own, own_train, party.remote)
        grads = release_gradients(embedding_gradients(party.top, received, y_train, party.own,
                                                      own_train, party.remote),
                                  cfg.clip_gradient, cfg.noise_gradient, entropy_generator())
        _save_party(context, config, party, optimizer)
        content = RecordDict({"gradients": ArrayRecord({f"g-{k}": _floats(g)
                                                        for k, g in enumerate(grads)}),
                              "metrics": MetricRecord({"train-loss": loss})})
        return Message(content=content, reply_to=msg)
    return Message(content=RecordDict({"metrics": _evaluate(msg, cfg, data, customers, party,
                                                             n_features)}),
                   reply_to=msg)


def _evaluate(msg: Message, cfg: VerticalConfig, data: JointData, customers: np.ndarray,
              party: _LabelParty, n_features: int) -> MetricRecord:
    """Test AUC of the joint model, and of the label silo's block alone (trained here, free)."""
    received = _received(msg, n_features, len(customers), cfg)
    own_test = _block(data, customers, "test")
    y_test = data.y_test[customers].astype(np.float64)
    party.eval()
    with torch.no_grad():
        score = torch.sigmoid(party.top(torch.cat([party.own(own_test), *received], dim=1)))
    # The comparison a label silo can make on its own: the same protocol, its block only.
    alone = train_vertical([data.x_train[customers]], data.y_train[customers],
                           VerticalConfig(rounds=cfg.rounds, seed=cfg.seed, label_block=0))
    alone_score = predict_vertical(alone, [data.x_test[customers]])
    both = 0 < y_test.sum() < len(y_test)
    return MetricRecord({
        "auc": roc_auc(y_test, score.numpy().astype(np.float64)) if both else float("nan"),
        "label-alone-auc": roc_auc(y_test, alone_score) if both else float("nan"),
        "rows": len(customers),
        "test-positive-rate": float(y_test.mean()) if len(y_test) else 0.0})


def forget(msg: Message, context: Context) -> Message:
    """Drop the session's state from this node (end of a run, or after a failure)."""
    config = msg.content["config"]
    for kind in ("psi", "rows", "party", "audience"):
        key = _state_key(kind, config)
        if key in context.state:
            del context.state[key]
    return Message(content=RecordDict({"status": ConfigRecord({"done": True})}), reply_to=msg)


# ---------------------------------------------------------------------------
# scoring a sealed audience (case 1) with the trained joint model

def audience_embed(msg: Message, context: Context) -> Message:
    """Feature silo: release the embeddings of a sealed audience's customers, in a fresh order.

    The audience (e.g. case 1's flyers who are not data-pack customers) is
    opened with the silo's identity key; the label silo never learns who is
    in it, only how many and their released embeddings.
    """
    from .audiences import load_audience
    from fedprofile.privacy.silo_keys import read_identity_key

    config = msg.content["config"]
    cfg = vertical_config(config)
    silo_dir = resolve_silo_dir(context)
    key = read_identity_key(silo_dir, silo_secret(context))
    if key is None:
        raise SiloError(f"silo {silo_dir.name} keeps no identity key: it has no sealed audience")
    payload = load_audience(silo_dir, str(config["joint-audience"]), key)
    data = joint_data(context, config)
    position = {str(k): i for i, k in enumerate(data.customer_ids)}
    keys = [str(row[0]) for row in payload["rows"]]  # type: ignore[index]
    unknown = sum(1 for k in keys if k not in position)
    if unknown:
        raise SiloError(f"{unknown} customer(s) of audience {config['joint-audience']!r} are no "
                         "longer in the silo: run the PSI again")
    # Somebody who opted out since the audience was built is not scored (PIPL Art. 24).
    keys = [k for k in keys if not data.opted_out[position[k]]]
    order = [keys[i] for i in random_permutation(len(keys))]
    x = torch.from_numpy(np.ascontiguousarray(data.x_now[[position[k] for k in order]],
                                              dtype=np.float32))
    bottom, _ = _party(context, config, lambda: _new_bottom(x.shape[1], cfg))
    released = release_embeddings(local_embeddings(bottom, x, cfg.clip_embedding),
                                  cfg.clip_embedding, cfg.noise_embedding, entropy_generator())
    context.state[_state_key("audience", config)] = ConfigRecord(
        {"keys": order, "session": str(payload.get("session", ""))})
    return Message(content=RecordDict({"embeddings": ArrayRecord({"z": _floats(released)})}),
                   reply_to=msg)


def score(msg: Message, context: Context) -> Message:
    """Label silo: score released embeddings of people it does not know, with the remote-only head."""
    config = msg.content["config"]
    cfg = vertical_config(config)
    n_features = int(config["joint-n-features"])
    if n_features != 1 or not cfg.remote_head:
        raise SiloError("scoring an audience needs one feature silo and a model trained with "
                         "the remote-only head (joint-audience set for the run)")
    rows = int(msg.content["embeddings"]["z-0"].shape[0])
    received = _received(msg, 1, rows, cfg)

    def build() -> tuple[Any, Any]:
        party = _LabelParty(N_FEATURES, 2, cfg, int(config["seed"]))
        return party, new_optimizer(party.parameters(), cfg)

    party, _ = _party(context, config, build)
    party.eval()
    with torch.no_grad():
        scores = torch.sigmoid(party.remote(torch.cat(received, dim=1)))
    return Message(content=RecordDict({"scores": ArrayRecord(
        {"p": Array(scores.numpy().astype(np.float64))})}), reply_to=msg)


def audience_scores(msg: Message, context: Context) -> Message:
    """Feature silo: keep the scores of its audience, sealed, next to the audience."""
    from fedprofile.privacy.silo_keys import read_identity_key

    from .audiences import save_audience_scores

    config = msg.content["config"]
    record = _take(context, _state_key("audience", config))
    keys = [str(k) for k in record["keys"]]
    scores = msg.content["scores"]["p"].numpy().astype(np.float64)
    if scores.shape != (len(keys),) or not np.isfinite(scores).all():
        raise SiloError(f"expected {len(keys)} finite scores, got shape {scores.shape}")
    silo_dir = resolve_silo_dir(context)
    key = read_identity_key(silo_dir, silo_secret(context))
    if key is None:
        raise SiloError(f"silo {silo_dir.name} keeps no identity key: it cannot seal scores")
    save_audience_scores(silo_dir, str(config["joint-audience"]), str(record["session"]),
                         f"joint model, run {config['joint-run']}",
                         dict(zip(keys, scores.tolist(), strict=True)), key)
    del context.state[_state_key("audience", config)]
    return Message(content=RecordDict({"status": ConfigRecord({"scored": len(keys)})}),
                   reply_to=msg)
