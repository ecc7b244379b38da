"""Campaign pictures: did the treated group convert more, and does the model target well?

Two figures a campaign review needs: the conversion rate of treated vs
control with Wilson intervals (so a small control group *looks* uncertain),
and the Qini curves of several targetings against random targeting. Files
only (Agg backend), written atomically so a dashboard never reads half a PNG.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
from numpy.typing import ArrayLike

matplotlib.use("Agg")  # files only; no display needed (servers, CI)
import matplotlib.pyplot as plt  # noqa: E402

from .plots import save_figure  # noqa: E402
from fedprofile.models.abtest import CampaignReport  # noqa: E402


def plot_conversion_by_group(report: CampaignReport, path: Path | str) -> Path:
    """Bar chart of treated and control conversion rates with Wilson intervals.

    The title carries the absolute lift with its interval and the p-value, the
    three numbers a reader should take away.
    """
    if not isinstance(report, CampaignReport):
        raise ValueError(f"report must be a CampaignReport, got {type(report).__name__}")
    groups = (("treated", report.treated, "tab:blue"), ("control", report.control, "tab:gray"))
    rates = np.array([g.rate for _, g, _ in groups]) * 100.0
    lower = rates - np.array([g.rate_ci[0] for _, g, _ in groups]) * 100.0
    upper = np.array([g.rate_ci[1] for _, g, _ in groups]) * 100.0 - rates
    fig, ax = plt.subplots(figsize=(6, 4.8), dpi=110)
    ax.bar([0, 1], rates, yerr=np.vstack([lower, upper]), capsize=8,
           color=[c for _, _, c in groups], alpha=0.85)
    for i, (_, g, _) in enumerate(groups):
        ax.annotate(f"{100.0 * g.rate:.1f}%\n{g.conversions:,}/{g.n:,}", (i, 100.0 * g.rate_ci[1]),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=9)
    ax.set_xticks([0, 1], [name for name, _, _ in groups])
    t = report.test
    level = f"{100.0 * t.confidence:g}%"
    ax.set_ylabel(f"conversion rate (%), {level} Wilson interval")
    ax.set_ylim(0, max(100.0 * report.treated.rate_ci[1], 100.0 * report.control.rate_ci[1]) * 1.3
                or 1.0)
    lo, hi = t.difference_ci
    ax.set_title(f"Lift {100.0 * t.difference:+.1f} pp ({level} CI {100.0 * lo:+.1f} to "
                 f"{100.0 * hi:+.1f}), p = {t.p_value:.3g}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def plot_qini(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], path: Path | str,
              ylabel: str = "incremental conversions (Qini)",
              title: str = "Qini curves: incremental conversions by targeting depth") -> Path:
    """Qini curves (fraction targeted, incremental conversions) of several targetings.

    Each entry is what :func:`fedprofile.models.uplift.qini_curve` returns.
    Random targeting is the straight line from the origin to the curve's end:
    one dashed black line when all curves end at the same point (one
    population), otherwise one per curve in its colour.
    """
    if not curves:
        raise ValueError("curves must name at least one (x, qini) curve")
    checked: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, pair in curves.items():
        try:
            x, q = (np.asarray(v, dtype=np.float64) for v in pair)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"curves[{name!r}] must be a pair of numeric arrays (x, qini)") from exc
        if x.ndim != 1 or x.shape != q.shape or x.size < 2:
            raise ValueError(f"curves[{name!r}] must be two 1-D arrays of equal length >= 2")
        checked[name] = (x, q)
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ends = {(float(x[-1]), float(q[-1])) for x, q in checked.values()}
    shared_end = len(ends) == 1 or np.allclose(np.array(sorted(ends)), sorted(ends)[0])
    for i, (name, (x, q)) in enumerate(checked.items()):
        colour = colours[i % len(colours)]
        ax.plot(x, q, color=colour, linewidth=2, label=name)
        if not shared_end:
            ax.plot([0.0, x[-1]], [0.0, q[-1]], color=colour, linestyle="--", linewidth=1,
                    label=f"{name}: random targeting")
    if shared_end:
        x_end, q_end = sorted(ends)[0]
        ax.plot([0.0, x_end], [0.0, q_end], color="black", linestyle="--", linewidth=1,
                label="random targeting")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_xlabel("fraction of customers targeted (highest score first)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, Path(path))
