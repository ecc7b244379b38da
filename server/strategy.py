"""FedAvg that keeps the per-silo history a marketing team and an auditor ask for.

Flower's FedAvg aggregates replies into one weighted average; we also want, per
round, which silos answered, each silo's metrics and the round's wall time. The
subclass records those and otherwise leaves FedAvg's behaviour untouched.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

from flwr.common.logger import log

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .evaluation import BINARY, Evaluator


@dataclass
class RoundRecord:
    """What happened in one round."""

    round: int
    started: float
    seconds: float = 0.0
    trained: list[str] = field(default_factory=list)
    train_loss: float | None = None
    samples_per_second: float | None = None
    privacy: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluation: dict[str, object] = field(default_factory=dict)
    failures: int = 0
    missing: list[str] = field(default_factory=list)  # trained in an earlier round, not in this one
    failed: list[str] = field(default_factory=list)  # replied with an error naming itself
    train_aggregated: bool = False  # False while the round's training replies are awaited
    errors: list[str] = field(default_factory=list)  # why replies failed, as Flower reported it


# How Flower wraps a ClientApp's exception: ``<class 'x.Y'>:<'TEXT'>`` on the
# Deployment Engine, ``Exception ClientAppException occurred. Message: ...`` in
# the Simulation Engine.
_FLOWER_WRAPPERS = (re.compile(r"^.*?<class '[\w.]+'>:<'"),
                    re.compile(r"^Exception \w+ occurred\. Message: "))

_NAMED = re.compile(r"silo (\S+): ")


def failure_reason(raw: str, limit: int = 300) -> str:
    """The one line of a failed reply worth keeping: the silo's own words when it sent some.

    A fedprofile silo fails with ``silo NAME: Type: message``
    (:mod:`fedprofile.client.failures`); Flower's own failures (a node gone,
    a timeout) keep Flower's text.
    """
    lines = [line for line in raw.strip().splitlines() if line.strip()]
    line = lines[-1].strip() if lines else "no reason given"
    for wrapper in _FLOWER_WRAPPERS:
        line = wrapper.sub("", line)
    return line.removesuffix("'>")[:limit]


class SiloFedAvg(FedAvg):
    """FedAvg with a per-round, per-silo history in :attr:`history`."""

    def __init__(self, evaluator: Evaluator = BINARY, **kwargs: object) -> None:
        kwargs.setdefault("evaluate_metrics_aggr_fn", evaluator.aggregate)
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.evaluator = evaluator
        self.history: list[RoundRecord] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.history.append(RoundRecord(round=server_round, started=time.perf_counter()))
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        record = self.history[-1]
        record.train_aggregated = True
        ok = [m for m in replies if not m.has_error()]
        record.failures += len(replies) - len(ok)
        record.trained = sorted(str(m.content["silo"]["name"]) for m in ok)
        self._note_failures(record, replies)
        seen = {name for earlier in self.history[:-1] for name in earlier.trained}
        record.missing = sorted(seen - set(record.trained))
        if record.missing or record.failures:
            named = sorted(set(record.missing) | set(record.failed))
            log(WARNING, "fedprofile: round %d: %d silo(s) failed or missing (%s); the round "
                "goes on with %s", server_round, max(record.failures, len(named)),
                ", ".join(named) or "not named", ", ".join(record.trained) or "none")
        for m in ok:  # each silo's cumulative DP spend, as it reported it
            metrics = m.content["metrics"]
            spent = {k[3:]: float(v) for k, v in metrics.items() if k.startswith("dp-")}  # type: ignore[arg-type]
            if spent:
                record.privacy[str(m.content["silo"]["name"])] = spent
        # Replies arrive in whatever order the silos finish; summing in silo-name order makes
        # the average the same bits every time (float addition is not associative).
        replies = sorted(ok, key=lambda m: str(m.content["silo"]["name"])) + [
            m for m in replies if m.has_error()]
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is not None and "train-loss" in metrics:
            record.train_loss = float(metrics["train-loss"])  # type: ignore[arg-type]
        if metrics is not None and "samples-per-second" in metrics:
            # example-weighted mean over silos of each silo's local training speed
            record.samples_per_second = float(metrics["samples-per-second"])  # type: ignore[arg-type]
        return arrays, metrics

    @staticmethod
    def _note_failures(record: RoundRecord, replies: list[Message]) -> None:
        for reply in replies:
            if reply.has_error():
                reason = failure_reason(str(reply.error.reason))
                named = _NAMED.match(reason)
                if named and named.group(1) not in record.failed:
                    record.failed.append(named.group(1))
                if reason not in record.errors:
                    record.errors.append(reason)
                    log(WARNING, "fedprofile: round %d: a silo failed: %s", record.round, reason)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        replies = list(replies)
        record = self.history[-1]
        ok = sorted((m for m in replies if not m.has_error()),  # fixed order: same sums
                    key=lambda m: str(m.content["silo"]["name"]))
        record.failures += len(replies) - len(ok)
        self._note_failures(record, replies)
        if ok:
            record.evaluation = self.evaluator.summarise([m.content for m in ok])
        result = super().aggregate_evaluate(server_round, replies)
        record.seconds = time.perf_counter() - record.started
        if record.evaluation:
            log(INFO, "fedprofile: round %d: %s (%.1fs)", server_round,
                self.evaluator.format(record.evaluation), record.seconds)
        return result

