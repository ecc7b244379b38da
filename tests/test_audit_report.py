"""The compliance audit report: self-contained, complete, and readable in a real browser."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from fedprofile.privacy.audit import write_report
from fedprofile.privacy.keys import generate_key_file
from fedprofile.privacy.ledger import Ledger, ledger_key_from_file

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def _ledger(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "ledger" / "privacy-ledger.sqlite"
    path.parent.mkdir()
    key = ledger_key_from_file(generate_key_file(path.with_name("ledger.key")))
    with Ledger.create(path, key) as ledger:
        ledger.set_cap("flights", "propensity-training", 8.0, 1e-5)
        ledger.set_cap("hotels", "propensity-training", 4.0, 1e-5)
        for silo, eps, n in (("flights", 1.25, 15238), ("hotels", 0.75, 10613)):
            params = {"noise_multiplier": 1.1, "sample_rate": 0.0168, "steps": 590,
                      "clip_norm": 1.0, "customers": n}
            reservation = ledger.reserve("run-7", silo, "propensity-training", eps * 1.2, 1e-6,
                                         "dp-sgd", params, "customer", "model-7", "alice",
                                         n_records=n)
            ledger.settle(reservation, {"rdp": eps, "prv": eps * 0.9}, params=params)
    return path, key


def _render(html_path: Path, tmp_path: Path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Debian's chromium is needed to render the report: `apt-get install "
                    "chromium` (`make test` installs it when run as root)")
    profile = tmp_path / "chromium-profile"
    proc = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           "--dump-dom", html_path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_report_renders_with_the_key_figures(tmp_path: Path) -> None:
    path, key = _ledger(tmp_path)
    html_path, json_path = write_report(path, key, tmp_path / "out")
    html_text = html_path.read_text()
    assert "http://" not in html_text and "https://" not in html_text, "must open offline"
    data = json.loads(json_path.read_text())
    assert data["verification"]["ok"] is True
    assert data["worst_case_per_customer"]["all purposes"] == pytest.approx(2.0)
    dom = _render(html_path, tmp_path)
    for figure in ("Ledger verification", "intact", "8", "1.25", "0.75", "6.75",  # remaining
                   "2", "customer", "dp-sgd", "1e-06", "0.01524",  # delta·N for flights
                   "GDPR Art. 5(1)(c)", "GDPR Art. 25", "GDPR Art. 32", "GDPR Art. 35",
                   "PIPL Art. 24", "PIPL Art. 51", "PIPL Art. 55", "PIPL Art. 73",
                   "Trust model", "Data categories", "Retention", "key version",
                   "data:image/png;base64,"):
        assert figure in dom, figure


def test_report_shows_a_tampered_ledger(tmp_path: Path) -> None:
    path, key = _ledger(tmp_path)
    con = sqlite3.connect(path)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        con.execute(f"DROP TRIGGER {name}")
    con.execute("UPDATE entries SET epsilon = 0.01 WHERE silo = 'flights' AND status = 'spent'")
    con.commit()
    con.close()
    html_path, json_path = write_report(path, key, tmp_path / "out")
    data = json.loads(json_path.read_text())
    assert data["verification"]["ok"] is False and data["verification"]["problems"]
    assert "FAILED" in _render(html_path, tmp_path)
