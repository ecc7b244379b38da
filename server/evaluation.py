"""Turning silos' evaluation replies into per-silo and overall metrics.

Pure functions over reply contents, so they can be tested without Flower
running. The overall AUC is computed from the silos' summed score histograms
(see :mod:`fedprofile.models.metrics`): the server never sees a prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import MetricRecord, RecordDict

from fedprofile.models.metrics import BinaryEvaluation, pooled
from fedprofile.models.ranking import RankingEvaluation


@dataclass(frozen=True)
class SiloEvaluation:
    """One silo's evaluation reply, decoded."""

    silo: str
    evaluation: BinaryEvaluation

    def summary(self) -> dict[str, float]:
        e = self.evaluation
        return {"examples": float(e.examples), "positives": float(e.positives),
                "auc": e.auc, "log_loss": e.log_loss}


def decode_reply(content: RecordDict) -> SiloEvaluation:
    """Read a ClientApp's evaluation reply (see ``client.app.evaluation_record``)."""
    metrics = content["metrics"]
    evaluation = BinaryEvaluation(
        examples=int(metrics["num-examples"]),
        positives=int(metrics["positives"]),
        auc=float(metrics["auc"]),
        log_loss=float(metrics["log-loss"]),
        log_loss_sum=float(metrics["log-loss-sum"]),
        pos_hist=np.asarray(metrics["pos-hist"], dtype=np.int64),
        neg_hist=np.asarray(metrics["neg-hist"], dtype=np.int64),
    )
    return SiloEvaluation(silo=str(content["silo"]["name"]), evaluation=evaluation)


def summarise(evaluations: Sequence[SiloEvaluation]) -> dict[str, object]:
    """``{"overall": {...}, "silos": {name: {...}}}`` for a set of silo evaluations."""
    return {
        "overall": pooled([e.evaluation for e in evaluations]),
        "silos": {e.silo: e.summary() for e in sorted(evaluations, key=lambda e: e.silo)},
    }


@dataclass(frozen=True)
class Evaluator:
    """How one kind of model's evaluation replies become overall and per-silo metrics.

    ``summarise`` turns the replies' contents into ``{"overall": {...}, "silos":
    {name: {...}}}``; ``headline`` names the metric shown in progress lines;
    ``keys`` are the overall metrics Flower's own aggregate record carries.
    """

    summarise: Callable[[Sequence[RecordDict]], dict[str, object]]
    headline: str
    keys: tuple[str, ...]

    def aggregate(self, contents: list[RecordDict], weight_key: str) -> MetricRecord:
        """Flower ``evaluate_metrics_aggr_fn``: overall metrics plus ``<metric>/<silo>`` keys."""
        del weight_key  # each evaluator pools its own sums
        summary = self.summarise(contents)
        overall = summary["overall"]
        record = MetricRecord({_metric_key(k): float(overall[k])  # type: ignore[index]
                               for k in self.keys})
        for silo, values in summary["silos"].items():  # type: ignore[union-attr]
            for k in self.keys:
                record[f"{_metric_key(k)}/{silo}"] = float(values[k])
        return record

    def format(self, evaluation: dict[str, object]) -> str:
        """``AUC 0.812 (flights 0.80, hotels 0.79)``: one line for progress output."""
        overall, silos = evaluation["overall"], evaluation["silos"]
        label = self.headline.upper()
        parts = [f"{name} {vals[self.headline]:.3f}" for name, vals in silos.items()]  # type: ignore[union-attr]
        return f"{label} {overall[self.headline]:.3f} (" + ", ".join(parts) + ")"  # type: ignore[index]


BINARY = Evaluator(summarise=lambda contents: summarise([decode_reply(c) for c in contents]),
                   headline="auc", keys=("auc", "log_loss"))
"""The propensity model's evaluation: AUC and log-loss pooled from score histograms."""



def _metric_key(name: str) -> str:
    return name.replace("_", "-").replace("@", "-at-")


def decode_ranking(content: RecordDict) -> tuple[str, RankingEvaluation]:
    """A recommender evaluation reply (see ``client.recommending.ranking_record``)."""
    m = content["metrics"]
    return str(content["silo"]["name"]), RankingEvaluation(
        hr10=float(m["hr10-sum"]), ndcg10=float(m["ndcg10-sum"]),
        recall20=float(m["recall20-sum"]), users=int(m["num-examples"]))


def summarise_rankings(contents: Sequence[RecordDict]) -> dict[str, object]:
    """Overall means are over all evaluated customers: the silos' sums added, then divided."""
    decoded = sorted((decode_ranking(c) for c in contents), key=lambda d: d[0])
    total = RankingEvaluation()
    for _, evaluation in decoded:
        total = total.merge(evaluation)
    return {"overall": total.means(), "silos": {name: e.means() for name, e in decoded}}


RANKING = Evaluator(summarise=summarise_rankings, headline="hr@10",
                    keys=("hr@10", "ndcg@10", "recall@20"))
"""The recommender's evaluation: HR@10, NDCG@10 and Recall@20 over held-out last baskets."""
