"""The joint (vertical) model on Flower: alignment, label DP, the ledger, and that it beats each silo."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from fedprofile.client.features import DAY, resolve_as_of
from fedprofile.client.store import SiloStore, date_to_epoch
from fedprofile.config import ConfigError, TrainConfig
from fedprofile.demo import build_silos
from fedprofile.privacy.accounting import MechanismStep, epsilon
from fedprofile.simulations.joint_run import run_joint_job
from fedprofile.simulations.platform import PlatformConfig, generate_platform

from .conftest import Domain, open_ledger, workspace_ledger


def _expected_rows(silos_dir: Path, label: str, features: tuple[str, ...]) -> int:
    """Opted-in customers with an unambiguous phone pseudonym in every silo, among those the
    label silo had by the training snapshot (30-day horizon: two horizons before its end)."""
    sets = []
    for name in (label, *features):
        with SiloStore.open(silos_dir / name) as store:
            rows = store.execute("SELECT phone_pn, marketing_opt_out, signup_date FROM customers "
                                 "WHERE phone_pn IS NOT NULL").fetchall()
            end = store.execute("SELECT MAX(order_time) FROM orders").fetchone()[0]
        count: dict[str, int] = {}
        for phone, _, _ in rows:
            count[phone] = count.get(phone, 0) + 1
        t_train = resolve_as_of(end, "") - 2 * 30 * DAY
        sets.append({p for p, opt_out, signup in rows if count[p] == 1 and not opt_out
                     and (name != label or date_to_epoch(dt.date.fromisoformat(signup)) < t_train)})
    return len(set.intersection(*sets))


def _identifiers(silos_dir: Path) -> set[str]:
    out: set[str] = set()
    for store_dir in silos_dir.iterdir():
        with SiloStore.open(store_dir) as store:
            for key, phone in store.execute("SELECT customer_key, phone_pn FROM customers"):
                out.add(key)
                if phone:
                    out.add(phone)
    return out


def test_config_refuses_a_joint_run_without_label_dp_or_with_overlapping_roles() -> None:
    with pytest.raises(ConfigError, match="label DP"):
        TrainConfig(job="joint", joint_noise_gradient=0.0)
    with pytest.raises(ConfigError, match="distinct silos other than the label silo"):
        TrainConfig(job="joint", joint_feature_silos="flights,datapacks")
    with pytest.raises(ConfigError, match="names no silo"):
        TrainConfig(job="joint", joint_feature_silos=" , ")
    with pytest.raises(ConfigError, match="joint-noise-embedding"):
        TrainConfig(joint_noise_embedding=-1.0)
    assert TrainConfig(job="joint", joint_feature_silos="flights, hotels").joint_features == (
        "flights", "hotels")
    assert TrainConfig(job="joint").effective_purpose == "joint-model"


def test_joint_run_aligns_by_psi_charges_every_release_and_leaks_nothing(
        silos_dir: Path, domain: Domain, tmp_path: Path) -> None:
    """Two feature silos, embedding DP on: every party is charged for what it released."""
    ledger_path = workspace_ledger(tmp_path, {"datapacks": 50.0, "flights": 50.0, "hotels": 50.0},
                                   "joint-model")
    cfg = TrainConfig(silos_dir=str(silos_dir), workspace=str(tmp_path), job="joint",
                      joint_feature_silos="flights,hotels", joint_rounds=2,
                      joint_noise_gradient=4.0, joint_noise_embedding=4.0, seed=3,
                      leak_guard=True, key_file=str(domain.keyring.parent / "travel.key"))
    result = run_joint_job(cfg, progress=lambda _m: None, reference=False)

    # The rows are exactly the opted-in customers the three silos share (no opted-out one).
    assert result["sizes"]["aligned_rows"] == _expected_rows(
        silos_dir, "datapacks", ("flights", "hotels")) > 0
    assert 0.5 < result["evaluation"]["auc"] <= 1.0
    assert 0.5 < result["evaluation"]["label_alone_auc"] <= 1.0
    assert [r["round"] for r in result["rounds"]] == [1, 2]

    # Label DP: 2 releases of gradients; embeddings: 2 rounds + the test rows' release.
    with open_ledger(ledger_path) as ledger:
        assert ledger.verify().ok
        spent = {e.silo: e for e in ledger.entries(status="spent")}
    assert set(spent) == {"datapacks", "flights", "hotels"}
    assert spent["datapacks"].mechanism == "label-dp-gradients"
    assert spent["datapacks"].epsilon == pytest.approx(
        epsilon([MechanismStep(2.0, 1.0, 2)], 1e-5, "rdp"), rel=1e-6)
    for silo in ("flights", "hotels"):
        assert spent[silo].mechanism == "gaussian-embeddings"
        assert spent[silo].purpose == "joint-model"
        assert spent[silo].epsilon == pytest.approx(
            epsilon([MechanismStep(2.0, 1.0, 3)], 1e-5, "rdp"), rel=1e-6)
    assert result["privacy"]["embeddings"]["releases"] == 3
    assert result["privacy"]["gradients"]["releases"] == 2

    # The leak guard inspected every reply (a finding would have failed the run), and the
    # run's result names nobody.
    for silo in ("datapacks", "flights", "hotels"):
        lines = [line for line in (silos_dir / silo / "leak-guard.log").read_text().splitlines()
                 if line.startswith("query.joint_")]
        assert lines and all(line.endswith("findings=0") for line in lines), silo
        assert all("identifiers=0" not in line for line in lines), "the guard had no needles"
    text = (Path(result["run_dir"]) / "joint.json").read_text()
    assert not [i for i in _identifiers(silos_dir) if i in text]


@pytest.fixture(scope="module")
def demo_scale_silos(tmp_path_factory: pytest.TempPathFactory, domain: Domain) -> Path:
    """The demo's platform (20,000 people, seed 7): enough shared customers for the gain to show."""
    root = tmp_path_factory.mktemp("demo-scale")
    generate_platform(PlatformConfig(n_customers=20_000, seed=7), root / "platform")
    build_silos(root / "platform", root / "silos", domain.keyring, domain.secret,
                progress=lambda _m: None)
    return root / "silos"  # the platform (ground truth) is beside it


