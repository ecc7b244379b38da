"""The by-round training plot stays readable from 3 silos to 100."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from fedprofile.simulations.plots import (
    MAX_SILO_LINES,
    metric_by_round_figure,
    plot_metric_by_round,
)


def _metrics(n_silos: int, rounds: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    silos = [f"flights-{i:02d}" for i in range(n_silos)]
    return {
        "rounds": [
            {"round": r, "overall": {"auc": 0.6 + 0.02 * r},
             "silos": {s: {"auc": float(0.5 + 0.02 * r + rng.uniform(0, 0.1))} for s in silos}}
            for r in range(1, rounds + 1)
        ],
        "silo_alone": {"silos": {s: {"auc": float(rng.uniform(0.55, 0.65))} for s in silos}},
        "oracle": {"overall": {"auc": 0.85}},
    }


def _legend(fig: plt.Figure) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_a_few_silos_get_a_line_and_a_baseline_each() -> None:
    fig = metric_by_round_figure(_metrics(3))
    try:
        labels = _legend(fig)
    finally:
        plt.close(fig)
    for i in range(3):
        assert f"flights-{i:02d} (federated)" in labels
        assert f"flights-{i:02d} alone" in labels
    assert "overall (federated)" in labels and "overall, centralized oracle" in labels


def test_a_hundred_silos_are_drawn_as_median_and_band_without_layout_warnings() -> None:
    metrics = _metrics(100)
    # one silo with no positives in its test set: its AUC is undefined, not zero
    metrics["rounds"][0]["silos"]["flights-00"]["auc"] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tight_layout fails with a warning when the legend overflows
        fig = metric_by_round_figure(metrics)
    try:
        labels = _legend(fig)
        assert len(labels) <= MAX_SILO_LINES
        assert not any(label.endswith("(federated)") and label.startswith("flights-")
                       for label in labels)
        assert "silos, federated: 10-90th percentile (100 silos)" in labels
        median_line = next(line for line in fig.axes[0].get_lines()
                           if line.get_label() == "silos, federated: median")
        expected = [np.nanmedian([r["silos"][s]["auc"] for s in r["silos"]])
                    for r in metrics["rounds"]]
        np.testing.assert_allclose(median_line.get_ydata(), expected)
        alone_median = next(line for line in fig.axes[0].get_lines()
                            if line.get_label() == "silos alone: median")
        assert alone_median.get_ydata()[0] == pytest.approx(
            np.median([v["auc"] for v in metrics["silo_alone"]["silos"].values()]))
    finally:
        plt.close(fig)


def test_the_plot_is_written_as_a_png(tmp_path: Path) -> None:
    out = plot_metric_by_round(_metrics(100), tmp_path / "auc_by_round.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
