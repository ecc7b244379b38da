"""Turning silos' evaluation replies into per-silo and overall metrics.

Pure functions over reply contents, so they can be tested without Flower
running. The overall AUC is computed from the silos' summed score histograms
(see :mod:`fedprofile.models.metrics`): the server never sees a prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import MetricRecord, RecordDict

from fedprofile.models.metrics import BinaryEvaluation, pooled


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


def aggregate_evaluate_metrics(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """Flower ``evaluate_metrics_aggr_fn``: overall metrics plus ``<metric>/<silo>`` keys."""
    del weight_key  # pooled metrics weight by examples through the histograms
    summary = summarise([decode_reply(c) for c in contents])
    overall = summary["overall"]
    record = MetricRecord({"auc": overall["auc"], "log-loss": overall["log_loss"],
                           "num-examples": int(overall["examples"])})
    for silo, values in summary["silos"].items():  # type: ignore[union-attr]
        record[f"auc/{silo}"] = values["auc"]
        record[f"log-loss/{silo}"] = values["log_loss"]
    return record
