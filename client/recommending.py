"""The silo's side of the federated recommender: catalogue proposal, training, evaluation.

What leaves the silo: the item codes bought by at least ``rec-min-customers``
of its customers (the catalogue proposal: product codes, never who bought
them), the model's item-level weights after local training (no per-customer
parameter exists), and evaluation sums (HR@10, NDCG@10, Recall@20 summed over
its evaluated customers, and their number). Each customer's last basket is
held out for evaluation (:func:`fedprofile.client.splits.leave_last_out`) and
never trained on. Customers who opted out of personalisation take no part.
"""

from __future__ import annotations

import functools
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.logger import log

from fedprofile.models.dp import DPParams
from fedprofile.models.ranking import RankingEvaluation
from fedprofile.models.recommender import (Catalog, RecommenderModel, RecTestData, RecTrainData,
                                           evaluate_recommender, train_recommender,
                                           train_recommender_dp)

from .interactions import Interactions
from .node import (DPPlan, cached_interactions, dp_round, dp_sgd_plan, silo_and_stamp,
                   train_params)
from .splits import Split, leave_last_out


def training_split(inter: Interactions) -> Split:
    """The split the recommender trains and is evaluated on, wherever it is built.

    Customers who opted out of personalisation are not used to train or tune a
    personalisation model at all; they are served its non-personalised ranking.
    """
    return leave_last_out(inter.subset_users(~inter.opt_out))


@functools.lru_cache(maxsize=8)
def _cached_split(silo_dir: str, stamp: tuple[tuple[int, int], ...]) -> tuple[str, Split]:
    inter = cached_interactions(Path(silo_dir), stamp)
    return inter.name, training_split(inter)


@functools.lru_cache(maxsize=8)
def _cached_data(silo_dir: str, stamp: tuple[tuple[int, int], ...], items: tuple[str, ...]
                 ) -> tuple[str, RecTrainData, RecTestData]:
    name, split = _cached_split(silo_dir, stamp)
    catalog = Catalog(items)
    return name, RecTrainData(split.train, catalog), RecTestData.build(split.train, split.test, catalog)


def silo_split(context: Context) -> tuple[str, Split]:
    """This silo's name and its leave-last-out split (cached while the store is unchanged)."""
    silo_dir, stamp = silo_and_stamp(context)
    return _cached_split(str(silo_dir), stamp)


def silo_rec_data(context: Context, config: ConfigRecord) -> tuple[str, RecTrainData, RecTestData]:
    """Training and test data over the run's catalogue."""
    silo_dir, stamp = silo_and_stamp(context)
    name, train, test = _cached_data(str(silo_dir), stamp, tuple(config["catalog"]))  # type: ignore[arg-type]
    if len(train) == 0:
        raise ValueError(f"silo {name} has no customer with a purchase of a catalogue item")
    return name, train, test


def catalogue_proposal(split: Split, min_customers: int) -> list[str]:
    """Items bought (in training) by at least ``min_customers`` distinct customers of this silo.

    Only training interactions count, so the held-out baskets do not shape the
    catalogue. The threshold keeps a rare item, which could single out the few
    customers who bought it, inside the silo.
    """
    return split.train.items_bought_by(min_customers)


def catalog_reply(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    name, split = silo_split(context)
    items = catalogue_proposal(split, int(config["rec-min-customers"]))
    log(INFO, "silo %s: proposed its catalogue items", name)
    return Message(content=RecordDict({"catalog": ConfigRecord({"items": items}),
                                       "silo": ConfigRecord({"name": name})}), reply_to=msg)


def model_from(msg: Message) -> tuple[RecommenderModel, ConfigRecord]:
    config = msg.content["config"]
    model = RecommenderModel(len(config["catalog"]), dim=int(config["rec-dim"]))  # type: ignore[arg-type]
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model, config


def ranking_record(evaluation: RankingEvaluation) -> MetricRecord:
    """The evaluation sums a silo may share (the server adds them over silos)."""
    return MetricRecord({"num-examples": evaluation.users, "silo-weight": 1.0,
                         "hr10-sum": evaluation.hr10, "ndcg10-sum": evaluation.ndcg10,
                         "recall20-sum": evaluation.recall20})


def plan(config: ConfigRecord, context: Context) -> DPPlan:
    name, train, _ = silo_rec_data(context, config)
    return dp_sgd_plan(name, len(train), config)


def train(msg: Message, context: Context) -> Message:
    """One federated round: local training from the global weights; send the weights back."""
    model, config = model_from(msg)
    name, data, _ = silo_rec_data(context, config)
    params = train_params(config)
    privacy: dict[str, float] = {}
    if bool(config.get("dp", False)):
        stats, privacy = dp_round(plan(config, context), config, context,
                                  lambda sigma, clip: train_recommender_dp(
                                      model, data, params, DPParams(sigma, clip)))
    else:
        stats = train_recommender(model, data, params)
    log(INFO, "silo %s: trained the recommender on %d customers%s", name, len(data),
        f", epsilon so far {privacy['dp-epsilon-rdp']:.2f} (RDP)" if privacy else "")
    metrics = {"num-examples": len(data), "silo-weight": 1.0, "train-loss": stats.mean_loss,
               "samples-per-second": stats.samples_per_second, "train-seconds": stats.seconds,
               **privacy}
    return Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                       "metrics": MetricRecord(metrics),
                                       "silo": ConfigRecord({"name": name})}), reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """HR@10 / NDCG@10 / Recall@20 sums of the global model on this silo's held-out baskets."""
    model, config = model_from(msg)
    name, _, test = silo_rec_data(context, config)
    return Message(content=RecordDict({"metrics": ranking_record(evaluate_recommender(model, test)),
                                       "silo": ConfigRecord({"name": name})}), reply_to=msg)


def silo_alone(msg: Message, context: Context) -> Message:
    """Baseline: the same model trained on this silo only (as many epochs as the whole run)."""
    model, config = model_from(msg)
    name, data, test = silo_rec_data(context, config)
    torch.manual_seed(int(config["seed"]))
    train_recommender(model, data, train_params(config, "total-epochs"))
    return Message(content=RecordDict({"metrics": ranking_record(evaluate_recommender(model, test)),
                                       "silo": ConfigRecord({"name": name})}), reply_to=msg)
