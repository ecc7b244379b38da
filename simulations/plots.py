"""Plots of a training run, for people who would rather see than read a table."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (servers, CI)
import matplotlib.pyplot as plt  # noqa: E402

from fedprofile.files import atomic_write_bytes  # noqa: E402


PLOTS: dict[str, tuple[str, str, str, str]] = {
    # model: (file name, metric, y-axis label, title)
    "propensity": ("auc_by_round.png", "auc", "test AUC (out-of-time)",
                   "Purchase propensity: federated vs centralized vs silo-alone"),
    "recommender": ("hr10_by_round.png", "hr@10", "HR@10 (held-out last basket)",
                    "Recommender: federated vs centralized vs popularity vs silo-alone"),
}


def plot_file(model: str) -> str:
    """The by-round plot's file name for a run of ``model``."""
    return PLOTS[model][0]


def plot_metric_by_round(metrics: dict[str, Any], path: Path, model: str = "propensity") -> Path:
    """The model's headline metric per round for each silo and overall, against the baselines.

    Baselines drawn as horizontal lines when the run has them: the centralized
    oracle, each silo alone, and (recommender) the most-popular ranking.
    """
    _, metric, ylabel, title = PLOTS[model]
    rounds = [r for r in metrics["rounds"] if r.get("overall")]
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=110)
    xs = [r["round"] for r in rounds]
    silos = sorted({s for r in rounds for s in r["silos"]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, silo in enumerate(silos):
        colour = colours[i % len(colours)]
        ys = [r["silos"].get(silo, {}).get(metric, float("nan")) for r in rounds]
        ax.plot(xs, ys, marker="o", color=colour, label=f"{silo} (federated)")
        alone = (metrics.get("silo_alone") or {}).get("silos", {}).get(silo)
        if alone:
            ax.axhline(alone[metric], color=colour, linestyle=":", linewidth=1,
                       label=f"{silo} alone")
    ax.plot(xs, [r["overall"][metric] for r in rounds], marker="s", color="black",
            linewidth=2, label="overall (federated)")
    for key, style, label in (("oracle", "--", "overall, centralized oracle"),
                              ("popularity", "-.", "overall, most popular")):
        baseline = metrics.get(key)
        if baseline:
            ax.axhline(baseline["overall"][metric], color="black", linestyle=style, linewidth=1,
                       label=label)
    ax.set_xlabel("federated round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: Path | str) -> Path:
    """Render to memory in the format the suffix names, then write atomically (and close)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=fmt)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
