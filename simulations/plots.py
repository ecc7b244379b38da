"""Plots of a training run, for people who would rather see than read a table."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

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


#: Above this many silos, one line per silo (and a legend entry each) is
#: unreadable; the plot draws their median and spread instead.
MAX_SILO_LINES = 8


def plot_metric_by_round(metrics: dict[str, Any], path: Path, model: str = "propensity") -> Path:
    """Draw :func:`metric_by_round_figure` and write it to ``path``."""
    return save_figure(metric_by_round_figure(metrics, model), path)


def metric_by_round_figure(metrics: dict[str, Any], model: str = "propensity") -> plt.Figure:
    """The model's headline metric per round for each silo and overall, against the baselines.

    Baselines drawn as horizontal lines when the run has them: the centralized
    oracle, each silo alone, and (recommender) the most-popular ranking. With
    more than :data:`MAX_SILO_LINES` silos (a 100-silo simulation), the silos
    are summarised as their median and 10-90th percentile band, federated per
    round and alone, so the plot stays readable at any scale.
    """
    _, metric, ylabel, title = PLOTS[model]
    rounds = [r for r in metrics["rounds"] if r.get("overall")]
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=110)
    xs = [r["round"] for r in rounds]
    silos = sorted({s for r in rounds for s in r["silos"]})
    per_silo = [[r["silos"].get(silo, {}).get(metric, float("nan")) for r in rounds]
                for silo in silos]
    alone_by_silo = (metrics.get("silo_alone") or {}).get("silos", {})
    alone = [alone_by_silo[silo][metric] if silo in alone_by_silo else float("nan")
             for silo in silos]
    if len(silos) <= MAX_SILO_LINES:
        _draw_each_silo(ax, xs, silos, per_silo, alone)
    else:
        _draw_silo_spread(ax, xs, per_silo, alone)
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
    return fig


def _draw_each_silo(ax: plt.Axes, xs: list[int], silos: list[str],
                    per_silo: list[list[float]], alone: list[float]) -> None:
    """One coloured line per silo, and its silo-alone baseline dotted in the same colour."""
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (silo, ys, alone_value) in enumerate(zip(silos, per_silo, alone)):
        colour = colours[i % len(colours)]
        ax.plot(xs, ys, marker="o", color=colour, label=f"{silo} (federated)")
        if not np.isnan(alone_value):
            ax.axhline(alone_value, color=colour, linestyle=":", linewidth=1,
                       label=f"{silo} alone")


def _draw_silo_spread(ax: plt.Axes, xs: list[int], per_silo: list[list[float]],
                      alone: list[float]) -> None:
    """The silos' median and 10-90th percentile band, federated per round and alone.

    A silo whose metric is undefined (no positives in its test set) is left
    out of that round's statistics rather than counted as zero.
    """
    colour = plt.rcParams["axes.prop_cycle"].by_key()["color"][0]
    values = np.asarray(per_silo, dtype=float)  # silos x rounds
    n = len(per_silo)
    with warnings.catch_warnings():  # a round where no silo has the metric: NaN, drawn as a gap
        warnings.simplefilter("ignore", RuntimeWarning)
        low, median, high = np.nanpercentile(values, [10, 50, 90], axis=0)
    ax.fill_between(xs, low, high, color=colour, alpha=0.2,
                    label=f"silos, federated: 10-90th percentile ({n} silos)")
    ax.plot(xs, median, marker="o", color=colour, label="silos, federated: median")
    alone_values = np.asarray(alone, dtype=float)
    alone_values = alone_values[~np.isnan(alone_values)]
    if alone_values.size:
        a_low, a_median, a_high = np.percentile(alone_values, [10, 50, 90])
        ax.axhspan(a_low, a_high, color="grey", alpha=0.15,
                   label=f"silos alone: 10-90th percentile ({alone_values.size} silos)")
        ax.axhline(a_median, color="grey", linestyle=":", linewidth=1.5,
                   label="silos alone: median")


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
