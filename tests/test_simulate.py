"""`fedprofile simulate` end to end: a tiny scenario, run twice, gives the same numbers and a report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedprofile.cli import EXIT_AUDIT, main
from fedprofile.simulations.scenario import AuditViolation

TINY = """
name = "tiny"
seeds = [0]
[platform]
customers = 600
[silos]
count = 3
holdout = 0.4
[training]
models = ["propensity"]
rounds = 3
local_epochs = 10
hidden_units = 128
[dp]
epsilons = [4.0]
[release]
k_min = 5
segments = false   # the segment report's rows are tested on their own (test_simulation_parts)
"""


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("simulate")
    scenario = root / "tiny.toml"
    scenario.write_text(TINY)
    outs = [root / "first", root / "second"]
    logs = []
    for out in outs:
        done = subprocess.run([sys.executable, "-m", "fedprofile", "simulate", str(scenario),
                               "--out", str(out)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        logs.append(done.stdout)
    return outs[0], outs[1], logs[0]


def test_same_scenario_same_numbers(two_runs: tuple[Path, Path, str]) -> None:
    first, second, _ = two_runs
    a = json.loads((first / "results.json").read_text())
    b = json.loads((second / "results.json").read_text())
    assert a == b  # DP noise included: the simulated silos seed it from the scenario
    assert [p["epsilon"] for p in a["points"]] == [None, 4.0]


def test_the_run_directory_has_json_csv_plots_and_report(two_runs: tuple[Path, Path, str]) -> None:
    first, _, log = two_runs
    for name in ("results.json", "timing.json", "scenario.toml", "sweep.csv", "points.csv",
                 "audit.csv", "releases.csv", "smallest_epsilon.csv", "utility_propensity.png",
                 "audit.png", "report.html"):
        assert (first / name).is_file(), name
    assert not (first / "work").exists()  # the synthetic silos are removed unless --keep-work
    assert "[1/2] propensity, no-dp, seed 0" in log and "[2/2] propensity, eps-4, seed 0" in log
    results = json.loads((first / "results.json").read_text())
    [dp_point] = [p for p in results["points"] if p["epsilon"] == 4.0]
    assert 0 < dp_point["spent_epsilon"] <= 4.0  # the point's ledger capped it at 4
    # 600 people and 2 rounds make a weak model (DP on 200 customers a silo, weaker still);
    # the sweep reports it as measured
    assert 0 <= dp_point["utility"]["auc"] <= 1 and dp_point["utility"]["lift@10%"] >= 0
    audit = results["audit"]
    assert len(audit["models"]) == 4 and audit["violations"] == []
    assert {a["attack"] for a in audit["models"]} == {"canary", "population"}
    # the no-DP control: the canary attack beats guessing (its AUC interval is above 0.5)
    assert audit["control"] == {"attack": "canary", "models": 1, "attack_works": 1,
                                "conclusive": True, "best_auc": audit["control"]["best_auc"]}
    for row in audit["models"]:
        assert 0 <= row["epsilon_lower_bound"] and row["members"] > 100 and row["non_members"] > 50
        assert set(row["tpr_at_fpr"]) == {"0.01", "0.001"}
    releases = results["releases"]["artifacts"]
    breakdowns = [r for r in releases if r["artifact"].startswith("customer breakdown")]
    assert len(breakdowns) == 3
    for r in breakdowns:  # a tiny platform has small groups: they are withheld, never shown
        assert r["smallest_group_before"] < 5 and r["suppressed_groups"] > 0
        assert r["smallest_group_released"] is None or r["smallest_group_released"] >= 5
    # the marketing cases' releases: case 1's PSI and played-out campaign, case 2's tier plans
    by_name = {r["artifact"]: r for r in releases}
    for name in ("PSI set sizes (case 1: flights x datapacks)",
                 "audience counts (case 1: flights x datapacks)",
                 "campaign plan (case 1: case-1-cross-sell, flights)",
                 "campaign A/B report (case 1: case-1-cross-sell, flights)",
                 "campaign report by offer (case-1-cross-sell)",
                 *(f"campaign plan (case 2: case-2-retention, {line})"
                   for line in ("datapacks", "flights", "hotels"))):
        assert name in by_name, name
    by_offer = by_name["campaign report by offer (case-1-cross-sell)"]
    assert by_offer["suppressed_groups"] > 0 and by_offer["smallest_group_released"] >= 5
    for r in releases:  # a count published as it is gets flagged when under k, never hidden
        if r["suppressed_groups"] == 0 and r["smallest_group_released"] is not None:
            assert (r["smallest_group_released"] < 5) == r["status"].startswith("below k"), r
    report = json.loads((first / "points" / "campaigns" / "case-1-cross-sell"
                         / "campaign-report.json").read_text())
    assert report["line"] == "datapacks" and report["by_offer"]["k_min"] == 5
    page = (first / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "http" not in page.replace(
        "http-equiv", "")
    for line in results["summary"]:
        assert line.replace("'", "&#x27;") in page
    assert any("per customer per purpose" in s or "no epsilon in the grid" in s
               for s in results["summary"])
    assert any("canary attack works against the non-private control" in s
               for s in results["summary"])


def test_a_contradicted_privacy_claim_fails_loudly(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    def violated(*_a: object, **_k: object) -> None:
        raise AuditViolation("propensity model at eps-1 (seed 0): the attack proves epsilon "
                             ">= 2.000 with 95% confidence, but the accountant claims 1.000")

    monkeypatch.setattr("fedprofile.simulations.simulate.run_scenario", violated)
    scenario = tmp_path / "s.toml"
    scenario.write_text(TINY)
    assert main(["simulate", str(scenario), "--out", str(tmp_path / "out")]) == EXIT_AUDIT
    assert "PRIVACY AUDIT FAILED" in capsys.readouterr().err


def test_a_bad_scenario_is_refused_before_any_work(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(TINY.replace("rounds = 3", "rounds = -1"))
    assert main(["simulate", str(scenario), "--out", str(tmp_path / "out")]) == 2
    assert f"{scenario}, line 11: training.rounds" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
