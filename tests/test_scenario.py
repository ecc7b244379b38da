"""Scenario files: the packaged ones load, and every mistake names the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedprofile.simulations.scenario import (ScenarioError, load_scenario, packaged_scenario,
                                             scenario_from_dict)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_the_packaged_scenarios_load() -> None:
    default = load_scenario(packaged_scenario("default"))
    assert default.privacy_levels == [None, 1.0, 4.0, 16.0]
    assert set(default.training.models) == {"propensity", "recommender"}
    scale = load_scenario(packaged_scenario("scale"))
    assert scale.silos.count == 100 and scale.training.rounds == 10


def test_an_unknown_packaged_name_lists_the_known_ones() -> None:
    with pytest.raises(ScenarioError, match="packaged: default, scale"):
        packaged_scenario("nope")


@pytest.mark.parametrize("text, line, message", [
    ("seeds = [0]\n\n[training]\nrounds = 0\n", 4, "training.rounds: must be a positive integer"),
    ("[training]\nmodels = ['propensity', 'churn']\n", 2, "unknown model 'churn'"),
    ("[dp]\nepsilons = [1.0, 'x']\n", 2, "dp.epsilons: must be a list of float"),
    ("[dp]\nepsilon = [1.0]\n", 2, r"dp.epsilon: unknown key; known in \[dp\]"),
    ("[silos]\ncount = 2\n", 2, "silos.count: must be at least 3"),
    ("[silos]\nholdout = 0.0\n[audit]\ncanaries = 0\n", 2, "at least 0.05 when \\[audit\\]"),
    ("[audit]\ncanaries = -1\n", 2, "audit.canaries: must be between 0 and 5000"),
    ("seeds = [1, 1]\n", 1, "seeds: has a repeated value"),
    ("[release]\nquasi_identifiers = ['region', 'name']\n", 2, "unknown quasi-identifier 'name'"),
    ("[platform]\ncustomers = 'many'\n", 2, "platform.customers: must be an integer"),
])
def test_a_bad_value_names_file_line_and_key(tmp_path: Path, text: str, line: int,
                                             message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError, match=message) as err:
        load_scenario(path)
    assert str(err.value).startswith(f"{path}, line {line}: ")


def test_an_unknown_section_and_a_syntax_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"line 1: trainig: unknown key"):
        load_scenario(write(tmp_path, "[trainig]\nrounds = 2\n"))
    with pytest.raises(ScenarioError, match=r"not valid TOML: .*line 2"):
        load_scenario(write(tmp_path, "seeds = [0]\nname = \n"))
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")


def test_the_audit_needs_its_control_and_non_members() -> None:
    with pytest.raises(ScenarioError, match="needs the no-DP control"):
        scenario_from_dict({"dp": {"no_dp": False}})
    assert scenario_from_dict({"dp": {"no_dp": False}, "audit": {"enabled": False}}).privacy_levels \
        == [1.0, 4.0, 16.0]


def test_to_dict_round_trips() -> None:
    scenario = load_scenario(packaged_scenario("default"))
    assert scenario_from_dict(scenario.to_dict()) == scenario
