"""A PSI job on one machine: the real Flower exchange, on the Simulation Engine.

The receiving silo's operator would read the outcome in their own silo
directory; this harness plays that operator too and reads the audience
summary (counts only) from there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedprofile.client.audiences import load_summary
from fedprofile.client.silos import list_silos
from fedprofile.config import ConfigError, TrainConfig
from fedprofile.files import atomic_write_json
from fedprofile.server.app import PSI_FILE

from .training import run_job


def run_psi_job(cfg: TrainConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``cfg``'s PSI between two silos under ``cfg.silos_path``; return what each side saw."""
    silos = {p.name: p for p in list_silos(cfg.silos_path)}
    for role, name in (("receiver", cfg.psi_receiver), ("sender", cfg.psi_sender)):
        if name not in silos:
            raise ConfigError(f"psi-{role} {name!r} is not a silo under {cfg.silos_path} "
                              f"(silos: {', '.join(sorted(silos))})")
    cfg, server_view = run_job(
        cfg, "psi", PSI_FILE,
        f"private set intersection on Flower's Simulation Engine: {cfg.psi_receiver} "
        f"(receiver, {cfg.psi_selection}) x {cfg.psi_sender} (sender), {cfg.psi_mode} mode",
        progress)
    run_dir = Path(server_view.pop("run_dir"))
    receiver_view = load_summary(silos[cfg.psi_receiver], cfg.psi_audience)
    result = {"run_dir": str(run_dir), "server": server_view, "receiver": receiver_view}
    atomic_write_json(run_dir / "psi-summary.json", result)
    return result
