"""The federated recommender for real: regional silos of the real Online Retail data, on Flower."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fedprofile.cli import main
from fedprofile.client.serving import load_recommender
from fedprofile.client.store import SiloStore
from fedprofile.config import TrainConfig
from fedprofile.models.recommender import top_k
from fedprofile.simulations.online_retail import DEFAULT_PATH, build_retail_silos
from fedprofile.simulations.training import run_training, summary_table

from .conftest import Domain, needs_online_retail, open_ledger, workspace_ledger

pytestmark = needs_online_retail

SILOS = ("eu", "rest", "uk")


@pytest.fixture(scope="module")
def retail_silos(domain: Domain, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 50,000 lines of the real file as three regional silos."""
    silos = tmp_path_factory.mktemp("retail") / "silos"
    build_retail_silos(silos, domain.keys, DEFAULT_PATH, limit=50_000, progress=lambda _m: None)
    assert sorted(p.name for p in silos.iterdir()) == list(SILOS)
    return silos


def test_federated_recommender_matches_central_and_beats_popularity(
        retail_silos: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(model="recommender", num_server_rounds=2, min_silos=3,
                      silos_dir=str(retail_silos), workspace=str(tmp_path))
    shown: list[str] = []
    result = run_training(cfg, progress=shown.append)
    m = result.metrics
    federated, central = m["federated"]["overall"], m["oracle"]["overall"]
    popular = m["popularity"]["overall"]
    assert federated["users"] == central["users"] == popular["users"] > 100
    assert federated["hr@10"] >= 0.95 * central["hr@10"], (federated, central)
    assert federated["hr@10"] > popular["hr@10"] + 0.05, (federated, popular)
    assert federated["ndcg@10"] > popular["ndcg@10"]
    assert set(m["silo_alone"]["silos"]) == set(SILOS)
    assert any("catalogue agreed" in line for line in shown)
    assert any("round 2: HR@10" in line for line in shown)
    assert "most popular" in summary_table(m)
    assert (result.run_dir / "hr10_by_round.png").stat().st_size > 0
    saved = torch.load(result.run_dir / "model.pt", weights_only=True)
    assert saved["model"] == "recommender" and len(saved["catalog"]) == m["catalog_items"]


def test_serving_top_k_with_opt_out(retail_silos: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = TrainConfig(model="recommender", num_server_rounds=1, min_silos=3, silo_alone=False,
                      silos_dir=str(retail_silos), workspace=str(tmp_path))
    run_dir = run_training(cfg, progress=lambda _m: None, oracle=False).run_dir
    silo = tmp_path / "uk"
    shutil.copytree(retail_silos / "uk", silo)
    with SiloStore.open(silo) as store:  # three customers opt out after training
        keys = [r[0] for r in store.execute(
            "SELECT customer_key FROM customers ORDER BY customer_key LIMIT 3")]
        with store.transaction() as conn:
            conn.executemany("UPDATE customers SET marketing_opt_out = 1 WHERE customer_key = ?",
                             [(k,) for k in keys])
    assert main(["recommend", str(silo), "--model", str(run_dir / "model.pt"), "--k", "5",
                 "--diversity", "0.3", "--explore", "0.2"]) == 0
    assert "3 non-personalised (opted out)" in capsys.readouterr().out
    with open(silo / "recommendations.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    lists: dict[str, list[str]] = {}
    flags: dict[str, set[str]] = {}
    for row in rows:
        lists.setdefault(row["customer_key"], []).append(row["item"])
        flags.setdefault(row["customer_key"], set()).add(row["personalised"])
    assert all(flags[k] == {"false"} for k in keys)
    with SiloStore.open(silo) as store:  # every customer gets a list
        assert len(lists) == store.counts()["customers"]
    assert sum(f == {"true"} for f in flags.values()) > 0.9 * len(flags)
    assert all(len(items) == 5 and len(set(items)) == 5 for items in lists.values())
    model, catalog = load_recommender(run_dir / "model.pt")
    generic = [catalog.items[i] for i in top_k(model.non_personalised_scores()[None, :], 5)[0]]
    assert all(lists[k] == generic for k in keys)  # the same list, whatever they bought
    personal = [items for key, items in lists.items() if key not in keys]
    assert sum(items != generic for items in personal) > 0.9 * len(personal)


def test_dp_recommender_is_charged_per_silo(retail_silos: Path, tmp_path: Path) -> None:
    ledger = workspace_ledger(tmp_path, {s: 10.0 for s in SILOS}, "recommendation-training")
    cfg = TrainConfig(model="recommender", num_server_rounds=2, min_silos=3, dp=True,
                      dp_target_epsilon=8.0, dp_delta=1e-5, silos_dir=str(retail_silos),
                      workspace=str(tmp_path))
    m = run_training(cfg, progress=lambda _m: None).metrics
    assert m["privacy"]["purpose"] == "recommendation-training"
    assert m["federated"]["overall"]["hr@10"] > m["popularity"]["overall"]["hr@10"]
    with open_ledger(ledger) as book:
        assert book.verify().ok
        spent = {e.silo: e for e in book.entries(status="spent")}
        assert set(spent) == set(SILOS)
        for silo, entry in spent.items():
            assert entry.purpose == "recommendation-training" and entry.privacy_unit == "customer"
            assert 0 < entry.epsilon <= 8.0 + 1e-6
            assert entry.epsilon == pytest.approx(m["privacy"]["silos"][silo]["epsilon-rdp"],
                                                  rel=1e-6)
    assert np.isfinite(m["federated"]["overall"]["ndcg@10"])
