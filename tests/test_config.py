"""Configuration: one validated place, and pyproject's Flower defaults agree with it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedprofile.config import ConfigError, TrainConfig
from fedprofile.server.local_superlink import app_pyproject

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_run_config_matches_defaults() -> None:
    """`flwr run .` and `fedprofile train` must start from the same defaults."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    flower = pyproject["tool"]["flwr"]["app"]
    assert TrainConfig.from_mapping(flower["config"]) == TrainConfig()
    assert flower["components"] == {"serverapp": "fedprofile.server.app:app",
                                    "clientapp": "fedprofile.client.app:app"}


def test_generated_app_pyproject_round_trips() -> None:
    generated = tomllib.loads(app_pyproject())
    assert generated["project"]["dependencies"] == []
    assert TrainConfig.from_mapping(generated["tool"]["flwr"]["app"]["config"]) == TrainConfig()


def test_from_mapping_coerces_cli_strings() -> None:
    cfg = TrainConfig.from_mapping({"num-server-rounds": "3", "learning-rate": "0.05",
                                    "silo-alone": "false"})
    assert (cfg.num_server_rounds, cfg.learning_rate, cfg.silo_alone) == (3, 0.05, False)


@pytest.mark.parametrize("values, text", [
    ({"num-server-rounds": 0}, "num-server-rounds must be a positive integer"),
    ({"learning-rate": -1.0}, "learning-rate must be a positive number"),
    ({"horizon-days": 1000}, "horizon-days must be at most 366"),
    ({"as-of": "31/12/2025"}, "as-of must be a date"),
    ({"batch-size": "many"}, "batch-size must be an integer"),
    ({"silo-alone": "perhaps"}, "silo-alone must be true or false"),
    ({"num-rounds": 3}, "unknown setting 'num-rounds'"),
    ({"purpose": "upselling"}, "unknown purpose 'upselling'"),
    ({"dp-delta": 1.0}, "dp-delta must be in"),
    ({"dp-noise-multiplier": 0.0}, "dp-noise-multiplier must be > 0"),
    ({"dp-target-epsilon": -1.0}, "dp-target-epsilon must be > 0"),
])
def test_bad_values_fail_clearly(values: dict[str, object], text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        TrainConfig.from_mapping(values)


def test_paths_follow_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDPROFILE_HOME", str(tmp_path))
    cfg = TrainConfig()
    assert cfg.silos_path == tmp_path / "silos"
    assert cfg.run_path("r1") == tmp_path / "runs" / "r1"
    assert TrainConfig(workspace=str(tmp_path / "w")).silos_path == tmp_path / "w" / "silos"
