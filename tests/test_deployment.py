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

from .conftest import Domain, default_sigint, flower_processes


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


def test_a_silo_with_bad_local_data_is_named_with_its_reason(silos_dir: Path, domain: Domain,
                                                             tmp_path: Path) -> None:
    """Real processes: hotels' store is corrupt. The round goes on with the two other silos,
    and the run says which silo failed and why, in one line, not as an opaque crash."""
    import shutil

    silos = tmp_path / "silos"
    shutil.copytree(silos_dir, silos)
    store = silos / "hotels" / "store.sqlite"
    for extra in (store.with_name("store.sqlite-wal"), store.with_name("store.sqlite-shm")):
        extra.unlink(missing_ok=True)
    store.write_bytes(b"this is not a database" * 200)
    cfg = TrainConfig(silos_dir=str(silos), workspace=str(tmp_path), num_server_rounds=1,
                      silo_alone=False, min_silos=2, key_file=str(domain.secret.path))
    seen: list[str] = []
    result = run_training(cfg, progress=seen.append, oracle=False, deployment=True)
    first = result.metrics["rounds"][0]
    assert first["trained"] == ["datapacks", "flights"]
    assert first["failed"] == ["hotels"]
    assert first["errors"] == [f"silo hotels: StoreError: {store}: not a readable silo store "
                               "(file is not a database)"]
    assert any("a silo failed: silo hotels: StoreError" in line for line in seen), seen
    assert any("failed or missing (hotels)" in line for line in seen), seen
    # The whole traceback stayed in the silo's own log.
    silo_log = (result.run_dir / "flower" / "deployment" / "superexec-hotels.log").read_text()
    assert "Traceback" in silo_log and "sqlite3.DatabaseError" in silo_log
    assert not flower_processes(tmp_path)


def test_ctrl_c_during_deploy_run_stops_every_process(silos_dir: Path, domain: Domain,
                                                      tmp_path: Path) -> None:
    """Ctrl-C in the terminal (SIGINT to the foreground process group) mid-round: the command
    says it was interrupted, exits 130, and no SuperLink, SuperNode, SuperExec, forkserver or
    ClientApp process is left."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    command = [sys.executable, "-m", "fedprofile.cli", "deploy", "run", "--no-oracle",
               "--silos-dir", str(silos_dir), "--run-dir", str(tmp_path / "run"),
               "--rounds", "5", "--set", "silo-alone=false",
               "--set", f"key-file={domain.secret.path}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=default_sigint, env={**os.environ,
                                                         "FEDPROFILE_HOME": str(tmp_path)})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("round 1:" in line for line in lines) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.2)
        assert any("round 1:" in line for line in lines), "".join(lines)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(timeout=10)
    assert code == 130, "".join(lines)
    assert "interrupted" in "".join(lines)
    assert not flower_processes(tmp_path)


def test_a_superlink_restart_ends_the_run_in_progress_and_the_supernodes_rejoin(
        silos_dir: Path, domain: Domain, tmp_path: Path) -> None:
    """Real processes: the SuperLink is stopped (with its ServerApp) after round 1 and started
    again on the same port and database.

    The run in progress is lost: `flwr run` fails with Flower's connection
    error and no metrics are written. Its ServerApp settles the ledger on the
    way out, charging the rounds it counted plus the round whose training
    replies were in flight. The SuperNodes reconnect by themselves, with the
    keys the database still holds, and the next run trains and is settled.
    """
    import threading

    from fedprofile.server.local_superlink import SimulationError, app_pyproject

    from .conftest import open_ledger, workspace_ledger

    names = ("datapacks", "flights", "hotels")
    ledger_path = workspace_ledger(tmp_path, {s: 50.0 for s in names}, "propensity-training")
    base = TrainConfig(silos_dir=str(silos_dir), workspace=str(tmp_path), silo_alone=False,
                       dp=True, dp_noise_multiplier=1.0, dp_delta=1e-4)
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(app_pyproject())
    silos = sorted(p for p in silos_dir.iterdir() if (p / "store.sqlite").exists())
    log = tmp_path / "lost.log"
    with LocalDeployment(tmp_path / "dep", silos, str(domain.secret.path)) as deployment:
        def restart_after_round_1() -> None:
            for _ in range(600):
                if log.exists() and "round 1:" in log.read_text():
                    deployment.restart_superlink()
                    return
                threading.Event().wait(0.5)
        worker = threading.Thread(target=restart_after_round_1, daemon=True)
        worker.start()
        lost = replace(base, num_server_rounds=4, run_dir=str(tmp_path / "lost"))
        with pytest.raises(SimulationError, match="`flwr run` exited"):
            deployment.run(app, lost.to_mapping(), lambda _line: None, log)
        worker.join(timeout=60)
        assert "Connection to the SuperLink is unavailable" in log.read_text()
        assert not (tmp_path / "lost" / "metrics.json").exists()
        deployment.wait_online(len(silos))  # no key registered again
        after = replace(base, num_server_rounds=1, run_dir=str(tmp_path / "after"))
        deployment.run(app, after.to_mapping(), lambda _line: None, tmp_path / "after.log")
    assert not flower_processes(tmp_path)

    rounds = json.loads((tmp_path / "after" / "metrics.json").read_text())["rounds"]
    assert rounds[0]["trained"] == list(names)
    with open_ledger(ledger_path) as ledger:
        assert not ledger.outstanding()
        entries = list(ledger.entries(purpose="propensity-training"))
    by_run: dict[str, dict[str, dict[str, object]]] = {}
    for e in entries:  # in ledger order: the lost run first
        by_run.setdefault(e.run_id, {}).setdefault(e.status, {})[e.silo] = e.params
    lost, later = by_run.values()
    for silo in names:
        per_round = lost["reserved"][silo]["steps"] // 4
        # Round 1 as the server counted it, and round 2, whose replies were in flight when
        # the SuperLink stopped: it may have been released, so it is charged.
        assert lost["spent"][silo]["steps"] >= 2 * per_round
        assert later["spent"][silo]["steps"] == later["reserved"][silo]["steps"]
