"""The leak guard catches planted leaks in replies and files, and passes clean ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, Array, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedprofile.client.features import load_silo_data
from fedprofile.client.store import SiloStore
from fedprofile.privacy.leak_guard import LeakError, leak_guard_mod, scan_tree, silo_needles

from .conftest import Domain

RAW_PHONE = "+86 138 0013 8000"  # as the flights line writes it


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower builds messages for the task of the current process; play one here."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _silo(tmp_path: Path, domain: Domain) -> Path:
    from fedprofile.client.ingest import ingest

    (tmp_path / "c.csv").write_text(
        "customer_id,phone,email,province,city,age_band,signup_date,marketing_opt_out\n"
        f"FL00000042,{RAW_PHONE},Wang.Li@Example.com,Guangdong,Shenzhen,25-34,2023-01-01,false\n"
        "FL00000043,139-0000-1111,zhao@example.cn,Beijing,Beijing,35-44,2023-01-01,false\n")
    (tmp_path / "o.csv").write_text(
        "order_id,customer_id,order_time,amount,category,product,destination,coupon_used\n"
        "F1,FL00000042,2024-01-05T10:00:00,900,flight_domestic,SZX-PEK,Beijing,false\n"
        "F2,FL00000043,2024-02-05T10:00:00,900,flight_domestic,PEK-SZX,Shenzhen,false\n")
    silo = tmp_path / "flights"
    ingest(silo, tmp_path / "c.csv", tmp_path / "o.csv", keys=domain.keys(silo))
    return silo


def _guarded(silo: Path, domain: Domain, content: RecordDict, enabled: bool = True) -> Message:
    context = Context(run_id=1, node_id=1, node_config={"silo-dir": str(silo)},
                      state=RecordDict(), run_config={"leak-guard": enabled,
                                                      "key-file": str(domain.secret.path),
                                                      "as-of": "2024-03-01"})
    msg = Message(content=RecordDict(), dst_node_id=1, message_type="train")
    return leak_guard_mod(msg, context, lambda m, _c: Message(content=content, reply_to=m))


def test_clean_reply_passes_and_is_logged(tmp_path: Path, domain: Domain) -> None:
    silo = _silo(tmp_path, domain)
    weights = ArrayRecord({"w": Array(np.random.default_rng(0).normal(size=(4, 56)).astype(np.float32))})
    reply = _guarded(silo, domain, RecordDict({"arrays": weights,
                                               "metrics": MetricRecord({"auc": 0.8})}))
    assert "arrays" in reply.content
    log = (silo / "leak-guard.log").read_text().splitlines()
    assert len(log) == 1 and log[0].startswith("train\t") and log[0].endswith("findings=0")
    assert "identifiers=0" not in log[0] and "rows=0" not in log[0], "the guard had no needles"


@pytest.mark.parametrize("planted", [RAW_PHONE, "13800138000", "+8613800138000",
                                     "wang.li@example.com", "FL00000042"])
def test_planted_identifier_is_caught(planted: str, tmp_path: Path, domain: Domain) -> None:
    silo = _silo(tmp_path, domain)
    content = RecordDict({"silo": ConfigRecord({"name": "flights", "note": f"x {planted} y"})})
    with pytest.raises(LeakError) as info:
        _guarded(silo, domain, content)
    assert planted not in str(info.value), "the guard must not print what it caught"
    assert "leak guard stopped a reply" in str(info.value)


def test_planted_feature_row_is_caught(tmp_path: Path, domain: Domain) -> None:
    silo = _silo(tmp_path, domain)
    with SiloStore.open(silo) as store:
        rows = load_silo_data(store, horizon_days=30, as_of="2024-03-01").test.x
    content = RecordDict({"arrays": ArrayRecord({"w": Array(rows[:1].copy())})})
    with pytest.raises(LeakError, match="feature rows"):
        _guarded(silo, domain, content)


def test_guard_off_lets_everything_through(tmp_path: Path, domain: Domain) -> None:
    silo = _silo(tmp_path, domain)
    content = RecordDict({"silo": ConfigRecord({"note": RAW_PHONE})})
    assert _guarded(silo, domain, content, enabled=False) is not None


def test_scan_tree_finds_a_planted_file_and_skips_the_silo(tmp_path: Path, domain: Domain) -> None:
    silo = _silo(tmp_path, domain)
    needles = silo_needles(silo, str(domain.secret.path))
    out = tmp_path / "runs" / "r1"
    out.mkdir(parents=True)
    (out / "report.json").write_text('{"auc": 0.81, "n": 2}')
    assert scan_tree(tmp_path / "runs", needles) == []
    (out / "debug.txt").write_text("contact zhao@example.cn about the refund\n")
    findings = scan_tree(tmp_path, needles, exclude=[silo, tmp_path / "c.csv", tmp_path / "o.csv"])
    assert [f.kind for f in findings] == ["email"]
    assert "zhao@example.cn" not in str(findings[0])
