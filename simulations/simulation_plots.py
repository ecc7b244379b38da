"""Plots of a simulation: utility against epsilon, and what the membership attack achieved."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .plots import plt, save_figure
from .sweep import METRIC_LABELS, UTILITY


def _x(epsilon: float | None, epsilons: Sequence[float]) -> float:
    """Where a level sits on a log axis; no-DP to the right of the largest epsilon."""
    return epsilon if epsilon is not None else (max(epsilons) * 4 if epsilons else 1.0)


def plot_utility(rows: Sequence[dict[str, Any]], model: str, path: Path,
                 tolerance: float) -> Path:
    """One panel per utility metric: mean over seeds with its interval, against epsilon."""
    metrics = UTILITY[model]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4), dpi=110)
    mine = [r for r in rows if r["model"] == model]
    epsilons = sorted({r["epsilon"] for r in mine if r["epsilon"] is not None})
    for ax, metric in zip(axes, metrics):
        private = sorted((r for r in mine if r["metric"] == metric and r["epsilon"] is not None),
                         key=lambda r: r["epsilon"])
        xs = [r["epsilon"] for r in private]
        ys = [r["mean"] for r in private]
        err = [[0 if math.isnan(r["low"]) else r["mean"] - r["low"] for r in private],
               [0 if math.isnan(r["high"]) else r["high"] - r["mean"] for r in private]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label="DP-SGD (mean, CI over seeds)")
        reference = next((r for r in mine if r["metric"] == metric and r["epsilon"] is None), None)
        if reference is not None:
            ax.axhline(reference["mean"], color="black", linestyle="--", label="no DP")
            ax.axhline((1 - tolerance) * reference["mean"], color="grey", linestyle=":",
                       label=f"{1 - tolerance:.0%} of no DP")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
        ax.set_xlabel("epsilon per customer (delta fixed)")
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{model}: utility against privacy")
    fig.tight_layout()
    return save_figure(fig, path)


ATTACK_COLOURS = {"canary": "tab:red", "population": "tab:blue"}


def plot_audit(audits: Sequence[dict[str, Any]], path: Path) -> Path:
    """Left: attack AUC per level and attack. Right: empirical epsilon lower bounds and the claims."""
    epsilons = sorted({a["epsilon"] for a in audits if a["epsilon"] is not None})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    kinds = sorted({a["attack"] for a in audits})
    for i, kind in enumerate(kinds):
        colour = ATTACK_COLOURS.get(kind, "tab:green")
        mine = [a for a in audits if a["attack"] == kind]
        shift = 1 + 0.06 * (i - (len(kinds) - 1) / 2)  # side by side on the log axis
        for j, a in enumerate(mine):
            x = _x(a["epsilon"], epsilons) * shift
            left.errorbar([x], [a["auc"]], yerr=[[a["auc"] - a["auc_ci"][0]],
                                                 [a["auc_ci"][1] - a["auc"]]],
                          marker="o", color=colour, capsize=3,
                          label=f"{kind} attack" if j == 0 else None)
            right.scatter([x], [a["epsilon_lower_bound"]], color=colour, zorder=3,
                          label=f"{kind}: empirical lower bound" if j == 0 else None)
    claims = {(a["epsilon"], a["claimed_epsilon"]) for a in audits if a["claimed_epsilon"] is not None}
    for k, (eps, claim) in enumerate(sorted(claims)):
        right.scatter([_x(eps, epsilons)], [claim], color="black", marker="_", s=400,
                      label="accountant's epsilon" if k == 0 else None)
    ticks = epsilons + ([_x(None, epsilons)] if any(a["epsilon"] is None for a in audits) else [])
    labels = [f"{e:g}" for e in epsilons] + (["no DP"] if len(ticks) > len(epsilons) else [])
    for ax in (left, right):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(ticks, labels)
        ax.set_xlabel("planned epsilon per customer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    left.axhline(0.5, color="grey", linestyle=":")
    left.set_ylabel("membership attack AUC (held-out half)")
    left.set_title("Loss-threshold attack: AUC and interval")
    tops = [a["epsilon_lower_bound"] for a in audits] + [c for _, c in claims]
    right.set_ylim(-0.05 * max(tops + [1.0]), 1.15 * max(tops + [1.0]))
    right.set_ylabel("epsilon")
    right.set_title("Empirical lower bounds vs the accountant")
    fig.tight_layout()
    return save_figure(fig, path)
