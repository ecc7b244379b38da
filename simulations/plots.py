"""Plots of a training run, for people who would rather see than read a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (servers, CI)
import matplotlib.pyplot as plt  # noqa: E402


def plot_auc_by_round(metrics: dict[str, Any], path: Path) -> Path:
    """AUC per round for each silo and overall, against the oracle and silo-alone."""
    rounds = [r for r in metrics["rounds"] if r.get("overall")]
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=110)
    xs = [r["round"] for r in rounds]
    silos = sorted({s for r in rounds for s in r["silos"]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, silo in enumerate(silos):
        colour = colours[i % len(colours)]
        ys = [r["silos"].get(silo, {}).get("auc", float("nan")) for r in rounds]
        ax.plot(xs, ys, marker="o", color=colour, label=f"{silo} (federated)")
        alone = metrics.get("silo_alone", {}).get("silos", {}).get(silo)
        if alone:
            ax.axhline(alone["auc"], color=colour, linestyle=":", linewidth=1,
                       label=f"{silo} alone")
    ax.plot(xs, [r["overall"]["auc"] for r in rounds], marker="s", color="black",
            linewidth=2, label="overall (federated)")
    oracle = metrics.get("oracle")
    if oracle:
        ax.axhline(oracle["overall"]["auc"], color="black", linestyle="--", linewidth=1,
                   label="overall, centralized oracle")
    ax.set_xlabel("federated round")
    ax.set_ylabel("test AUC (out-of-time)")
    ax.set_title("Purchase propensity: federated vs centralized vs silo-alone")
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