def test_joint_model_beats_the_best_single_silo_with_label_dp(demo_scale_silos: Path) -> None:
    """The issue's check, with the federated job's default privacy (label DP at sigma 4).

    The protocol's functions are the ones the Flower handlers call; here they
    run in process so that five seeds fit in the suite (label-DP noise comes
    from OS entropy, so one run varies: 0.873-0.887 over runs; the mean over
    five is steady at about 0.881 against 0.874 for the label silo alone and
    0.85-0.87 for the flights block with labels it could never have).
    """
    from fedprofile.simulations.vertical import compare_vertical

    out = compare_vertical(demo_scale_silos, ("flights",), horizon_days=30, noise_levels=(4.0,),
                           seeds=(0, 1, 2, 3, 4), say=lambda _m: None)
    auc = {row["model"]: row["auc"] for row in out["rows"]}  # type: ignore[index]
    best_single = max(auc["label silo alone (datapacks)"], auc["feature silo alone (flights)"])
    assert auc["joint + label DP sigma=4"] > best_single, auc
    assert auc["joint (no noise)"] > best_single, auc
    assert auc["pooled oracle"] >= auc["joint + label DP sigma=4"] - 0.005, auc


def test_flower_joint_run_matches_the_reference_and_charges_only_the_label_silo(
        demo_scale_silos: Path, tmp_path: Path) -> None:
    """The default federated run on the demo platform: label DP only, and it learns."""
    ledger_path = workspace_ledger(tmp_path, {"datapacks": 20.0}, "joint-model")
    cfg = TrainConfig(silos_dir=str(demo_scale_silos), workspace=str(tmp_path), job="joint")
    result = run_joint_job(cfg, progress=lambda _m: None, reference=True)
    ev = result["evaluation"]
    ref = {row["model"]: row["auc"] for row in result["simulation_reference"]["rows"]}
    # One noisy run: within the spread of the reference protocol's runs (see above), and
    # close to the same protocol run in process without noise.
    assert ev["auc"] > ev["label_alone_auc"] - 0.01, (ev, ref)
    assert abs(ev["auc"] - ref["joint (no noise)"]) < 0.02, (ev, ref)
    assert ev["auc"] > 0.86 and ev["label_alone_auc"] > 0.86, (ev, ref)
    assert ev["auc"] <= ref["pooled oracle"] + 0.01, (ev, ref)
    # Only the label silo is charged: embeddings are clipped, not noised, by default.
    with open_ledger(ledger_path) as ledger:
        spent = list(ledger.entries(status="spent"))
    assert [e.silo for e in spent] == ["datapacks"]
    assert spent[0].epsilon == pytest.approx(epsilon([MechanismStep(2.0, 1.0, 6)], 1e-5, "rdp"),
                                             rel=1e-6)
    assert result["privacy"]["embeddings"]["epsilon"] is None
    assert json.loads((Path(result["run_dir"]) / "joint.json").read_text())["evaluation"] == ev


