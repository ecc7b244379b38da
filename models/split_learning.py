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
    Per batch of row indices:

    1. each feature silo computes its embeddings and hands them to
       :func:`release_embeddings` (feature silo -> label silo);
    2. the label silo runs the top model on the released embeddings, computes
       the per-row gradient of the loss with respect to each released
       embedding, and hands those to :func:`release_gradients` (label silo ->
       feature silo);
    3. each feature silo back-propagates the released gradient through its own
       bottom model and steps its own optimiser.

    A Flower version replaces exactly these two calls by messages relayed by the
    server (row indices + tensors); everything else stays on its node.

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

    Participation. Batches are a shuffle of all rows, so each row is released
    exactly once per epoch in each direction. No amplification by subsampling
    is claimed (shuffling is not Poisson sampling, and the row set is known),
    so ``E`` epochs are ``MechanismStep(sigma_eff, 1.0, E)`` per direction,
    composed with the RDP accountant of :mod:`fedprofile.privacy.accounting`.

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
from collections.abc import Sequence
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
    "train_vertical",
    "predict_vertical",
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
    ``noise_embedding`` / ``noise_gradient`` are noise multipliers (std / clip);
    0 disables the noise (clipping still applies).
    """

    embed_dim: int = 8
    bottom_hidden: int = 32
    top_hidden: int = 16
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-2
    weight_decay: float = 1e-4
    clip_embedding: float = 1.0
    noise_embedding: float = 0.0
    clip_gradient: float = 1.0
    noise_gradient: float = 0.0
    neighbouring: Neighbouring = "replace_one"
    delta: float = 1e-5
    label_block: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("embed_dim", "bottom_hidden", "top_hidden", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("lr", "clip_embedding", "clip_gradient"):
            if not float(getattr(self, name)) > 0.0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
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
    epochs: int
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


def _sensitivity_factor(neighbouring: str) -> float:
    return 2.0 if neighbouring == "replace_one" else 1.0


def vertical_privacy(cfg: VerticalConfig, has_feature_silo: bool = True) -> VerticalPrivacy:
    """Epsilon per direction: each row released once per epoch, ``MechanismStep(sigma_eff, 1.0, E)``.

    ``sigma_eff = sigma / 2`` under replace-one (sensitivity ``2C``), ``sigma``
    under add/remove (sensitivity ``C``).
    """
    factor = _sensitivity_factor(cfg.neighbouring)

    def direction(sigma: float) -> tuple[float, tuple[MechanismStep, ...]]:
        if not has_feature_silo:
            return 0.0, ()
        if sigma <= 0.0:
            return math.inf, ()
        history = (MechanismStep(sigma / factor, 1.0, cfg.epochs),)
        return epsilon(history, cfg.delta, "rdp"), history

    e_eps, e_hist = direction(cfg.noise_embedding)
    g_eps, g_hist = direction(cfg.noise_gradient)
    return VerticalPrivacy(cfg.neighbouring, cfg.delta, cfg.epochs, e_eps, g_eps, e_hist, g_hist)


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


def train_vertical(feature_blocks: list[np.ndarray], labels: np.ndarray,
                   cfg: VerticalConfig = VerticalConfig()) -> VerticalResult:
    """Train bottom models (one per block) and the top model by the split protocol.

    Rows of every block and of ``labels`` are the same aligned customers in the
    same order. Binary labels in {0, 1}; loss is binary cross-entropy.
    """
    y = np.asarray(labels, dtype=np.float32).reshape(-1)
    blocks = _check_blocks(feature_blocks, len(y))
    if cfg.label_block is not None and not 0 <= cfg.label_block < len(blocks):
        raise ValueError(f"label_block {cfg.label_block} out of range for {len(blocks)} blocks")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1")
    n = len(y)
    if n == 0:
        raise ValueError("no rows to train on")
    yt = torch.from_numpy(y)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        bottoms = [BottomModel(b.shape[1], cfg.embed_dim, cfg.bottom_hidden) for b in blocks]
        top = TopModel(cfg.embed_dim * len(blocks), cfg.top_hidden)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    noisy = cfg.noise_embedding > 0.0 or cfg.noise_gradient > 0.0
    noise_gen = entropy_generator() if noisy else None

    # Each party owns its optimiser: feature silos theirs, the label silo the top's.
    opt_bottom = [torch.optim.Adam(b.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
                  for b in bottoms]
    opt_top = torch.optim.Adam(top.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    remote = [k for k in range(len(blocks)) if k != cfg.label_block]
    bce = nn.BCEWithLogitsLoss(reduction="sum")
    history: list[float] = []

    for _epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=shuffle_gen)
        total = 0.0
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]  # the anonymous row indices of this batch
            b = len(idx)
            # (1) feature silos: forward their bottoms, release embeddings.
            local_out = [bottoms[k](blocks[k][idx]) for k in range(len(blocks))]
            received: list[torch.Tensor] = []
            for k in range(len(blocks)):
                if k == cfg.label_block:
                    received.append(local_out[k])  # stays inside the label silo
                else:
                    released = release_embeddings(local_out[k], cfg.clip_embedding,
                                                   cfg.noise_embedding, noise_gen)
                    received.append(released.requires_grad_(True))
            # (2) label silo: top model on what it received, per-row gradients.
            opt_top.zero_grad()
            if cfg.label_block is not None:
                opt_bottom[cfg.label_block].zero_grad()
            logits = top(torch.cat(received, dim=1))
            loss_sum = bce(logits, yt[idx])
            loss_sum.backward()  # sum of per-row losses: grad wrt row i's input is row i's own gradient
            with torch.no_grad():
                for p in top.parameters():
                    p.grad /= b
                if cfg.label_block is not None:
                    for p in bottoms[cfg.label_block].parameters():
                        p.grad /= b
            opt_top.step()
            if cfg.label_block is not None:
                opt_bottom[cfg.label_block].step()
            grads = release_gradients([received[k].grad for k in remote], cfg.clip_gradient,
                                      cfg.noise_gradient, noise_gen)
            # (3) feature silos: back-propagate the released gradients (batch mean).
            for k, g in zip(remote, grads, strict=True):
                opt_bottom[k].zero_grad()
                local_out[k].backward(g / b)
                opt_bottom[k].step()
            total += float(loss_sum.detach())
        history.append(total / n)

    privacy = vertical_privacy(cfg, has_feature_silo=bool(remote))
    return VerticalResult(bottoms, top, history, privacy, cfg, tuple(int(b.shape[1]) for b in blocks))


@torch.no_grad()
def predict_vertical(result: VerticalResult, feature_blocks: list[np.ndarray]) -> np.ndarray:
    """Scores (probabilities) for aligned rows of ``feature_blocks``.

    Remote embeddings are clipped as in training but not noised: this is the
    evaluation of the reference protocol. Scoring in production sends test-row
    embeddings across too; with noise those releases need their own accounting.
    """
    blocks = _check_blocks(feature_blocks)
    if tuple(int(b.shape[1]) for b in blocks) != result.block_dims:
        raise ValueError(f"block widths {[b.shape[1] for b in blocks]} differ from training "
                         f"{list(result.block_dims)}")
    cfg = result.config
    parts = []
    for k, (bottom, block) in enumerate(zip(result.bottoms, blocks, strict=True)):
        bottom.eval()
        h = bottom(block)
        parts.append(h if k == cfg.label_block else _clip_rows(h, cfg.clip_embedding))
    result.top.eval()
    return torch.sigmoid(result.top(torch.cat(parts, dim=1))).numpy().astype(np.float64)
