"""Every CLI command runs as a user would run it, and failures are one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedprofile.cli import EXIT_INPUT, main

from .conftest import Domain, default_sigint, flower_processes

FEDPROFILE = [sys.executable, "-m", "fedprofile"]


def run_cli(*args: str, env_home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEDPROFILE_HOME": str(env_home)}
    return subprocess.run([*FEDPROFILE, *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_help_and_version(tmp_path: Path) -> None:
    proc = run_cli("--help", env_home=tmp_path)
    assert proc.returncode == 0
    for command in ("demo", "generate", "silo", "train"):
        assert command in proc.stdout
    assert run_cli("--version", env_home=tmp_path).stdout.startswith("fedprofile ")


def test_generate_ingest_info(tmp_path: Path, domain: Domain) -> None:
    out = tmp_path / "platform"
    proc = run_cli("generate", "--out", str(out), "--customers", "300", "--seed", "3",
                   env_home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ground truth" in proc.stdout
    again = run_cli("generate", "--out", str(out), "--customers", "300", env_home=tmp_path)
    assert again.returncode == EXIT_INPUT and "error" in again.stderr

    silo = tmp_path / "silos" / "hotels"
    src = out / "silos" / "hotels"
    proc = run_cli("silo", "ingest", "--silo", str(silo), "--customers",
                   str(src / "customers.csv"), "--orders", str(src / "orders.csv"),
                   "--keyring", str(domain.keyring), "--key-file", str(domain.secret.path),
                   env_home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "customers added" in proc.stdout and "pseudonymised with key domain 'travel'" in proc.stdout

    info = run_cli("silo", "info", "--silo", str(silo), env_home=tmp_path)
    assert info.returncode == 0, info.stderr
    payload = json.loads(info.stdout)
    assert payload["name"] == "hotels" and payload["orders"] > 0
    assert payload["key_domain"] == "travel" and payload["raw_ids"] == "sealed"
    assert payload["ingestions"][0]["source"] == "customers.csv;orders.csv"


def test_ingest_bad_file_exit_code_and_message(tmp_path: Path, domain: Domain,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "orders.csv"
    bad.write_text("order_id,customer_id\nX1,C1\n")
    code = main(["silo", "ingest", "--silo", str(tmp_path / "s"), "--orders", str(bad),
                 "--keyring", str(domain.keyring), "--key-file", str(domain.secret.path)])
    err = capsys.readouterr().err
    assert code == EXIT_INPUT
    assert "orders.csv:1: field 'order_time': missing column" in err
    assert "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_train_missing_silos_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--silos-dir", str(tmp_path / "none")])
    assert code == EXIT_INPUT
    assert "no silos directory" in capsys.readouterr().err


def test_train_bad_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--set", "learning-rate=-3"]) == EXIT_INPUT
    assert "learning-rate must be a positive number" in capsys.readouterr().err


def test_train_command(silos_dir: Path, tmp_path: Path) -> None:
    proc = run_cli("train", "--silos-dir", str(silos_dir), "--rounds", "2",
                   "--run-dir", str(tmp_path / "run"), "--set", "silo-alone=false",
                   env_home=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "round 2: AUC" in proc.stdout and "centralized oracle" in proc.stdout
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert not flower_processes(tmp_path)


def test_demo_command(tmp_path: Path) -> None:
    workspace = tmp_path / "demo"
    proc = run_cli("demo", "--workspace", str(workspace), "--customers", "1500",
                   "--rounds", "2", "--leak-guard", env_home=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for text in (*(f"[{i}/7]" for i in range(1, 8)), "customers profiled", "tags:",
                 "Customer segments:", "federated (FedAvg)", "centralized oracle",
                 "each silo alone", "demo finished"):
        assert text in proc.stdout, text
    assert "leak guard:" in proc.stdout and ", 0 leak(s)" in proc.stdout
    for silo in ("flights", "hotels", "datapacks"):
        checked = (workspace / "silos" / silo / "leak-guard.log").read_text().splitlines()
        assert checked and all(line.endswith("findings=0") for line in checked), silo
        assert all("identifiers=0" not in line for line in checked), "the guard had no needles"
    runs = sorted((workspace / "runs").iterdir())
    assert len(runs) == 4  # training, segmentation, the PSI and the joint model
    joint = json.loads(next(r for r in runs if (r / "joint.json").exists()).joinpath(
        "joint.json").read_text())
    assert joint["audience"]["scored"] > 0 and joint["privacy"]["purpose"] == "joint-model"
    assert "targeting by the joint model" in proc.stdout
    segments = next(r for r in runs if (r / "segments.json").exists())
    assert json.loads((segments / "segments.json").read_text())["privacy"]["purpose"] == \
        "segmentation"
    train_run = next(r for r in runs if (r / "metrics.json").exists())
    assert (train_run / "auc_by_round.png").is_file()
    metrics = json.loads((train_run / "metrics.json").read_text())
    assert {"federated", "oracle", "silo_alone", "rounds", "timing"} <= set(metrics)
    # the demo refuses to rewrite a directory it did not create
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    refused = run_cli("demo", "--workspace", str(other), env_home=tmp_path)
    assert refused.returncode == EXIT_INPUT and "not made by `fedprofile demo`" in refused.stderr
    assert (other / "precious.txt").read_text() == "keep me"


def test_ctrl_c_during_training_leaves_no_process(silos_dir: Path, tmp_path: Path) -> None:
    import signal
    import time

    env = {**os.environ, "FEDPROFILE_HOME": str(tmp_path)}
    proc = subprocess.Popen([*FEDPROFILE, "train", "--silos-dir", str(silos_dir), "--rounds", "50",
                             "--run-dir", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=default_sigint)
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:  # wait until training is really under way
        seen.append(line)
        if "round 1: AUC" in line or time.monotonic() > deadline:
            break
    assert any("round 1: AUC" in s for s in seen), "".join(seen)
    assert flower_processes(tmp_path), "training should be running now"
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, rest
    assert "interrupted" in rest
    deadline = time.monotonic() + 5  # stop() already waited; only exit bookkeeping is left
    while flower_processes(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not flower_processes(tmp_path)


def test_no_key_material_in_cli_output(tmp_path: Path) -> None:
    """Keys and passphrases never appear in what the commands print, even on errors."""
    env = {**os.environ, "FEDPROFILE_HOME": str(tmp_path)}
    key_file = tmp_path / "k.key"
    outputs = []

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*FEDPROFILE, *args], capture_output=True, text=True,
                              env={**env, **extra}, timeout=120)
        outputs.append(proc.stdout + proc.stderr)
        return proc

    assert cli("key", "generate", str(key_file)).returncode == 0
    ring = str(tmp_path / "d.keyring")
    assert cli("key", "init", "--domain", "acme", "--keyring", ring,
               "--key-file", str(key_file)).returncode == 0
    assert cli("key", "rotate", "--keyring", ring, "--key-file", str(key_file)).returncode == 0
    assert cli("key", "info", "--keyring", ring, "--key-file", str(key_file)).returncode == 0
    wrong = tmp_path / "wrong.key"
    cli("key", "generate", str(wrong))
    bad = cli("key", "info", "--keyring", ring, "--key-file", str(wrong))
    assert bad.returncode == EXIT_INPUT and "wrong passphrase or key file" in bad.stderr
    passphrase = "correct horse battery staple"
    ring2 = str(tmp_path / "p.keyring")
    assert cli("key", "init", "--domain", "acme", "--keyring", ring2,
               FEDPROFILE_KEY_PASSPHRASE=passphrase).returncode == 0
    bad = cli("key", "info", "--keyring", ring2, FEDPROFILE_KEY_PASSPHRASE=passphrase + "!")
    assert bad.returncode == EXIT_INPUT and "wrong passphrase" in bad.stderr

    from fedprofile.privacy.keys import Keyring, Secret

    secret = Secret.from_key_file(key_file)
    keyring = Keyring.open(Path(ring), secret)
    secrets = [key_file.read_text().strip(), passphrase, keyring.key().hex(),
               wrong.read_text().strip()]
    text = "\n".join(outputs)
    for value in secrets:
        assert value not in text and value.upper() not in text
