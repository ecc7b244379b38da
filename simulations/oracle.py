"""The centralized oracle: the same model trained on all silos' data pooled.

Only a simulation may build it: it reads every silo's store in one process,
which is exactly what law and policy forbid in production. It exists to answer
"how much does federation cost compared with pooling?", with the same model,
optimiser, batch size and total number of epochs as the federated run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedprofile.client.features import N_FEATURES, SiloData, load_silo_data
from fedprofile.client.store import SiloStore
from fedprofile.config import TrainConfig
from fedprofile.models.metrics import BinaryEvaluation, pooled
from fedprofile.models.propensity import build_model
from fedprofile.models.training import TrainParams, predict_proba, train_local


def load_all(silo_dirs: Sequence[Path], cfg: TrainConfig) -> list[SiloData]:
    """Every silo's snapshots, read directly from the stores (simulation only)."""
    out = []
    for silo_dir in silo_dirs:
        with SiloStore.open(silo_dir) as store:
            out.append(load_silo_data(store, cfg.horizon_days, cfg.as_of))
    return out


def centralized_oracle(silos: Sequence[SiloData], cfg: TrainConfig) -> dict[str, object]:
    """Train on the pooled training snapshots; evaluate on each silo's test snapshot."""
    model = build_model(N_FEATURES, hidden=cfg.hidden_units, seed=cfg.seed)
    x = np.concatenate([s.train.x for s in silos])
    y = np.concatenate([s.train.y for s in silos])
    params = TrainParams(epochs=cfg.local_epochs * cfg.num_server_rounds,
                         batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                         seed=cfg.seed)
    train_local(model, x, y, params)
    evaluations = {s.name: BinaryEvaluation.of(s.test.y, predict_proba(model, s.test.x))
                   for s in silos}
    return {
        "overall": pooled(list(evaluations.values())),
        "silos": {name: {"examples": float(e.examples), "positives": float(e.positives),
                         "auc": e.auc, "log_loss": e.log_loss}
                  for name, e in sorted(evaluations.items())},
    }
