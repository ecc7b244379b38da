"""Local training and prediction, shared by federated clients and simulation baselines.

One function trains whatever the caller is (a silo in a federated round, a silo
alone, or the pooled oracle), so the three are compared on equal terms: same
optimiser, same batch size, same epochs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters of one local training call."""

    epochs: int = 2
    batch_size: int = 256
    learning_rate: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


@dataclass(frozen=True)
class TrainStats:
    """What local training reports: aggregates only, never rows."""

    examples: int
    mean_loss: float
    seconds: float

    @property
    def samples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else float("inf")


def make_loader(x: np.ndarray, y: np.ndarray, params: TrainParams) -> DataLoader:
    """A seeded, shuffled loader over (x, y): the same for plain and DP training."""
    if len(x) == 0:
        raise ValueError("no training examples")
    torch.manual_seed(params.seed)
    data = TensorDataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                         torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)))
    gen = torch.Generator().manual_seed(params.seed)
    return DataLoader(data, batch_size=params.batch_size, shuffle=True, generator=gen)


def fit(model: nn.Module, loader: DataLoader, loss_fn: Callable[..., torch.Tensor],
        params: TrainParams) -> TrainStats:
    """The plain (non-DP) training loop every model shares: Adam over ``loader``'s batches.

    One loop for the propensity model and the recommender, for federated
    rounds, silo-alone baselines and the centralized oracle alike, so they are
    compared on equal terms.
    """
    optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    model.train()
    start = time.perf_counter()
    total, seen = 0.0, 0
    for _ in range(params.epochs):
        for xb, yb in loader:
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(yb)
            seen += len(yb)
    elapsed = time.perf_counter() - start
    return TrainStats(examples=seen, mean_loss=total / max(seen, 1), seconds=elapsed)


def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, params: TrainParams) -> TrainStats:
    """Train ``model`` in place on (x, y) with Adam and binary cross-entropy."""
    return fit(model, make_loader(x, y, params), nn.BCEWithLogitsLoss(), params)


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Predicted probabilities for each row of ``x``."""
    model.eval()
    out = []
    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    for start in range(0, len(tensor), batch_size):
        out.append(torch.sigmoid(model(tensor[start : start + batch_size])).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
