"""The purchase-propensity model: P(customer orders on this line within the horizon).

A small MLP over the common feature schema. Small on purpose: it has to train in
seconds on a silo's CPU, move cheaply over the network every round, and stay
compatible with Opacus DP-SGD (only ``nn.Linear`` and element-wise activations,
no batch norm, whose cross-example statistics would break per-example privacy).
"""

from __future__ import annotations

import torch
from torch import nn


class PropensityModel(nn.Module):
    """Logistic output over one hidden layer; returns logits."""

    def __init__(self, n_features: int, hidden: int = 32) -> None:
        super().__init__()
        if n_features <= 0 or hidden <= 0:
            raise ValueError(f"n_features and hidden must be positive, got {n_features}, {hidden}")
        self.n_features = n_features
        self.hidden = hidden
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def build_model(n_features: int, hidden: int = 32, seed: int = 0) -> PropensityModel:
    """A freshly initialised model; the seed makes every party start from the same weights."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return PropensityModel(n_features, hidden)
    finally:
        torch.random.set_rng_state(gen_state)
