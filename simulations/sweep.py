"""The privacy-utility sweep: every model trained at every privacy level and seed, summarised.

Each point is a real federated run (the same ServerApp and ClientApps as
``fedprofile train``, on Flower's Simulation Engine) with its own
privacy-budget ledger capped at exactly the point's epsilon per customer per
silo, so a point that would overspend is refused like a production run. The
summary functions are pure, so the statistics (means, confidence intervals,
the smallest epsilon that keeps utility) can be checked by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from fedprofile.client.features import FEATURE_NAMES, SiloData
from fedprofile.client.serving import load_propensity
from fedprofile.config import TrainConfig
from fedprofile.models.metrics import lift_at, roc_auc
from fedprofile.models.training import predict_proba
from fedprofile.privacy.ledger import Ledger
from fedprofile.server.app import MODEL_FILE

from .canaries import is_canary
from .scenario import Scenario
from .training import run_training

UTILITY: dict[str, tuple[str, ...]] = {
    "propensity": ("auc", "lift@10%"),
    "recommender": ("hr@10", "ndcg@10"),
}
"""The utility metrics reported per model; the first is the headline one."""

METRIC_LABELS = {
    "auc": "test AUC (out-of-time)",
    "lift@10%": "campaign lift of the top 10% (x random)",
    "hr@10": "HR@10 (held-out last basket)",
    "ndcg@10": "NDCG@10 (held-out last basket)",
}


def level_name(epsilon: float | None) -> str:
    """``no-dp`` or ``eps-4`` / ``eps-0.5``: a folder name and a table label."""
    return "no-dp" if epsilon is None else f"eps-{epsilon:g}"


@dataclass(frozen=True)
class PointResult:
    """One trained model of the sweep and what it is worth."""

    model: str
    epsilon: float | None
    seed: int
    run_dir: str
    utility: dict[str, float]
    spent_epsilon: float | None
    """The accountant's epsilon per customer (tightest accountant, worst silo); None without DP."""
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The point's numbers (not its wall time: results must repeat exactly)."""
        return {"model": self.model, "epsilon": self.epsilon, "seed": self.seed,
                "run_dir": self.run_dir, "utility": self.utility,
                "spent_epsilon": self.spent_epsilon}


def point_config(scenario: Scenario, model: str, epsilon: float | None, seed: int,
                 silos_dir: Path, run_dir: Path, as_of: str, ledger: Path | None,
                 ledger_key: Path | None) -> TrainConfig:
    """The run config of one point: the scenario's training settings at one privacy level."""
    t = scenario.training
    return TrainConfig(
        num_server_rounds=t.rounds, local_epochs=t.local_epochs, batch_size=t.batch_size,
        learning_rate=t.learning_rate, hidden_units=t.hidden_units, rec_dim=t.rec_dim,
        as_of=as_of, seed=seed, min_silos=scenario.silos.count, silo_alone=False,
        silos_dir=str(silos_dir), workspace=str(run_dir.parent), run_dir=str(run_dir),
        model=model, dp=epsilon is not None, dp_target_epsilon=epsilon or 0.0,
        dp_clip_norm=scenario.dp.clip_norm, dp_delta=scenario.dp.delta,
        ledger=str(ledger) if ledger else "", ledger_key_file=str(ledger_key) if ledger_key else "")


def point_ledger(path: Path, key: bytes, silos: Sequence[str], purpose: str, epsilon: float,
                 delta: float) -> Path:
    """A fresh ledger that caps every silo at exactly the point's budget for ``purpose``."""
    with Ledger.create(path, key) as ledger:
        for silo in silos:
            ledger.set_cap(silo, purpose, epsilon, delta,
                           reason="fedprofile simulate: one point of a privacy-utility sweep")
    return path


def spent_epsilon(metrics: dict[str, Any]) -> float | None:
    """The worst silo's epsilon per customer, by the tighter of the two accountants.

    Every customer is in one silo's training data, and the global model is a
    function of all silos' DP releases, so the model is as private, per
    customer, as the least private silo.
    """
    privacy = metrics.get("privacy") or {}
    if not privacy.get("dp"):
        return None
    return max(min(s["epsilon-rdp"], s["epsilon-prv"]) for s in privacy["silos"].values())


