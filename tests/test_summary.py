"""The demo's summary table shows every model, per silo and overall."""

from __future__ import annotations

from fedprofile.simulations.training import summary_table


def _m(auc: float, ll: float) -> dict[str, float]:
    return {"auc": auc, "log_loss": ll}


def test_summary_table_cells() -> None:
    metrics = {
        "federated": {"overall": _m(0.81, 0.3), "silos": {"a": _m(0.8, 0.31), "b": _m(0.82, 0.29)}},
        "oracle": {"overall": _m(0.815, 0.298), "silos": {"a": _m(0.805, 0.3), "b": _m(0.825, 0.28)}},
        "silo_alone": {"overall": _m(0.79, 0.32), "silos": {"a": _m(0.78, 0.33)}},
    }
    lines = summary_table(metrics).splitlines()
    fed = next(line for line in lines if line.startswith("federated"))
    assert "0.810 / 0.300" in fed and "0.800 / 0.310" in fed and "0.820 / 0.290" in fed
    alone = next(line for line in lines if line.startswith("each silo alone"))
    assert alone.rstrip().endswith("-"), "a silo without a baseline shows '-'"
    assert summary_table({"federated": metrics["federated"]}).count("\n") == 3
