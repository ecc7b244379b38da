"""Malformed identifiers at ingestion: counted and shown masked, never given a shared pseudonym."""

from __future__ import annotations

from pathlib import Path

from fedprofile.client.ingest import ingest
from fedprofile.client.store import SiloStore

from .conftest import Domain

HEADER = "customer_id,phone,email,province,city,age_band,signup_date,marketing_opt_out"


def test_bad_phones_and_emails_are_reported_not_shared(tmp_path: Path, domain: Domain) -> None:
    rows = [
        "A1,+86 138 0013 8000,a@example.com,Beijing,Beijing,25-34,2023-01-01,false",
        "A2,123,b@@example.com,Beijing,Beijing,25-34,2023-01-01,false",
        "A3,12345678901234567890,not-an-email,Beijing,Beijing,25-34,2023-01-01,false",
        "A4,,,Beijing,Beijing,25-34,2023-01-01,false",
        "A5,13800138000,A@Example.com ,Beijing,Beijing,25-34,2023-01-01,false",
    ]
    (tmp_path / "c.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    silo = tmp_path / "s"
    report = ingest(silo, tmp_path / "c.csv", keys=domain.keys(silo))
    phone = next(r for r in report.identifiers if r.kind == "phone")
    email = next(r for r in report.identifiers if r.kind == "email")
    assert (phone.valid, phone.invalid) == (2, 3)
    assert (email.valid, email.invalid) == (2, 3)
    assert phone.reasons.get("empty") == 1 and email.reasons.get("empty") == 1
    text = str(phone) + str(email)
    for raw in ("12345678901234567890", "b@@example.com", "not-an-email"):
        assert raw not in text, "examples must be masked"
    with SiloStore.open(silo) as store:
        pn = dict(store.execute("SELECT customer_key, phone_pn FROM customers").fetchall())
        em = dict(store.execute("SELECT customer_key, email_pn FROM customers").fetchall())
    keys = domain.keys(silo).pseudonymizer
    a1, a2, a3, a4, a5 = (keys.pseudonym("account", f"A{i}") for i in range(1, 6))
    assert pn[a1] == pn[a5] is not None  # two formats of one phone: one person
    assert em[a1] == em[a5] is not None  # case and spaces do not matter
    assert pn[a2] is None and pn[a3] is None and pn[a4] is None  # never a shared pseudonym
    assert em[a2] is None and em[a3] is None and em[a4] is None
