"""The membership-inference audit of trained propensity models (simulation only).

Members are the customers each silo trained on; non-members are customers of
the same lines, from the same population and snapshot date, that the
simulation held out of every silo (:mod:`.shards`). The attack scores each
customer by minus the model's loss on their training example (a model that
memorised its members fits them better), picks its threshold on one half of
each group and is measured on the other (:mod:`.mia`).

Against a DP model the attack's empirical epsilon lower bound must stay at or
below the accountant's epsilon: a bound above it is proof that the claimed
guarantee does not hold (a bug in the accounting, the clipping or the noise),
so :func:`check_bounds` fails loudly. Against the non-private control the
attack must work; otherwise a low attack score against the private models
proves nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedprofile.client.features import SiloData
from fedprofile.client.serving import load_propensity
from fedprofile.models.metrics import log_losses
from fedprofile.models.training import predict_proba

from .mia import AttackResult, loss_threshold_attack
from .scenario import AuditViolation

__all__ = ["AuditViolation", "MembershipData", "attack_model", "check_bounds", "control_verdict"]


@dataclass(frozen=True)
class MembershipData:
    """The training examples of members and of held-out non-members, features and labels."""

    member_x: np.ndarray
    member_y: np.ndarray
    non_member_x: np.ndarray
    non_member_y: np.ndarray

    @classmethod
    def of(cls, members: Sequence[SiloData], non_members: Sequence[SiloData]) -> MembershipData:
        """Every silo's training snapshot (members) and every held-out store's (non-members)."""
        if not non_members:
            raise ValueError("the membership audit needs held-out customers ([silos] holdout > 0)")
        return cls(np.concatenate([d.train.x for d in members]),
                   np.concatenate([d.train.y for d in members]),
                   np.concatenate([d.train.x for d in non_members]),
                   np.concatenate([d.train.y for d in non_members]))


def attack_model(model_file: Path, data: MembershipData, *, delta: float, confidence: float,
                 low_fprs: Sequence[float], seed: int) -> AttackResult:
    """The loss-threshold attack against one trained propensity model."""
    model = load_propensity(model_file)
    member_loss = log_losses(data.member_y, predict_proba(model, data.member_x))
    non_member_loss = log_losses(data.non_member_y, predict_proba(model, data.non_member_x))
    return loss_threshold_attack(-member_loss, -non_member_loss, delta=delta,
                                 confidence=confidence, fprs=tuple(low_fprs), seed=seed)


def check_bounds(audits: Sequence[dict[str, Any]]) -> list[str]:
    """Each audited DP model whose empirical lower bound exceeds its accountant's epsilon.

    ``audits`` are rows with ``epsilon`` (the planned level, None for no DP),
    ``seed``, ``claimed_epsilon`` and ``epsilon_lower_bound``. Returns one line
    per violation; an empty list means every claim survived the attack.
    """
    return [f"propensity model at {a['level']} (seed {a['seed']}): the attack proves "
            f"epsilon >= {a['epsilon_lower_bound']:.3f} with {a['confidence']:.0%} confidence, "
            f"but the accountant claims {a['claimed_epsilon']:.3f}"
            for a in audits
            if a["claimed_epsilon"] is not None
            and a["epsilon_lower_bound"] > a["claimed_epsilon"]]


def control_verdict(audits: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Did the attack work against the non-private control? (Otherwise the audit is inconclusive.)"""
    controls = [a for a in audits if a["epsilon"] is None]
    working = [a for a in controls if a["works"]]
    return {"models": len(controls), "attack_works": len(working),
            "conclusive": bool(controls) and len(working) == len(controls),
            "best_auc": max((a["auc"] for a in controls), default=None)}
