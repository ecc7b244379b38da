"""A joint (vertical) model run on one machine: the real Flower exchange, plus what only a simulation can add.

The Flower run (:mod:`fedprofile.server.joint`) reports the joint model's test
AUC and the label silo's own block alone. A simulation can also line the
silos' rows up directly (it holds every silo) and train, in process and on
the same snapshots, what no deployment could: each feature silo alone *with
the label silo's labels* and a centralised model on the pooled columns (the
oracle). Those use the reference protocol of
:mod:`fedprofile.models.split_learning` without noise
(:func:`fedprofile.simulations.vertical.compare_vertical`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedprofile.config import TrainConfig
from fedprofile.models.split_learning import VerticalConfig
from fedprofile.server.joint import JOINT_FILE

from .training import run_job
from .vertical import compare_vertical


def joint_reference(_silos: list[Path], cfg: TrainConfig, _result: dict[str, Any]
                    ) -> dict[str, Any]:
    """The same protocol in process, rows joined directly, without noise (simulation only)."""
    out = compare_vertical(cfg.silos_path, cfg.joint_features, cfg.joint_horizon_days,
                           cfg.as_of, noise_levels=(),
                           cfg=VerticalConfig(rounds=cfg.joint_rounds, clip_embedding=cfg.joint_clip,
                                              clip_gradient=cfg.joint_clip),
                           seeds=(cfg.seed,), say=lambda _m: None)
    return {"rows": out["rows"], "n_train": out["n_train"], "n_test": out["n_test"],
            "note": "in-process, rows joined on phone pseudonyms (simulation only), no noise; "
                    "'feature silo alone' uses the label silo's labels, which no deployment "
                    "gives it"}


def run_joint_job(cfg: TrainConfig, progress: Callable[[str], None] = print,
                  reference: bool = True) -> dict[str, Any]:
    """Run the joint model job over the silos under ``cfg.silos_path``; add the references."""
    _, result = run_job(
        cfg, "joint", JOINT_FILE,
        f"joint (vertical) model on Flower's Simulation Engine: labels in {cfg.joint_label_silo}, "
        f"features from {', '.join(cfg.joint_features)}, {cfg.joint_rounds} rounds, label DP "
        f"sigma={cfg.joint_noise_gradient:g}"
        + (f", embedding DP sigma={cfg.joint_noise_embedding:g}" if cfg.joint_noise_embedding else "")
        + ("; then simulation-only references (rows lined up in process, no noise)"
           if reference else ""),
        progress, ("simulation_reference", joint_reference) if reference else None)
    progress(format_result(result))
    return result


def format_result(result: dict[str, Any]) -> str:
    """The comparison a reader wants first, as a small table."""
    ev = result["evaluation"]
    privacy = result["privacy"]
    emb = privacy["embeddings"]
    eps_emb = emb.get("epsilon")
    lines = [f"  aligned rows: {result['sizes']['aligned_rows']:,} (train and test snapshots); "
             f"test positives {ev['test_positive_rate']:.1%}",
             f"  {'model':44s} test AUC",
             f"  {'joint, federated (this run)':44s} {ev['auc']:.3f}",
             f"  {'label silo alone (' + result['label_silo'] + ')':44s} {ev['label_alone_auc']:.3f}"]
    for row in result.get("simulation_reference", {}).get("rows", []):
        lines.append(f"  {row['model'] + ' [sim]':44s} {row['auc']:.3f}")
    grad = privacy["gradients"]
    lines.append(f"  privacy ({privacy['purpose']}, delta={privacy['delta']:g}): label DP on "
                 f"gradients epsilon {grad['epsilon']:.2f} for {grad['silo']}; embeddings "
                 + (json.dumps({k: round(v, 2) for k, v in eps_emb.items() if v is not None})
                    if isinstance(eps_emb, dict) else "clipped, not noised (no DP claim)"))
    return "\n".join(lines)