def test_case_1_ranked_by_the_joint_model_targets_more_uplift_than_random(
        demo_scale_silos: Path, domain: Domain, tmp_path: Path) -> None:
    """PSI audience -> joint model scores it -> campaign ranked by score -> ground truth.

    The audience (flyers abroad who are not data-pack customers) is unknown to
    the label silo, so it is scored by the remote-only head. With a 180-day
    label the score tracks a flyer's need for packs abroad, which is what the
    coupon's true uplift grows with: on this platform the top 30% by score
    have had 1.5x the audience's mean true uplift (random targeting's).
    """
    from fedprofile.client.audiences import load_audience, load_audience_scores
    from fedprofile.client.campaigns import save_audience_plan
    from fedprofile.client.cases import cross_sell_campaign
    from fedprofile.simulations.campaign_run import simulate_campaign
    from fedprofile.simulations.psi_run import run_psi_job

    key_file = str(domain.keyring.parent / "travel.key")
    common = dict(silos_dir=str(demo_scale_silos), workspace=str(tmp_path), key_file=key_file)
    run_psi_job(TrainConfig(**common, job="psi"), progress=lambda _m: None)  # type: ignore[arg-type]
    workspace_ledger(tmp_path, {"datapacks": 20.0}, "joint-model")
    result = run_joint_job(TrainConfig(**common, job="joint", joint_horizon_days=180,  # type: ignore[arg-type]
                                       joint_audience="cross-sell-datapack"),
                           progress=lambda _m: None, reference=False)
    flights = demo_scale_silos / "flights"
    keys = domain.keys(flights)
    members = load_audience(flights, "cross-sell-datapack", keys.identity_key)["rows"]
    assert result["audience"] == {"name": "cross-sell-datapack", "scored": len(members)}
    scores = load_audience_scores(flights, "cross-sell-datapack", keys.identity_key)
    assert scores is not None and len(scores["scores"]) == len(members)

    plan, audience = cross_sell_campaign(flights, "joint-ranked", keys.identity_key)
    ranked = [row.score for row in audience.rows]
    assert all(s is not None for s in ranked) and ranked == sorted(ranked, reverse=True)
    assert any("ranked by joint model" in note for note in plan.notes)
    save_audience_plan(flights, plan, audience, keys.identity_key)
    sim = simulate_campaign(demo_scale_silos.parent / "platform", keys, "joint-ranked",
                            tmp_path / "campaign", line="datapacks")
    t = sim["targeting"]
    assert t["true_uplift_top_30pct_by_score"] > 1.2 * t["true_uplift_random"], t
    assert (tmp_path / "campaign" / "qini.png").is_file()
    assert (tmp_path / "campaign" / "expected_gain.png").stat().st_size > 0


def test_a_run_failing_after_training_settles_what_was_released_and_says_why(
        silos_dir: Path, domain: Domain, tmp_path: Path) -> None:
    ledger_path = workspace_ledger(tmp_path, {"datapacks": 50.0}, "joint-model")
    cfg = TrainConfig(silos_dir=str(silos_dir), workspace=str(tmp_path), job="joint",
                      joint_rounds=2, joint_audience="no-such-audience",
                      key_file=str(domain.keyring.parent / "travel.key"))
    seen: list[str] = []
    with pytest.raises(Exception, match="did not finish"):
        run_joint_job(cfg, progress=seen.append, reference=False)
    assert any("error:" in line and "no-such-audience" in line for line in seen), seen
    with open_ledger(ledger_path) as ledger:
        assert ledger.verify().ok
        spent = list(ledger.entries(status="spent"))
        outstanding = ledger.outstanding()
    # The two rounds of gradients went out before the scoring step failed: they are charged.
    assert [e.silo for e in spent] == ["datapacks"] and not outstanding
    assert spent[0].epsilon == pytest.approx(epsilon([MechanismStep(2.0, 1.0, 2)], 1e-5, "rdp"),
                                             rel=1e-6)
