"""Vertical (split) learning across silos: the in-process reference protocol.

Setting
    The customers shared by several business lines are aligned beforehand (a
    PSI run gives every party the intersection in one shared order; rows are
    then addressed by that *anonymous row index* only). Each **feature silo**
    holds one block of columns for those rows and runs a :class:`BottomModel`
    (an MLP from its features to an embedding). The **label silo** holds the
    labels and the :class:`TopModel`; it may also hold a block of its own
    (``VerticalConfig.label_block``), whose embedding never leaves it. Labels
    never leave the label silo; raw features never leave a feature silo.

What crosses, and only through two functions
    Training runs in *rounds*; each round is one release in each direction,
    about every aligned row at once:

    1. each feature silo computes the embeddings of all its rows with its
       current bottom model and hands them to :func:`release_embeddings`
       (feature silo -> label silo);
    2. the label silo trains the top model (and the bottom model of its own
       block) for ``top_epochs`` over the released embeddings -- post-processing,
       free of privacy cost -- then computes every row's gradient of its own
       loss with respect to the released embeddings and hands them to
       :func:`release_gradients` (label silo -> feature silos);
    3. each feature silo moves its bottom model towards ``embedding - step *
       gradient`` for its rows (``bottom_epochs`` of regression on those
       targets: again post-processing of what it received).

    Why rounds over the whole population rather than per-batch messages: the
    label-DP noise on a row's gradient then averages over *all* rows in the
    bottom model's update (noise / sqrt(n) instead of / sqrt(batch)), each row
    is released once per round instead of once per epoch, and a Flower run
    needs two message exchanges per round, not per batch. A Flower version
    replaces exactly the two release calls by messages relayed by the server
    (anonymous row order + tensors); everything else stays on its node
    (:mod:`fedprofile.client.joint`, :mod:`fedprofile.server.joint`).

Privacy of each direction (a Gaussian mechanism per row and per release)
    *Embeddings* (protect feature-silo customers): every row's embedding is
    clipped to L2 norm ``C_e`` and gets N(0, (sigma_e C_e)^2) noise per
    coordinate. *Gradients* (label DP, protects the label owner's labels): every
    row's gradient with respect to the released embeddings -- all released
    blocks of the row *together* -- is clipped to ``C_g`` and gets
    N(0, (sigma_g C_g)^2) noise per coordinate, so the whole release about one
    label is one Gaussian mechanism however many feature silos there are.

    Neighbouring relation (``VerticalConfig.neighbouring``). Default
    ``"replace_one"``: the aligned row set is known to both sides by
    construction (the PSI output), so what must be hidden is the *value* of one
    customer's features (embedding direction) or label (gradient direction);
    changing it moves the clipped row by at most ``2 C`` in L2, so the
    mechanism's effective noise multiplier is ``sigma / 2``. ``"add_remove"``
    (the convention of Opacus and of the project's DP-SGD accounting: a row
    present vs a null row releasing nothing/zero) has sensitivity ``C`` and
    effective multiplier ``sigma``.

    Participation. Every row is released once per round in each direction
    (plus one embedding release per evaluation or scoring of those rows). No
    amplification by subsampling is claimed, so ``R`` rounds are
    ``MechanismStep(sigma_eff, 1.0, R)`` per direction, composed with the RDP
    accountant of :mod:`fedprofile.privacy.accounting`.

    What DP on each direction costs (measured on the demo platform, 20,000
    people, datapacks labels x flights features, 30-day horizon, ~4,900
    aligned rows; test AUC): label silo alone 0.910; joint without noise 0.920
    to 0.930; joint with label-DP gradients at sigma_g = 1 or 4 and clean
    embeddings 0.919 / 0.924; any embedding noise (sigma_e from 0.5 up, with or
    without standardised embeddings, embedding width 1 to 8) 0.907 to 0.910,
    i.e. no gain left. Hence the federated job's defaults: label DP on (the
    gradients are always noised), embedding noise off unless asked for.

    Known gap (stated, not hidden): the per-row argument bounds what one release
    of row ``i`` says about row ``i``'s own data *given the models*. The bottom
    model's parameters are trained on every row's features (and the top model on
    every label), so later releases of row ``j`` depend a little on row ``i``
    through the parameters. A complete guarantee needs the bottom (resp. top)
    model updates to be DP themselves (DP-SGD with per-example clipping, composed
    with the releases); that is not done here. The epsilons in
    :class:`VerticalPrivacy` are the release mechanisms' epsilons.

Determinism
    Initialisation and shuffling are seeded from ``VerticalConfig.seed``; without
    noise training is deterministic. With noise, the noise comes from a
    :class:`torch.Generator` seeded from OS entropy (:func:`secrets.randbits`),
    never from the config seed (which the server knows in the real protocol).
"""

