"""The membership-inference audit of trained propensity models (simulation only).

Two sets of members and non-members are attacked. Canaries (:mod:`.canaries`):
planted customers with coin-flip labels, each in training with probability
one half; a model fits a member canary only by remembering it, so this attack
is built to work against a non-private model. And the population: customers
each silo trained on against customers of the same lines, population and
snapshot date that the simulation held out of every silo (:mod:`.shards`).
The attack scores each by minus the model's loss on its training example,
picks its threshold on one half of each group and is measured on the other
(:mod:`.mia`).

Against a DP model the attack's empirical epsilon lower bound must stay at or
below the accountant's epsilon: a bound above it is proof that the claimed
guarantee does not hold (a bug in the accounting, the clipping or the noise),
so :func:`check_bounds` fails loudly. Against the non-private control the
canary attack must work; otherwise a low attack score against the private
models proves nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedprofile.client.features import FEATURE_NAMES, SiloData
from fedprofile.client.serving import load_propensity
from fedprofile.models.metrics import log_losses
from fedprofile.models.training import predict_proba

from .canaries import is_canary
from .mia import MIN_SCORES, AttackResult, loss_threshold_attack
from .scenario import AuditViolation

__all__ = ["ATTACKS", "AuditViolation", "MembershipData", "attack_model", "audit_sets",
           "check_bounds", "control_verdict"]


ATTACKS = ("canary", "population")
"""The audits run on each model: planted canaries (:mod:`.canaries`), and real customers."""


@dataclass(frozen=True)
class MembershipData:
    """The training examples of members and of held-out non-members, features and labels."""

    member_x: np.ndarray
    member_y: np.ndarray
    non_member_x: np.ndarray
    non_member_y: np.ndarray

    @classmethod
    def of(cls, members: Sequence[SiloData], non_members: Sequence[SiloData],
           canaries: bool) -> MembershipData:
        """Training-snapshot rows of the silos (members) and of the held-out stores (non-members).

        ``canaries``: only the planted canaries, else only real customers.
        """
        def rows(data: Sequence[SiloData]) -> tuple[np.ndarray, np.ndarray]:
            x = np.concatenate([d.train.x for d in data])
            y = np.concatenate([d.train.y for d in data])
            keep = is_canary(x, FEATURE_NAMES) == canaries
            return x[keep], y[keep]

        (mx, my), (nx, ny) = rows(members), rows(non_members)
        return cls(mx, my, nx, ny)

    @property
    def usable(self) -> bool:
        """Enough of each side for the attack's calibration and evaluation halves."""
        return min(len(self.member_y), len(self.non_member_y)) >= 2 * MIN_SCORES


def audit_sets(members: Sequence[SiloData], non_members: Sequence[SiloData]
               ) -> dict[str, MembershipData]:
    """The membership data of each attack that has members and non-members to work on."""
    sets = {kind: MembershipData.of(members, non_members, canaries=kind == "canary")
            for kind in ATTACKS} if non_members else {}
    return {kind: data for kind, data in sets.items() if data.usable}


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

    ``audits`` are rows with ``attack``, ``level``, ``seed``, ``confidence``,
    ``claimed_epsilon`` and ``epsilon_lower_bound``. Returns one line per
    violation; an empty list means every claim survived every attack.
    """
    return [f"propensity model at {a['level']} (seed {a['seed']}): the {a['attack']} attack "
            f"proves epsilon >= {a['epsilon_lower_bound']:.3f} with {a['confidence']:.0%} "
            f"confidence, but the accountant claims {a['claimed_epsilon']:.3f}"
            for a in audits
            if a["claimed_epsilon"] is not None
            and a["epsilon_lower_bound"] > a["claimed_epsilon"]]


def control_verdict(audits: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Did the strongest attack work against every non-private control? Else: inconclusive.

    The strongest attack is the canary attack when canaries were planted (it
    is built to work), else the attack on real customers.
    """
    kinds = {a["attack"] for a in audits}
    kind = "canary" if "canary" in kinds else "population"
    controls = [a for a in audits if a["epsilon"] is None and a["attack"] == kind]
    working = [a for a in controls if a["works"]]
    return {"attack": kind, "models": len(controls), "attack_works": len(working),
            "conclusive": bool(controls) and len(working) == len(controls),
            "best_auc": max((a["auc"] for a in controls), default=None)}
