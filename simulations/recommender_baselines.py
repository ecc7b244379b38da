"""What a recommender run is compared with, computed where only a simulation can: pooled data.

* the centralized oracle: the same model, optimiser, batch size, seed and total
  epochs, trained on every silo's training interactions pooled;
* the most-popular ranking: items ranked by how many (pooled) training
  customers bought them, the same list for everyone.

Both are evaluated on each silo's held-out last baskets, exactly as the
federated model is, so the numbers sit side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedprofile.client.interactions import Interactions, load_interactions
from fedprofile.client.recommending import training_split
from fedprofile.client.splits import Split
from fedprofile.client.store import SiloStore
from fedprofile.config import TrainConfig
from fedprofile.models.ranking import RankingEvaluation
from fedprofile.models.recommender import (Catalog, RecommenderModel, RecTestData, RecTrainData,
                                           evaluate_recommender, evaluate_scores,
                                           popularity_scores, train_recommender)
from fedprofile.models.training import TrainParams


def load_splits(silo_dirs: Sequence[Path]) -> list[Split]:
    """Every silo's leave-last-out split, read directly from the stores (simulation only)."""
    out = []
    for silo_dir in silo_dirs:
        with SiloStore.open(silo_dir) as store:
            out.append(training_split(load_interactions(store)))  # as the silos do
    return out


def summary(per_silo: dict[str, RankingEvaluation]) -> dict[str, Any]:
    """``{"overall": means over all evaluated customers, "silos": {name: means}}``."""
    total = RankingEvaluation()
    for evaluation in per_silo.values():
        total = total.merge(evaluation)
    return {"overall": total.means(),
            "silos": {name: e.means() for name, e in sorted(per_silo.items())}}


def popularity_baseline(splits: Sequence[Split], catalog: Catalog) -> dict[str, Any]:
    pooled = Interactions.concat([s.train for s in splits])
    scores = popularity_scores(pooled, catalog)
    return summary({s.train.name: evaluate_scores(
        scores, RecTestData.build(s.train, s.test, catalog)) for s in splits})


def centralized_oracle(splits: Sequence[Split], catalog: Catalog, cfg: TrainConfig
                       ) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    model = RecommenderModel(len(catalog), dim=cfg.rec_dim)
    pooled = Interactions.concat([s.train for s in splits])
    params = TrainParams(epochs=cfg.local_epochs * cfg.num_server_rounds,
                         batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                         seed=cfg.seed)
    train_recommender(model, RecTrainData(pooled, catalog), params)
    return summary({s.train.name: evaluate_recommender(
        model, RecTestData.build(s.train, s.test, catalog)) for s in splits})
