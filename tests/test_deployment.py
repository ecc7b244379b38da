"""Flower's Deployment Engine on loopback: credentials, TLS, SuperNode authentication, a real run."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedprofile.config import TrainConfig
from fedprofile.privacy.credentials import make_supernode_key, make_tls
from fedprofile.server.deployment import LocalDeployment
from fedprofile.simulations.training import run_training

from .conftest import Domain, flower_processes


def test_tls_files_chain_to_the_ca_and_name_the_hosts(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "c", ("superlink.example", "10.0.0.5"))
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for private in (tls.key, tls.ca_key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="at least one host"):
        make_tls(tmp_path / "d", ())


def test_supernode_keys_are_openssh_ec_pairs(tmp_path: Path) -> None:
    private, public = make_supernode_key(tmp_path, "flights")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    pub = serialization.load_ssh_public_key(public.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == pub.public_numbers()  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="must be letters"):
        make_supernode_key(tmp_path, "../etc/passwd")


def test_training_runs_on_the_deployment_engine(silos_dir: Path, domain: Domain,
                                                tmp_path: Path) -> None:
    cfg = TrainConfig(silos_dir=str(silos_dir), workspace=str(tmp_path), num_server_rounds=1,
                      silo_alone=False, key_file=str(domain.secret.path))
    seen: list[str] = []
    result = run_training(cfg, progress=seen.append, oracle=False, deployment=True)
    assert any("deployment up" in line and "TLS" in line for line in seen), seen
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert set(metrics["federated"]["silos"]) == {"datapacks", "flights", "hotels"}
    # The same app, config and seed on the Simulation Engine trains the same model.
    simulated = run_training(replace(cfg, run_dir=str(tmp_path / "sim")), progress=lambda _m: None,
                             oracle=False)
    assert metrics["federated"]["overall"] == pytest.approx(
        simulated.metrics["federated"]["overall"], rel=1e-6)
    # The SuperNodes were told their silos by node config, not by the run config.
    logs = (result.run_dir / "flower" / "deployment").glob("supernode-*.log")
    assert sorted(p.name for p in logs) == ["supernode-datapacks.log", "supernode-flights.log",
                                            "supernode-hotels.log"]
    assert not flower_processes(tmp_path)


def test_cli_writes_credentials_once_and_keys_only_for_a_silo(tmp_path: Path) -> None:
    from fedprofile.cli import main

    out = tmp_path / "creds"
    assert main(["deploy", "credentials", "--out", str(out), "--host", "link.example",
                 "--silo", "flights", "--silo", "hotels"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "ca.crt", "ca.key", "flights.key", "flights.pub", "hotels.key", "hotels.pub",
        "superlink.crt", "superlink.key"]
    before = (out / "flights.key").read_bytes()
    assert main(["deploy", "credentials", "--out", str(out), "--silo", "flights"]) != 0
    assert (out / "flights.key").read_bytes() == before  # never overwritten
    own = tmp_path / "own"
    assert main(["deploy", "credentials", "--keys-only", "--out", str(own), "--silo",
                 "datapacks"]) == 0
    assert sorted(p.name for p in own.iterdir()) == ["datapacks.key", "datapacks.pub"]


def test_a_supernode_killed_mid_run_is_missing_then_rejoins_and_is_charged_what_it_trained(
        silos_dir: Path, domain: Domain, tmp_path: Path) -> None:
    """Real processes: an unregistered SuperNode is refused; flights' is killed after round 1
    and restarted.

    The rounds go on without it (at least min-silos answer) and record it
    missing, with the reason; restarted, it rejoins. It lost its node state
    (and its own epsilon count), so the server's count of the rounds it
    trained in is what the ledger is charged.
    """
    import threading

    from fedprofile.server.local_superlink import app_pyproject
    from fedprofile.server.processes import terminate_tree

    from .conftest import open_ledger, workspace_ledger

    ledger_path = workspace_ledger(tmp_path, {s: 50.0 for s in ("datapacks", "flights", "hotels")},
                                   "propensity-training")
    run_dir = tmp_path / "run"
    cfg = TrainConfig(silos_dir=str(silos_dir), workspace=str(tmp_path), num_server_rounds=4,
                      silo_alone=False, round_timeout=120.0, min_silos=2, run_dir=str(run_dir),
                      dp=True, dp_noise_multiplier=1.0, dp_delta=1e-4)
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(app_pyproject())
    silos = sorted(p for p in silos_dir.iterdir() if (p / "store.sqlite").exists())
    log = tmp_path / "flower.log"
    with LocalDeployment(tmp_path / "dep", silos, str(domain.secret.path)) as deployment:
        assert deployment.online() == len(silos)
        # A SuperNode whose key was never registered is refused by the SuperLink.
        private, public = make_supernode_key(tmp_path / "intruder", "intruder")
        intruder = deployment.start_supernode("intruder", silos[0], private, public,
                                              max_retries=1)
        assert intruder.process.wait(timeout=120) != 0
        assert "could not establish a connection" in intruder.log.read_text()
        assert deployment.online() == len(silos)

        def kill_then_restart() -> None:
            for _ in range(600):
                if log.exists() and "round 1:" in log.read_text():
                    terminate_tree(deployment.supernodes["flights"].process.pid)
                    break
                threading.Event().wait(0.5)
            for _ in range(600):
                if log.exists() and "missing (flights)" in log.read_text():
                    deployment.restart_supernode("flights")
                    return
                threading.Event().wait(0.5)
        worker = threading.Thread(target=kill_then_restart, daemon=True)
        worker.start()
        deployment.run(app, cfg.to_mapping(), lambda _line: None, log)
        worker.join(timeout=5)
    assert not flower_processes(tmp_path)

    rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    assert rounds[0]["trained"] == ["datapacks", "flights", "hotels"]
    assert rounds[1]["trained"] == ["datapacks", "hotels"] and rounds[1]["missing"] == ["flights"]
    assert any("Node Unavailable" in e or "heartbeat" in e for e in rounds[1]["errors"]), rounds[1]
    flights_rounds = [r["round"] for r in rounds if "flights" in r["trained"]]
    assert flights_rounds[-1] == 4, f"flights did not rejoin: {rounds}"
    with open_ledger(ledger_path) as ledger:
        spent = {e.silo: e for e in ledger.entries(status="spent")}
        planned = {e.silo: e for e in ledger.entries(status="reserved")}
    assert spent["flights"].params["steps"] * 4 == planned["flights"].params["steps"] * len(
        flights_rounds)
    assert spent["hotels"].params["steps"] == planned["hotels"].params["steps"]
