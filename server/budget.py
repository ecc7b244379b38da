"""Charging a DP run to the privacy-budget ledger: reserve before training, settle after.

Every silo first reports what the whole run would cost it (its plan: noise,
sampling rate, steps, and the epsilon they imply). The server reserves all of
it in the ledger in order, under the caps per silo and purpose; if any silo
would go over its cap, the reservations made so far are released and the run
is refused, before a single training step. After training, each silo's
reservation is settled with what it actually spent (as it reported it, and
recomputed here from the reported mechanism), or released if it never trained.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedprofile.config import ConfigError, TrainConfig
from fedprofile.privacy.accounting import MechanismStep, epsilon
from fedprofile.privacy.ledger import (Ledger, Reservation, default_key_file,
                                       ledger_key_from_file)

MECHANISM = "dp-sgd"
PRIVACY_UNIT = "customer"


@dataclass
class Budget:
    """The open reservations of one run, by silo."""

    ledger: Ledger
    run_id: str
    reservations: dict[str, Reservation] = field(default_factory=dict)
    spent: dict[str, dict[str, float]] = field(default_factory=dict)  # set by the run

    def planned_round(self, rounds: int) -> dict[str, tuple[MechanismStep, float]]:
        """Each reserved silo's planned mechanism for one of ``rounds`` rounds, and its clip norm."""
        out = {}
        for silo, reservation in self.reservations.items():
            params = reservation.params
            out[silo] = (MechanismStep(float(params["noise_multiplier"]),
                                       float(params["sample_rate"]),
                                       int(params["steps"]) // max(rounds, 1)),
                         float(params["clip_norm"]))
        return out

    def single_sigma(self) -> float:
        """The one noise multiplier every silo planned (they plan from one config and formula)."""
        sigmas = {float(r.params["noise_multiplier"]) for r in self.reservations.values()}
        if len(sigmas) != 1:
            raise RuntimeError(f"silos planned different noise multipliers: {sorted(sigmas)}")
        return sigmas.pop()


def ledger_paths(cfg: TrainConfig) -> tuple[Path, Path]:
    ledger = Path(cfg.ledger).expanduser() if cfg.ledger else cfg.workspace_path / "ledger" / "privacy-ledger.sqlite"
    key = Path(cfg.ledger_key_file).expanduser() if cfg.ledger_key_file else default_key_file(ledger)
    return ledger, key


def require_ledger(cfg: TrainConfig) -> None:
    """Fail before any Flower process starts when a DP run has no ledger to be charged to."""
    if not cfg.charges_ledger:
        return
    path, key_file = ledger_paths(cfg)
    if not path.is_file():
        raise ConfigError(f"DP runs are charged to a privacy-budget ledger, and there is none at "
                          f"{path}: create it with `fedprofile ledger init --ledger {path}` and "
                          f"set caps with `fedprofile ledger cap`")
    if not key_file.is_file():
        raise ConfigError(f"the ledger's key file {key_file} does not exist (set ledger-key-file)")


def collect_plans(grid: Grid, config: ConfigRecord, timeout: float,
                  nodes: list[int] | None = None) -> dict[str, ConfigRecord]:
    """Every node's (or ``nodes``') plan for the run, by silo name."""
    targets = list(grid.get_node_ids()) if nodes is None else nodes
    messages = [Message(content=RecordDict({"config": config}), message_type="query.dp_plan",
                        dst_node_id=n) for n in targets]
    plans: dict[str, ConfigRecord] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise ConfigError(f"a silo refused the DP plan: {reply.error.reason}")
        plan = reply.content["plan"]
        plans[str(plan["name"])] = plan
    if len(plans) != len(targets):  # a silo left without a reservation must not train
        raise ConfigError(f"only {len(plans)} of {len(targets)} silos sent a DP plan within "
                          f"{timeout:.0f}s")
    return plans


@contextmanager
def charged(grid: Grid, cfg: TrainConfig, config: ConfigRecord, run_id: str,
            model_id: str, nodes: list[int] | None = None) -> Iterator[Budget]:
    """Reserve every silo's (or ``nodes``') planned epsilon; settle or release when the block ends."""
    path, key_file = ledger_paths(cfg)
    if not path.is_file():
        raise ConfigError(f"DP runs are charged to a privacy-budget ledger, and there is none at "
                          f"{path}: create it with `fedprofile ledger init` and set caps")
    plans = collect_plans(grid, config, cfg.round_timeout, nodes)
    operator = getpass.getuser()
    with Ledger.open(path, ledger_key_from_file(key_file)) as ledger:
        budget = Budget(ledger, run_id)
        try:
            for silo, plan in sorted(plans.items()):
                planned = max(float(plan["epsilon-rdp"]), float(plan["epsilon-prv"]))
                budget.reservations[silo] = ledger.reserve(
                    run_id=run_id, silo=silo, purpose=cfg.effective_purpose, epsilon_planned=planned,
                    delta=float(plan["delta"]), mechanism=str(plan.get("mechanism", MECHANISM)),
                    params={"noise_multiplier": float(plan["noise-multiplier"]),
                            "sample_rate": float(plan["sample-rate"]),
                            "steps": int(plan["steps"]),
                            "clip_norm": float(plan.get("clip-norm", cfg.dp_clip_norm)),
                            "customers": int(plan["customers"])},
                    privacy_unit=PRIVACY_UNIT, model_id=model_id, operator=operator,
                    n_records=int(plan["customers"]))
                log(INFO, "fedprofile: budget reserved for %s: epsilon %.3f (%s, cap remaining "
                    "%.3f)", silo, planned, cfg.effective_purpose, ledger.remaining(silo, cfg.effective_purpose))
        except BaseException:
            for reservation in budget.reservations.values():
                ledger.release(reservation, "run refused before training: another silo's "
                               "budget would be exceeded", operator=operator)
            raise
        try:
            yield budget
        finally:
            for silo, reservation in budget.reservations.items():
                if silo in budget.spent:
                    _settle(ledger, reservation, budget.spent[silo], operator,
                            customers=int(plans[silo]["customers"]))
                else:
                    ledger.release(reservation, "the silo did not train in this run",
                                   operator=operator)


def mechanism_spent(history: Sequence[MechanismStep], delta: float,
                    clip_norm: float) -> dict[str, float]:
    """What a run of (sub)sampled Gaussian mechanisms cost, in the form :func:`charged` settles.

    ``history`` composes in order; the summary's noise multiplier and sample
    rate are the last step's (a run uses one mechanism throughout).
    """
    if not history:
        raise ValueError("nothing was spent: no mechanism step")
    prv = epsilon(history, delta, "prv")
    return {"noise-multiplier": history[-1].noise_multiplier,
            "sample-rate": history[-1].sample_rate,
            "steps": float(sum(step.steps for step in history)), "delta": delta,
            "epsilon-rdp": epsilon(history, delta, "rdp"), "epsilon-prv": prv,
            "clip-norm": clip_norm}


def gaussian_spent(noise_multiplier: float, delta: float, releases: int,
                   clip_norm: float) -> dict[str, float]:
    """``releases`` Gaussian releases over the whole silo (sample rate 1)."""
    return mechanism_spent([MechanismStep(noise_multiplier, 1.0, releases)], delta, clip_norm)


def _settle(ledger: Ledger, reservation: Reservation, spent: dict[str, float],
            operator: str, customers: int) -> None:
    # ``spent`` is composed by the server (mechanism_spent) from what each silo
    # reported per round or per release, never a silo's own running total.
    by_accountant = {"rdp": spent["epsilon-rdp"], "prv": spent["epsilon-prv"]}
    ledger.settle(reservation, by_accountant,
                  params={"noise_multiplier": spent["noise-multiplier"],
                          "sample_rate": spent["sample-rate"], "steps": int(spent["steps"]),
                          "clip_norm": spent["clip-norm"], "customers": customers},
                  operator=operator)


SERVER_DP_SILO = "federation"
"""Ledger name for the server-side guarantee, which protects a whole silo's contribution."""


@contextmanager
def charged_server_dp(cfg: TrainConfig, run_id: str, model_id: str, n_silos: int
                      ) -> Iterator[dict[str, int]]:
    """Reserve the server-side DP-FedAvg guarantee; settle with the rounds that ran.

    Every silo takes part in every round (no sampling amplification), so the
    mechanism is a Gaussian one composed over rounds with sample rate 1; its
    unit is the silo, a different guarantee from the customer-level DP-SGD.
    """
    path, key_file = ledger_paths(cfg)
    if not path.is_file():
        raise ConfigError(f"server-side DP runs are charged to the privacy-budget ledger, and "
                          f"there is none at {path}: create it with `fedprofile ledger init`")
    delta = cfg.dp_delta
    sigma = cfg.server_dp_noise_multiplier
    params = {"noise_multiplier": sigma, "sample_rate": 1.0, "clip_norm": cfg.server_dp_clip_norm,
              "silos": n_silos, "aggregation": "uniform FedAvg"}
    planned = epsilon([MechanismStep(sigma, 1.0, cfg.num_server_rounds)], delta, "rdp")
    operator = getpass.getuser()
    progress = {"rounds": 0}
    with Ledger.open(path, ledger_key_from_file(key_file)) as ledger:
        reservation = ledger.reserve(
            run_id=run_id, silo=SERVER_DP_SILO, purpose=cfg.effective_purpose, epsilon_planned=planned,
            delta=delta, mechanism="dp-fedavg-server",
            params={**params, "steps": cfg.num_server_rounds}, privacy_unit="silo",
            model_id=model_id, operator=operator)
        try:
            yield progress
        finally:
            if progress["rounds"] == 0:
                ledger.release(reservation, "no round ran", operator=operator)
            else:
                ran = gaussian_spent(sigma, delta, progress["rounds"], cfg.server_dp_clip_norm)
                ledger.settle(reservation, {"rdp": ran["epsilon-rdp"], "prv": ran["epsilon-prv"]},
                              params={**params, "steps": progress["rounds"]}, operator=operator)
