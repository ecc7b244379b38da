"""Local training with DP-SGD (Opacus), where the privacy unit is the customer.

A silo's training snapshot has exactly one row per customer (see
:mod:`fedprofile.client.features`), so per-example clipping in DP-SGD bounds
each *customer's* influence on a round's update, and the guarantee Opacus
accounts for is a customer-level guarantee. Batches are Poisson-sampled (each
customer independently with probability ``sample_rate``), which is what the
subsampled-Gaussian accounting assumes.

The accountant's history is passed in and returned, not kept in the engine:
a new engine is built every round (the global weights change), and the
history is what makes the epsilon cumulative across rounds and runs.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .training import TrainParams, TrainStats, make_loader

GRAD_SAMPLE_MODE = "ew"
"""Opacus per-sample-gradient mode: expanded weights was fastest for this MLP at
batch 256 (0.56x non-DP, vs hooks 0.52x, ghost 0.51x, functorch 0.36x; see
benchmarks/bench_dp.py, which also checks all modes give the same clipped
gradient)."""


@dataclass(frozen=True)
class DPParams:
    """DP-SGD settings of one silo's local training."""

    noise_multiplier: float
    clip_norm: float = 1.0

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise multiplier must be > 0, got {self.noise_multiplier}")
        if not self.clip_norm > 0:
            raise ValueError(f"clip norm must be > 0, got {self.clip_norm}")


@dataclass(frozen=True)
class DPTrainStats(TrainStats):
    """Local training stats plus the mechanism actually run (for accounting)."""

    noise_multiplier: float = 0.0
    sample_rate: float = 0.0
    steps: int = 0
    clip_norm: float = 0.0


def steps_per_epoch(batch_size: int, n: int) -> int:
    """Steps Opacus's Poisson loader runs per epoch: as many as the plain loader's batches."""
    if n <= 0:
        raise ValueError("no training examples")
    return math.ceil(n / batch_size)


def sample_rate(batch_size: int, n: int) -> float:
    """The Poisson sampling rate Opacus uses: ``1 / steps_per_epoch`` (about batch/n)."""
    return 1.0 / steps_per_epoch(batch_size, n)


@dataclass(frozen=True)
class PrivateTraining:
    """What :func:`make_private` returns: use these instead of the originals to train."""

    engine: Any  # opacus.PrivacyEngine
    module: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    criterion: Any = None  # ghost clipping only: the loss to call (it runs both backward passes)

    def checked_sample_rate(self, steps: int, batch_size: int, n: int) -> float:
        """The sample rate Opacus's accountant recorded, checked against what ran.

        What the ledger is charged is what the accountant recorded; this makes
        sure that is the mechanism that actually ran: as many steps as were
        taken, one sample rate, and the rate of a Poisson loader over ``n``
        elements at ``batch_size``.
        """
        history = self.engine.accountant.history
        recorded = sum(s for _, _, s in history)
        rates = {q for _, q, _ in history}
        if recorded != steps or len(rates) != 1:
            raise RuntimeError(f"DP accounting mismatch: {steps} steps run, {recorded} recorded "
                               f"at sample rates {sorted(rates)}")
        q = rates.pop()
        if abs(q - sample_rate(batch_size, n)) > 1e-12:
            raise RuntimeError(f"unexpected Opacus sample rate {q}")
        return float(q)

    def release(self) -> None:
        """Leave the caller's module without Opacus's hooks (it is trained in place)."""
        if hasattr(self.module, "remove_hooks"):
            self.module.remove_hooks()


SIMULATION_NOISE_SEED_ENV = "FEDPROFILE_SIMULATION_NOISE_SEED"
"""Set only by ``fedprofile simulate`` on synthetic data: makes DP noise reproducible."""


def _simulation_digest() -> hashlib.blake2b | None:
    """A keyed digest for simulation noise seeds, or None outside a simulation."""
    secret = os.environ.get(SIMULATION_NOISE_SEED_ENV, "")
    if not secret:
        return None
    return hashlib.blake2b(key=hashlib.sha256(secret.encode()).digest(), digest_size=16)


def noise_seeds(loader: DataLoader) -> tuple[int, int]:
    """Seeds of the noise and of the Poisson sampling: OS entropy, unless simulating.

    A simulation must give the same numbers when re-run (a compliance team
    signs off on a result it can reproduce). So when the *silo's own process*
    has :data:`SIMULATION_NOISE_SEED_ENV` set (the simulator sets it for its
    synthetic silos; nothing the server sends can), the seeds are a keyed hash
    of that value, the loader's seed (run seed + round) and the training data
    itself, so two silos never draw the same noise (the server could cancel
    it by subtracting their updates) and rounds never repeat noise.
    """
    digest = _simulation_digest()
    if digest is None:
        return secrets.randbits(63), secrets.randbits(63)
    generator = getattr(loader, "generator", None)
    digest.update(str(generator.initial_seed() if generator is not None else 0).encode())
    dataset = loader.dataset
    if hasattr(dataset, "tensors"):
        for tensor in dataset.tensors:
            digest.update(tensor.numpy().tobytes())
    elif hasattr(dataset, "fingerprint"):
        digest.update(dataset.fingerprint())
    else:
        raise TypeError(f"cannot fingerprint a {type(dataset).__name__} for reproducible noise")
    value = int.from_bytes(digest.digest(), "big")
    return value & (2**63 - 1), (value >> 64) & (2**63 - 1)


