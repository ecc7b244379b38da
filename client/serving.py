"""Top-K recommendations for a silo's own customers, from a federated recommender.

Serving runs inside the silo: the model (item weights only) comes from the
run directory, the histories from the silo's store, and the lists are written
into the silo, next to the store, keyed by pseudonym. Customers who opted out
of personalisation (PIPL art. 24) get the non-personalised ranking the model
learned (its item biases), which uses nothing about them.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedprofile.files import atomic_write_text
from fedprofile.models.propensity import PropensityModel, build_model
from fedprofile.models.ranking import catalogue_coverage, intra_list_diversity
from fedprofile.models.recommender import Catalog, RecommenderModel, customer_baskets, recommend

from .features import FEATURE_NAMES, N_FEATURES
from .interactions import load_interactions
from .store import SiloStore

RECOMMENDATIONS_FILE = "recommendations.csv"


def _read_model_file(path: Path, kind: str) -> dict:
    """A run's ``model.pt`` as saved by the ServerApp, checked to hold a ``kind`` model.

    Loaded with ``weights_only=True``: a model file is data, and must not be
    able to run code in the silo that loads it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}: train one with "
                                f"`fedprofile train --set model={kind}`")
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several kinds for a bad file
        raise ValueError(f"{path} is not a model file fedprofile can read "
                         f"({type(err).__name__})") from None
    found = saved.get("model", "propensity") if isinstance(saved, dict) else "unknown"
    if found != kind:
        raise ValueError(f"{path} holds a {found} model, not a {kind}")
    return saved


def _load_weights(path: Path, model: torch.nn.Module, saved: dict, kind: str) -> None:
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path} was saved by another version of the {kind}; retrain it "
                         f"with this fedprofile ({str(err).splitlines()[-1].strip()})") from None
    model.eval()


def load_recommender(path: Path) -> tuple[RecommenderModel, Catalog]:
    """A trained recommender and its catalogue from a run's ``model.pt``."""
    saved = _read_model_file(path, "recommender")
    catalog = Catalog(tuple(saved["catalog"]))
    model = RecommenderModel(len(catalog), dim=int(saved["rec_dim"]))
    _load_weights(path, model, saved, "recommender")
    return model, catalog


def load_propensity(path: Path) -> PropensityModel:
    """A trained propensity model from a run's ``model.pt`` (features: :data:`FEATURE_NAMES`)."""
    saved = _read_model_file(path, "propensity")
    if list(saved.get("feature_names", [])) != list(FEATURE_NAMES):
        raise ValueError(f"{path} was trained on other features than this fedprofile builds; "
                         "retrain it")
    model = build_model(N_FEATURES, hidden=int(saved["hidden_units"]))
    _load_weights(path, model, saved, "propensity model")
    return model


@dataclass(frozen=True)
class ServingSummary:
    """What a marketer reads about a batch of lists (aggregates only)."""

    path: Path
    customers: int
    personalised: int
    opted_out: int
    no_history: int
    k: int
    coverage: float
    diversity: float

    def __str__(self) -> str:
        return (f"{self.customers:,} customers: {self.personalised:,} personalised lists, "
                f"{self.opted_out:,} non-personalised (opted out), {self.no_history:,} "
                f"non-personalised (no history to go on); top-{self.k}, catalogue "
                f"coverage {self.coverage:.1%}, intra-list diversity {self.diversity:.3f}; "
                f"written to {self.path}")


def serve_silo(silo_dir: Path, model_path: Path, k: int = 10, diversity: float = 0.0,
               explore: float = 0.0, seed: int = 0) -> ServingSummary:
    """Recommend ``k`` items to every customer of the silo.

    A customer with no history in the catalogue (a new customer, say) gets the
    model's non-personalised ranking, as an opted-out customer does; the
    ``personalised`` column says which lists used the customer's history.
    """
    model, catalog = load_recommender(model_path)
    with SiloStore.open(silo_dir) as store:
        inter = load_interactions(store)
    baskets = customer_baskets(inter, catalog)
    users = np.arange(inter.n_users, dtype=np.int64)
    histories = [baskets[u] for u in users]
    opted_out = inter.opt_out[users]
    personalised = np.array([bool(h) for h in histories]) & ~opted_out
    lists = recommend(model, histories, k=k, diversity=diversity, explore=explore, seed=seed,
                      opted_out=opted_out)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["customer_key", "rank", "item", "personalised"])
    for u, items, personal_list in zip(users, lists, personalised, strict=True):
        for rank, item in enumerate(items, 1):
            writer.writerow([inter.users[u], rank, catalog.items[item], str(personal_list).lower()])
    path = Path(silo_dir) / RECOMMENDATIONS_FILE
    atomic_write_text(path, out.getvalue())
    personal = [items for items, p in zip(lists, personalised, strict=True) if p]
    return ServingSummary(
        path=path, customers=len(users), personalised=len(personal),
        opted_out=int(opted_out.sum()), no_history=int((~personalised & ~opted_out).sum()), k=k,
        coverage=catalogue_coverage(lists, len(catalog)) if lists else 0.0,
        diversity=intra_list_diversity(personal, model.item_vectors()) if personal else 0.0)