def propensity_utility(model_file: Path, test_sets: Sequence[SiloData]) -> dict[str, float]:
    """AUC and top-10% lift of a trained propensity model on every silo's test snapshot, pooled.

    Audit canaries are left out: they are not customers, and their labels are coin flips.
    """
    model = load_propensity(model_file)
    x = np.concatenate([d.test.x for d in test_sets])
    y = np.concatenate([d.test.y for d in test_sets])
    real = ~is_canary(x, FEATURE_NAMES)  # planted audit canaries are not customers to score
    scores = predict_proba(model, x[real])
    return {"auc": roc_auc(y[real], scores), "lift@10%": lift_at(y[real], scores, 0.1)}


def run_point(cfg: TrainConfig, test_sets: Sequence[SiloData],
              progress: Callable[[str], None]) -> PointResult:
    """Train one point and measure its utility (propensity on the pooled test snapshots)."""
    result = run_training(cfg, progress=progress, oracle=False)
    if cfg.model == "propensity":
        utility = propensity_utility(result.run_dir / MODEL_FILE, test_sets)
    else:
        overall = result.metrics["federated"]["overall"]
        utility = {m: float(overall[m]) for m in UTILITY["recommender"]}
    return PointResult(model=cfg.model, epsilon=cfg.dp_target_epsilon if cfg.dp else None,
                       seed=cfg.seed, run_dir=str(result.run_dir), utility=utility,
                       spent_epsilon=spent_epsilon(result.metrics), seconds=result.seconds)


# -- summaries (pure) ---------------------------------------------------------------------------

def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval over seeds; (v, nan, nan) for a single seed.

    Seeds are few (3-5), so the t quantile, not the normal one: with 3 seeds a
    95% interval is 4.30 standard errors wide each side, not 1.96.
    """
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) == 1:
        return (mean, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return (mean, mean - half, mean + half)


def summarize(points: Sequence[PointResult], confidence: float = 0.95) -> list[dict[str, Any]]:
    """One row per (model, privacy level, metric): the mean over seeds and its interval."""
    rows = []
    keys = sorted({(p.model, p.epsilon) for p in points},
                  key=lambda k: (k[0], -1.0 if k[1] is None else k[1]))
    for model, epsilon in keys:
        group = [p for p in points if p.model == model and p.epsilon == epsilon]
        spent = [p.spent_epsilon for p in group if p.spent_epsilon is not None]
        for metric in UTILITY[model]:
            mean, low, high = mean_ci([p.utility[metric] for p in group], confidence)
            rows.append({"model": model, "epsilon": epsilon, "level": level_name(epsilon),
                         "metric": metric, "mean": mean, "low": low, "high": high,
                         "seeds": len(group), "spent_epsilon": max(spent) if spent else None})
    return rows


def smallest_epsilon_within(rows: Sequence[dict[str, Any]], model: str, metric: str,
                            tolerance: float) -> dict[str, Any]:
    """The smallest epsilon whose mean utility is at least ``(1 - tolerance)`` of no-DP's.

    Returns ``{"model", "metric", "no_dp", "target", "epsilon", "share"}``;
    ``epsilon`` is None when no epsilon in the grid is good enough (or there is
    no no-DP reference). ``share`` is that point's utility as a share of no-DP.
    """
    mine = [r for r in rows if r["model"] == model and r["metric"] == metric]
    reference = next((r["mean"] for r in mine if r["epsilon"] is None), None)
    out: dict[str, Any] = {"model": model, "metric": metric, "no_dp": reference,
                           "target": None, "epsilon": None, "share": None}
    if reference is None or math.isnan(reference):
        return out
    out["target"] = (1 - tolerance) * reference
    for r in sorted((r for r in mine if r["epsilon"] is not None), key=lambda r: r["epsilon"]):
        if r["mean"] >= out["target"]:
            out["epsilon"], out["share"] = r["epsilon"], r["mean"] / reference
            break
    return out
