"""Training configuration: one validated place for every knob of a federated run.

The same keys appear in ``pyproject.toml`` (``[tool.flwr.app.config]``, the
defaults ``flwr run .`` uses), on ``fedprofile train`` and in Flower's run
config, so a value is validated the same way wherever it comes from and a typo
fails before any silo is contacted.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

ENV_HOME = "FEDPROFILE_HOME"
JOBS = ("train", "psi", "segment", "regional", "joint")
MODELS = ("propensity", "recommender")
DEFAULT_PURPOSE = {"propensity": "propensity-training", "recommender": "recommendation-training"}
PSI_MODES = ("intersection", "cardinality")
PSI_SELECTIONS = ("all", "international-flyers")
DEFAULT_K_MIN = 10
"""Fewest customers a released group may describe (segment reports, regional counts, breakdowns)."""


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def default_workspace() -> Path:
    """Where fedprofile keeps platforms, silos and runs unless told otherwise."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".fedprofile").expanduser()


@dataclass(frozen=True)
class TrainConfig:
    """Everything a federated run needs to know: training, a PSI or a segmentation (``job``).

    Field names are the run-config keys with ``-`` replaced by ``_``.
    """

    num_server_rounds: int = 5
    local_epochs: int = 2
    batch_size: int = 256
    learning_rate: float = 0.01
    hidden_units: int = 32
    horizon_days: int = 30
    as_of: str = ""
    seed: int = 0
    min_silos: int = 2
    round_timeout: float = 600.0
    silo_alone: bool = True
    workspace: str = ""
    silos_dir: str = ""
    run_dir: str = ""
    key_file: str = ""
    leak_guard: bool = False
    job: str = "train"
    psi_receiver: str = "flights"
    psi_sender: str = "datapacks"
    psi_selection: str = "international-flyers"
    psi_mode: str = "intersection"
    psi_audience: str = "cross-sell-datapack"
    dp: bool = False
    dp_noise_multiplier: float = 1.0
    dp_target_epsilon: float = 0.0
    dp_clip_norm: float = 1.0
    dp_delta: float = 1e-5
    purpose: str = ""
    model: str = "propensity"
    rec_dim: int = 32
    rec_min_customers: int = 5
    segments: int = 6
    segment_iterations: int = 8
    segment_k_min: int = DEFAULT_K_MIN
    regional_top_k: int = 10
    regional_max_items: int = 3
    regional_k_min: int = DEFAULT_K_MIN
    joint_label_silo: str = "datapacks"
    joint_feature_silos: str = "flights"
    joint_horizon_days: int = 30
    joint_rounds: int = 6
    joint_clip: float = 1.0
    joint_noise_gradient: float = 4.0
    joint_noise_embedding: float = 0.0
    joint_audience: str = ""
    ledger: str = ""
    ledger_key_file: str = ""
    server_dp: bool = False
    server_dp_noise_multiplier: float = 1.0
    server_dp_clip_norm: float = 1.0

    def __post_init__(self) -> None:
        positive_ints = ("num_server_rounds", "local_epochs", "batch_size", "hidden_units",
                         "horizon_days", "min_silos", "rec_dim", "rec_min_customers",
                         "segments", "segment_iterations", "segment_k_min",
                         "regional_top_k", "regional_max_items", "regional_k_min",
                         "joint_horizon_days", "joint_rounds")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{_key(name)} must be a positive integer, got {value!r}")
        for name, low in (("learning_rate", "positive"), ("round_timeout", "positive"),
                          ("joint_clip", "positive"), ("joint_noise_gradient", "non-negative"),
                          ("joint_noise_embedding", "non-negative")):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not (value > 0 if low == "positive" else value >= 0)
                    or not math.isfinite(value)):
                raise ConfigError(f"{_key(name)} must be a {low} number (finite), got {value!r}")
        if self.learning_rate > 10:
            raise ConfigError(f"learning-rate {self.learning_rate} is implausibly large")
        for name in ("horizon_days", "joint_horizon_days"):
            if getattr(self, name) > 366:
                raise ConfigError(f"{_key(name)} must be at most 366, got {getattr(self, name)}")
        if self.as_of:
            try:
                dt.date.fromisoformat(self.as_of)
            except ValueError:
                raise ConfigError(f"as-of must be a date YYYY-MM-DD, got {self.as_of!r}") from None
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        choices = {"job": JOBS, "psi_mode": PSI_MODES, "psi_selection": PSI_SELECTIONS,
                   "model": MODELS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{_key(name)} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        for name in ("dp_noise_multiplier", "dp_clip_norm", "server_dp_noise_multiplier",
                     "server_dp_clip_norm"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{_key(name)} must be > 0, got {getattr(self, name)!r}")
        if not self.dp_target_epsilon >= 0 or self.dp_target_epsilon != self.dp_target_epsilon:
            raise ConfigError(f"dp-target-epsilon must be > 0 (or 0: use dp-noise-multiplier), "
                              f"got {self.dp_target_epsilon!r}")
        if not 0 < self.dp_delta < 1:
            raise ConfigError(f"dp-delta must be in (0, 1), got {self.dp_delta!r}")
        from fedprofile.privacy.ledger import PURPOSES

        if self.purpose and self.purpose not in PURPOSES:
            raise ConfigError(f"unknown purpose {self.purpose!r}; known: {', '.join(sorted(PURPOSES))}")
        if self.job == "segment" and not self.dp:
            raise ConfigError("segmentation releases noisy statistics only: set dp = true "
                              "(with dp-target-epsilon or dp-noise-multiplier); without noise a "
                              "small cluster's sums would be its customers' exact profiles")
        if self.job == "regional" and not self.dp:
            raise ConfigError("regional recommendation releases noisy counts only: set dp = true "
                              "(with dp-target-epsilon or dp-noise-multiplier); without noise a "
                              "small region's counts would tell what its few customers bought")
        if self.job == "psi" and self.psi_receiver == self.psi_sender:
            raise ConfigError("psi-receiver and psi-sender must be different silos")
        self._check_joint()

    @property
    def charges_ledger(self) -> bool:
        """Whether the run spends privacy budget (a joint run's label DP is always on)."""
        return self.dp or self.server_dp or self.job == "joint"

    @property
    def joint_features(self) -> tuple[str, ...]:
        """The feature silos of a joint (vertical) run, in the order of the top model's input."""
        return tuple(n.strip() for n in self.joint_feature_silos.split(",") if n.strip())

    def _check_joint(self) -> None:
        if self.job != "joint":
            return
        if self.joint_noise_gradient <= 0:
            raise ConfigError("joint-noise-gradient must be > 0: the gradients the label silo "
                              "sends are functions of its labels, and they only leave it noised "
                              "(label DP)")
        features = self.joint_features
        if not features:
            raise ConfigError("joint-feature-silos names no silo (a comma-separated list)")
        if self.joint_audience and len(features) != 1:
            raise ConfigError("joint-audience scores a feature silo's sealed audience: it needs "
                              "exactly one feature silo (the one holding the audience)")
        if len(set(features)) != len(features) or self.joint_label_silo in features:
            raise ConfigError(f"joint-feature-silos {self.joint_feature_silos!r} must name distinct "
                              f"silos other than the label silo {self.joint_label_silo!r}")

    @property
    def effective_purpose(self) -> str:
        """The ledger purpose this run is charged to: ``purpose``, else the job's own."""
        if self.purpose:
            return self.purpose
        if self.job == "regional":
            return "recommendation-training"
        if self.job == "joint":
            return "joint-model"
        return "segmentation" if self.job == "segment" else DEFAULT_PURPOSE[self.model]

    # -- conversions -------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from run-config style keys (``num-server-rounds``); unknown keys fail."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(
                    f"unknown setting {key!r}; known: {', '.join(sorted(map(_key, known)))}"
                )
            kwargs[name] = _coerce(key, value, type(getattr(cls(), name)))
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """Run-config style keys, for Flower's ``--run-config`` and for saving."""
        return {_key(k): v for k, v in asdict(self).items()}

    # -- derived paths -----------------------------------------------------
    PATH_FIELDS = ("workspace", "silos_dir", "run_dir", "key_file", "ledger", "ledger_key_file")

    def resolved(self, run_dir: Path | None = None) -> TrainConfig:
        """Every path made absolute (and ``run_dir`` set): Flower's processes run elsewhere."""
        values = {name: str(Path(getattr(self, name)).expanduser().resolve())
                  for name in self.PATH_FIELDS if getattr(self, name)}
        values["workspace"] = str(self.workspace_path.resolve())
        values["silos_dir"] = str(self.silos_path.resolve())
        if run_dir is not None:
            values["run_dir"] = str(Path(run_dir).resolve())
        return replace(self, **values)

    @property
    def workspace_path(self) -> Path:
        return Path(self.workspace).expanduser() if self.workspace else default_workspace()

    @property
    def silos_path(self) -> Path:
        return Path(self.silos_dir).expanduser() if self.silos_dir else self.workspace_path / "silos"

    def run_path(self, run_id: str) -> Path:
        return Path(self.run_dir).expanduser() if self.run_dir else self.workspace_path / "runs" / run_id


def _key(name: str) -> str:
    return name.replace("_", "-")


def _coerce(key: str, value: Any, target: type) -> Any:
    """Convert a value from TOML/CLI/Flower into the field's type, or fail clearly."""
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if target is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if target is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be text, got {value!r}")
    return value