from __future__ import annotations

import math
import secrets
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from fedprofile.privacy.accounting import MechanismStep, epsilon

__all__ = [
    "BottomModel",
    "TopModel",
    "VerticalConfig",
    "VerticalPrivacy",
    "VerticalResult",
    "entropy_generator",
    "release_embeddings",
    "release_gradients",
    "vertical_privacy",
    "direction_epsilon",
    "accounted_noise",
    "new_bottom",
    "new_top",
    "new_optimizer",
    "local_embeddings",
    "train_top",
    "embedding_gradients",
    "update_bottom",
    "pack_party",
    "unpack_party",
    "train_vertical",
    "predict_vertical",
    "predict_remote_only",
    "PURPOSE",
]

#: Ledger purpose under which the joint model's epsilons are to be recorded.
PURPOSE = "joint-model"

Neighbouring = Literal["replace_one", "add_remove"]


# ---------------------------------------------------------------------------
# models


class BottomModel(nn.Module):
    """A feature silo's MLP: its feature vector -> an embedding (ELU: ReLU units died on small silos)."""

    def __init__(self, in_dim: int, embed_dim: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ELU(), nn.Linear(hidden, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TopModel(nn.Module):
    """The label silo's head: concatenated embeddings -> one logit."""

    def __init__(self, in_dim: int, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ELU(), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


# ---------------------------------------------------------------------------
# configuration and results


@dataclass(frozen=True)
class VerticalConfig:
    """Architecture, training and privacy settings of one vertical training run.

    ``label_block``: index (in ``feature_blocks``) of a block held by the label
    silo itself; its embedding never crosses, so it is neither clipped nor
    noised. ``None``: every block belongs to a feature silo.
    ``rounds``: releases in each direction. ``top_epochs`` / ``bottom_epochs``:
    passes over the rows per round on each side (free post-processing).
    ``embedding_step``: how far a feature silo moves each row's embedding
    along its released gradient per round.
    ``noise_embedding`` / ``noise_gradient`` are noise multipliers (std / clip);
    0 disables the noise (clipping still applies).
    ``remote_head``: the label silo also trains a second head on the released
    embeddings alone, to score people it does not know (who have no row in
    its own block); the released gradients are those of both heads' losses,
    still one release per row.
    """

    embed_dim: int = 8
    bottom_hidden: int = 32
    top_hidden: int = 16
    rounds: int = 6
    top_epochs: int = 5
    bottom_epochs: int = 5
    batch_size: int = 256
    lr: float = 1e-2
    weight_decay: float = 1e-4
    embedding_step: float = 0.5
    clip_embedding: float = 1.0
    noise_embedding: float = 0.0
    clip_gradient: float = 1.0
    noise_gradient: float = 0.0
    neighbouring: Neighbouring = "replace_one"
    delta: float = 1e-5
    label_block: int | None = None
    remote_head: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("embed_dim", "bottom_hidden", "top_hidden", "rounds", "top_epochs",
                     "bottom_epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("lr", "clip_embedding", "clip_gradient", "embedding_step"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name} must be finite and > 0, got {getattr(self, name)!r}")
        for name in ("noise_embedding", "noise_gradient", "weight_decay"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)!r}")
        if self.neighbouring not in ("replace_one", "add_remove"):
            raise ValueError(f"neighbouring must be 'replace_one' or 'add_remove', got {self.neighbouring!r}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta!r}")


@dataclass(frozen=True)
class VerticalPrivacy:
    """Epsilon of each direction at ``delta`` (``inf`` where that direction had no noise).

    ``embedding_*``: what the label silo learns about a feature silo's customer
    (each feature silo's customers get this epsilon from their own silo's
    releases). ``gradient_*``: what the feature silos learn about a label.
    Histories are in accounted (effective) noise multipliers, ready for the
    ledger under purpose :data:`PURPOSE`.
    """

    neighbouring: str
    delta: float
    embedding_releases: int
    gradient_releases: int
    embedding_epsilon: float
    gradient_epsilon: float
    embedding_history: tuple[MechanismStep, ...] = ()
    gradient_history: tuple[MechanismStep, ...] = ()
    purpose: str = PURPOSE

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["embedding_history"] = [asdict(s) for s in self.embedding_history]
        out["gradient_history"] = [asdict(s) for s in self.gradient_history]
        return out


@dataclass
class VerticalResult:
    """Trained models, per-epoch mean training loss, and the privacy spent."""

    bottoms: list[BottomModel]
    top: TopModel
    loss_history: list[float]
    privacy: VerticalPrivacy
    config: VerticalConfig
    block_dims: tuple[int, ...] = field(default=())
    remote_head: TopModel | None = None  # with ``config.remote_head``


# ---------------------------------------------------------------------------
# the two crossings


def entropy_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from OS entropy, for DP noise."""
    gen = torch.Generator(device=device)
    gen.manual_seed(secrets.randbits(63))
    return gen


def _clip_rows(rows: torch.Tensor, clip: float) -> torch.Tensor:
    norms = rows.norm(dim=1, keepdim=True)
    return rows * torch.clamp(clip / (norms + 1e-12), max=1.0)


def release_embeddings(embeddings: torch.Tensor, clip: float, noise_multiplier: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Feature silo -> label silo: clip each row to L2 ``clip``, add N(0, (noise_multiplier*clip)^2).

    Takes only the embeddings of the batch's rows (shape ``[batch, embed_dim]``);
    the feature silo never has labels to pass. Returns a detached tensor: what
    crosses is data, not a graph.
    """
    rows = _clip_rows(embeddings.detach(), float(clip))
    if noise_multiplier > 0.0:
        gen = generator if generator is not None else entropy_generator(rows.device)
        rows = rows + torch.randn(rows.shape, generator=gen, dtype=rows.dtype,
                                  device=rows.device) * (noise_multiplier * clip)
    return rows


def release_gradients(gradients: Sequence[torch.Tensor], clip: float, noise_multiplier: float,
                      generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Label silo -> feature silos: per-row gradients wrt each released embedding block.

    ``gradients[k]`` is ``[batch, embed_dim_k]``: the gradient of each row's own
    loss term (not the batch mean) with respect to feature silo ``k``'s released
    embedding. A row's blocks are clipped *jointly* to L2 ``clip`` (so one label
    is one Gaussian mechanism however many silos receive a part), then each
    coordinate gets N(0, (noise_multiplier*clip)^2). Takes no features and no
    labels. Returns one detached tensor per block.
    """
    if not gradients:
        return []
    dims = [g.shape[1] for g in gradients]
    rows = _clip_rows(torch.cat([g.detach() for g in gradients], dim=1), float(clip))
    if noise_multiplier > 0.0:
        gen = generator if generator is not None else entropy_generator(rows.device)
        rows = rows + torch.randn(rows.shape, generator=gen, dtype=rows.dtype,
                                  device=rows.device) * (noise_multiplier * clip)
    return list(torch.split(rows, dims, dim=1))


# ---------------------------------------------------------------------------
# accounting


def accounted_noise(sigma: float, neighbouring: str = "replace_one") -> float:
    """The noise multiplier the accountant sees: ``sigma`` over the sensitivity factor.

    Replace-one neighbours move a clipped row by up to ``2C`` (factor 2);
    add/remove by ``C`` (factor 1).
    """
    return sigma / (2.0 if neighbouring == "replace_one" else 1.0)


def direction_epsilon(sigma: float, releases: int, delta: float,
                      neighbouring: str = "replace_one") -> tuple[float, tuple[MechanismStep, ...]]:
    """Epsilon of ``releases`` Gaussian releases per row at noise multiplier ``sigma``.

    ``(inf, ())`` without noise, ``(0, ())`` with no release at all.
    """
    if releases <= 0:
        return 0.0, ()
    if sigma <= 0.0:
        return math.inf, ()
    history = (MechanismStep(accounted_noise(sigma, neighbouring), 1.0, int(releases)),)
    return epsilon(history, delta, "rdp"), history


def vertical_privacy(cfg: VerticalConfig, has_feature_silo: bool = True,
                     extra_embedding_releases: int = 0) -> VerticalPrivacy:
    """Epsilon per direction: each row released once per round, ``MechanismStep(sigma_eff, 1.0, R)``.

    ``sigma_eff = sigma / 2`` under replace-one (sensitivity ``2C``), ``sigma``
    under add/remove (sensitivity ``C``). ``extra_embedding_releases``: releases
    of the same rows' embeddings after training (evaluation, scoring).
    """
    e_n = cfg.rounds + extra_embedding_releases if has_feature_silo else 0
    g_n = cfg.rounds if has_feature_silo else 0
    e_eps, e_hist = direction_epsilon(cfg.noise_embedding, e_n, cfg.delta, cfg.neighbouring)
    g_eps, g_hist = direction_epsilon(cfg.noise_gradient, g_n, cfg.delta, cfg.neighbouring)
    return VerticalPrivacy(cfg.neighbouring, cfg.delta, e_n, g_n, e_eps, g_eps, e_hist, g_hist)


# ---------------------------------------------------------------------------
# training


def _check_blocks(feature_blocks: Sequence[np.ndarray], n: int | None = None) -> list[torch.Tensor]:
    if not feature_blocks:
        raise ValueError("feature_blocks must hold at least one block")
    out = []
    for k, block in enumerate(feature_blocks):
        arr = np.asarray(block, dtype=np.float32)
        if arr.ndim != 2:
            raise ValueError(f"feature block {k} must be 2-D, got shape {arr.shape}")
        if n is not None and arr.shape[0] != n:
            raise ValueError(f"feature block {k} has {arr.shape[0]} rows, expected {n} (rows must be aligned)")
        if not np.isfinite(arr).all():
            raise ValueError(f"feature block {k} has non-finite values")
        n = arr.shape[0] if n is None else n
        out.append(torch.from_numpy(np.ascontiguousarray(arr)))
    return out


def new_bottom(in_dim: int, cfg: VerticalConfig, seed: int) -> BottomModel:
    """A party's bottom model, initialised from ``seed`` (each party seeds its own)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BottomModel(in_dim, cfg.embed_dim, cfg.bottom_hidden)


def new_top(n_blocks: int, cfg: VerticalConfig, seed: int) -> TopModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TopModel(cfg.embed_dim * n_blocks, cfg.top_hidden)


def new_optimizer(params: Iterable[nn.Parameter], cfg: VerticalConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(list(params), lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def local_embeddings(bottom: BottomModel, x: torch.Tensor, clip: float) -> torch.Tensor:
    """The clipped embeddings a feature silo would release (before noise)."""
    bottom.eval()
    return _clip_rows(bottom(x), clip)


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _loss(top: TopModel, received: Sequence[torch.Tensor], y: torch.Tensor,
          own: torch.Tensor | None, remote_head: TopModel | None) -> torch.Tensor:
    """Sum over rows of the joint head's loss (plus the remote-only head's, if any)."""
    bce = nn.BCEWithLogitsLoss(reduction="sum")
    parts = ([own] if own is not None else []) + list(received)
    loss = bce(top(torch.cat(parts, dim=1)), y)
    if remote_head is not None:
        loss = loss + bce(remote_head(torch.cat(list(received), dim=1)), y)
    return loss


def train_top(top: TopModel, optimizer: torch.optim.Optimizer, received: Sequence[torch.Tensor],
              y: torch.Tensor, cfg: VerticalConfig, gen: torch.Generator,
              own_bottom: BottomModel | None = None, own_x: torch.Tensor | None = None,
              remote_head: TopModel | None = None) -> float:
    """Label silo: ``top_epochs`` over the released embeddings (and its own block); mean loss.

    ``optimizer`` covers the top model, the bottom model of the label silo's
    own block when it has one, and the remote-only head when there is one.
    """
    n = len(y)
    for module in (top, own_bottom, remote_head):
        if module is not None:
            module.train()
    total = 0.0
    for _ in range(cfg.top_epochs):
        total = 0.0
        for idx in _batches(n, cfg.batch_size, gen):
            own = own_bottom(own_x[idx]) if own_bottom is not None else None
            optimizer.zero_grad()
            loss = _loss(top, [z[idx] for z in received], y[idx], own, remote_head)
            (loss / len(idx)).backward()
            optimizer.step()
            total += float(loss.detach())
    return total / max(n, 1)


def embedding_gradients(top: TopModel, received: Sequence[torch.Tensor], y: torch.Tensor,
                        own_bottom: BottomModel | None = None,
                        own_x: torch.Tensor | None = None,
                        remote_head: TopModel | None = None) -> list[torch.Tensor]:
    """Label silo: each row's gradient of its *own* loss w.r.t. each released embedding block.

    The loss is a sum over rows, so the gradient with respect to row ``i``'s
    input is row ``i``'s own gradient. To be released with :func:`release_gradients`.
    """
    top.eval()
    if remote_head is not None:
        remote_head.eval()
    leaves = [z.detach().clone().requires_grad_(True) for z in received]
    with torch.no_grad():
        own = own_bottom.eval()(own_x) if own_bottom is not None else None
    loss = _loss(top, leaves, y, own, remote_head)
    grads = torch.autograd.grad(loss, leaves)
    return [g.detach() for g in grads]


def update_bottom(bottom: BottomModel, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                  gradient: torch.Tensor, cfg: VerticalConfig, gen: torch.Generator) -> float:
    """Feature silo: move the bottom model towards ``embedding - step * released gradient``.

    Regression on fixed targets, so several passes reuse one release (free
    post-processing). Returns the last pass's mean squared distance.
    """
    targets = local_embeddings(bottom, x, cfg.clip_embedding) - cfg.embedding_step * gradient
    bottom.train()
    total = 0.0
    for _ in range(cfg.bottom_epochs):
        total = 0.0
        for idx in _batches(len(x), cfg.batch_size, gen):
            optimizer.zero_grad()
            out = _clip_rows(bottom(x[idx]), cfg.clip_embedding)
            loss = ((out - targets[idx]) ** 2).sum()
            (loss / len(idx)).backward()
            optimizer.step()
            total += float(loss.detach())
    return total / max(len(x), 1)


def pack_party(model: nn.Module, optimizer: torch.optim.Optimizer) -> bytes:
    """A party's model and optimiser state as bytes, for node-local state between rounds."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    return buffer.getvalue()


def unpack_party(blob: bytes, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore what :func:`pack_party` saved (tensors only: ``weights_only``)."""
    state = torch.load(io.BytesIO(blob), weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])


def train_vertical(feature_blocks: list[np.ndarray], labels: np.ndarray,
                   cfg: VerticalConfig = VerticalConfig()) -> VerticalResult:
    """Train bottom models (one per block) and the top model by the round protocol.

    Rows of every block and of ``labels`` are the same aligned customers in the
    same order. Binary labels in {0, 1}; loss is binary cross-entropy. This is
    the in-process reference of exactly what the Flower job does.
    """
    y = np.asarray(labels, dtype=np.float32).reshape(-1)
    blocks = _check_blocks(feature_blocks, len(y))
    if cfg.label_block is not None and not 0 <= cfg.label_block < len(blocks):
        raise ValueError(f"label_block {cfg.label_block} out of range for {len(blocks)} blocks")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1")
    if len(y) == 0:
        raise ValueError("no rows to train on")
    yt = torch.from_numpy(y)
    remote = [k for k in range(len(blocks)) if k != cfg.label_block]
    bottoms = [new_bottom(b.shape[1], cfg, cfg.seed + 1 + k) for k, b in enumerate(blocks)]
    # The label silo's own block (if any) goes first in the top model's input.
    top = new_top(len(blocks), cfg, cfg.seed)
    own = bottoms[cfg.label_block] if cfg.label_block is not None else None
    own_x = blocks[cfg.label_block] if cfg.label_block is not None else None
    remote_head = (new_top(len(remote), cfg, cfg.seed + 2)
                   if cfg.remote_head and remote and own is not None else None)
    opt_top = new_optimizer([*top.parameters(), *(own.parameters() if own else []),
                             *(remote_head.parameters() if remote_head else [])], cfg)
    opt_bottom = {k: new_optimizer(bottoms[k].parameters(), cfg) for k in remote}
    gen = torch.Generator().manual_seed(cfg.seed)
    noisy = cfg.noise_embedding > 0.0 or cfg.noise_gradient > 0.0
    noise_gen = entropy_generator() if noisy else None
    history: list[float] = []
    for _round in range(cfg.rounds):
        received = [release_embeddings(local_embeddings(bottoms[k], blocks[k], cfg.clip_embedding),
                                       cfg.clip_embedding, cfg.noise_embedding, noise_gen)
                    for k in remote]
        history.append(train_top(top, opt_top, received, yt, cfg, gen, own, own_x, remote_head))
        if not remote:
            continue
        grads = release_gradients(embedding_gradients(top, received, yt, own, own_x, remote_head),
                                  cfg.clip_gradient, cfg.noise_gradient, noise_gen)
        for k, g in zip(remote, grads, strict=True):
            update_bottom(bottoms[k], opt_bottom[k], blocks[k], g, cfg, gen)
    privacy = vertical_privacy(cfg, has_feature_silo=bool(remote), extra_embedding_releases=1)
    return VerticalResult(bottoms, top, history, privacy, cfg, tuple(int(b.shape[1]) for b in blocks),
                          remote_head)


@torch.no_grad()
def predict_vertical(result: VerticalResult, feature_blocks: list[np.ndarray],
                     release_noise: bool = True) -> np.ndarray:
    """Scores (probabilities) for aligned rows of ``feature_blocks``.

    Remote embeddings cross to the label silo to be scored, so by default they
    are released as in training (clipped and noised): the score a deployment
    gets. ``release_noise=False`` shows what the models learned without that
    last release's noise.
    """
    blocks = _check_blocks(feature_blocks)
    if tuple(int(b.shape[1]) for b in blocks) != result.block_dims:
        raise ValueError(f"block widths {[b.shape[1] for b in blocks]} differ from training "
                         f"{list(result.block_dims)}")
    cfg = result.config
    sigma = cfg.noise_embedding if release_noise else 0.0
    own: list[torch.Tensor] = []
    remote: list[torch.Tensor] = []
    for k, (bottom, block) in enumerate(zip(result.bottoms, blocks, strict=True)):
        if k == cfg.label_block:
            own.append(bottom.eval()(block))
        else:
            remote.append(release_embeddings(local_embeddings(bottom, block, cfg.clip_embedding),
                                             cfg.clip_embedding, sigma))
    result.top.eval()
    return torch.sigmoid(result.top(torch.cat([*own, *remote], dim=1))).numpy().astype(np.float64)


@torch.no_grad()
def predict_remote_only(result: VerticalResult, remote_blocks: list[np.ndarray],
                        release_noise: bool = True) -> np.ndarray:
    """Scores from the remote-only head: people the label silo does not know (no own block)."""
    if result.remote_head is None:
        raise ValueError("this model has no remote-only head (train it with remote_head=True)")
    cfg = result.config
    sigma = cfg.noise_embedding if release_noise else 0.0
    bottoms = [b for k, b in enumerate(result.bottoms) if k != cfg.label_block]
    blocks = _check_blocks(remote_blocks)
    z = [release_embeddings(local_embeddings(b, x, cfg.clip_embedding), cfg.clip_embedding, sigma)
         for b, x in zip(bottoms, blocks, strict=True)]
    result.remote_head.eval()
    return torch.sigmoid(result.remote_head(torch.cat(z, dim=1))).numpy().astype(np.float64)