def noise_rng(*parts: bytes | str) -> np.random.Generator:
    """The generator of a Gaussian mechanism's noise (segment statistics, regional counts).

    OS entropy, never a seed the server knows (it could subtract the noise);
    in a simulation (:func:`noise_seeds`), a keyed hash of ``parts``, which
    must tell this silo's release apart from every other (its name and what
    it releases).
    """
    digest = _simulation_digest()
    if digest is None:
        return np.random.default_rng()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"|")
    return np.random.default_rng(int.from_bytes(digest.digest(), "big"))


def make_private(model: nn.Module, optimiser: torch.optim.Optimizer, loader: DataLoader,
                 dp: DPParams, grad_sample_mode: str = GRAD_SAMPLE_MODE,
                 criterion: nn.Module | None = None) -> PrivateTraining:
    """Wrap a model, optimiser and loader for DP-SGD with Poisson sampling (RDP accountant).

    One element of ``loader``'s dataset must be one customer: that is what
    makes the guarantee customer-level. ``grad_sample_mode="ghost"`` (ghost
    clipping: per-sample gradient *norms* without the per-sample gradients)
    needs the per-sample ``criterion``; train with ``PrivateTraining.criterion``.
    """
    if (grad_sample_mode == "ghost") != (criterion is not None):
        raise ValueError("a criterion is needed for ghost clipping, and only for it")
    from fedprofile.privacy._opacus import opacus

    # The noise and the Poisson sampling must not be reproducible by anyone
    # else: the run's seed is in the run config the server sends, so a generator
    # seeded from it would let the server regenerate (and subtract) the noise.
    # Both generators are seeded from OS entropy instead (noise_seeds); only
    # non-DP training is reproducible from the seed, except in a simulation.
    noise_seed, sampling_seed = noise_seeds(loader)
    noise_generator = torch.Generator().manual_seed(noise_seed)
    sampling_generator = torch.Generator().manual_seed(sampling_seed)
    loader = DataLoader(loader.dataset, batch_size=loader.batch_size,
                        collate_fn=loader.collate_fn, generator=sampling_generator)

    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off: the noise comes from torch's PRNG
        # (seeded from OS entropy above), not a CSPRNG. That is documented in the
        # README (a known limit), so the warning is not repeated every round.
        warnings.simplefilter("ignore", UserWarning)
        engine = opacus.PrivacyEngine(accountant="rdp", secure_mode=False)
        extra = {} if criterion is None else {"criterion": criterion}
        wrapped = engine.make_private(
            module=model, optimizer=optimiser, data_loader=loader,
            noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.clip_norm,
            poisson_sampling=True, grad_sample_mode=grad_sample_mode,
            noise_generator=noise_generator, **extra,
        )
    if criterion is None:
        private_model, private_opt, private_loader = wrapped
        private_criterion = None
    else:
        private_model, private_opt, private_criterion, private_loader = wrapped
    return PrivateTraining(engine=engine, module=private_model, optimizer=private_opt,
                           loader=private_loader, criterion=private_criterion)


def train_local_dp(model: nn.Module, x: np.ndarray, y: np.ndarray, params: TrainParams,
                   dp: DPParams) -> DPTrainStats:
    """Train ``model`` in place with DP-SGD; one row of ``x`` is one customer."""
    loader = make_loader(x, y, params)
    n = len(loader.dataset)  # type: ignore[arg-type]
    optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    private = make_private(model, optimiser, loader, dp)
    private_model, private_opt = private.module, private.optimizer
    loss_fn = nn.BCEWithLogitsLoss()
    private_model.train()
    start = time.perf_counter()
    total, seen, steps = 0.0, 0, 0
    for _ in range(params.epochs):
        for xb, yb in private.loader:
            private_opt.zero_grad(set_to_none=True)
            if len(yb) == 0:  # Poisson sampling can draw an empty batch: still a step
                private_opt.step()
                steps += 1
                continue
            loss = loss_fn(private_model(xb), yb)
            loss.backward()
            private_opt.step()
            steps += 1
            total += float(loss.detach()) * len(yb)
            seen += len(yb)
    elapsed = time.perf_counter() - start
    # Report exactly the mechanism Opacus's own accountant recorded, and check it
    # matches what ran: this is what the ledger will be charged.
    q = private.checked_sample_rate(steps, params.batch_size, n)
    private.release()
    return DPTrainStats(examples=seen, mean_loss=total / max(seen, 1), seconds=elapsed,
                        noise_multiplier=dp.noise_multiplier, sample_rate=q, steps=steps,
                        clip_norm=dp.clip_norm)
