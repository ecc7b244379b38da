"""The compliance audit report: what every model cost in privacy, and which controls exist.

A compliance officer must be able to read, without running anything, what was
spent against which cap, under which mechanism and privacy unit, whether the
ledger is intact, what the server and each silo can see, and which GDPR/PIPL
controls are in place and where. This module gathers that from the ledger and
the silos' metadata (never from customer rows) into one dict, and renders it as
a self-contained HTML page (inline CSS, the plot embedded as a PNG data URI, no
network needed) with the same dict written as JSON next to it.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from pathlib import Path
from typing import Any

from fedprofile.files import atomic_write_bytes, atomic_write_json

from .ledger import Ledger, LedgerTamperError

TRUST_MODEL = [
    ("Federation server (ServerApp)",
     "Model weights, per-silo example counts, training loss, evaluation aggregates (AUC, "
     "log-loss, score histograms); in a PSI, blinded 32-byte values and the two set sizes. "
     "Never a customer id, pseudonym, feature row, label or key."),
    ("Each silo (ClientApp)",
     "Its own customers and orders (pseudonymised; raw identifiers sealed or dropped); the "
     "global model weights. As a PSI receiver: which of its selected customers are also "
     "customers of the other line (or only how many). As a PSI sender: the receiver's set size."),
    ("Key domain keyring holders (the silos)",
     "The pseudonymisation key of the domain (envelope-encrypted at rest, file mode 0600). The "
     "server never holds it."),
    ("Ledger holder (compliance)",
     "Every privacy spend with its mechanism parameters; no personal data."),
]

DATA_CATEGORIES = [
    ("Customer master data", "account id, phone, e-mail (pseudonymised at ingestion; raw values "
     "sealed in the silo or dropped), province and city, age band (coarse), sign-up date, "
     "marketing opt-out flag"),
    ("Orders", "order id, time, amount, category, product, destination, coupon used"),
    ("Derived features (never leave a silo)", "recency, order counts and spend, "
     "inter-purchase interval statistics, region and age band one-hot"),
]

RETENTION = [
    ("Silo stores", "kept by each business line under its own retention policy; fedprofile "
     "deletes nothing on its own"),
    ("Sealed identity maps and audience lists", "inside the silo directory, sealed with the "
     "silo's key; remove the silo's files to erase them"),
    ("Privacy-budget ledger", "append-only, kept for the lifetime of the models it accounts for "
     "(it holds no personal data)"),
    ("Run directories", "models, metrics and logs (aggregates only; checked by the leak guard)"),
]


def _checklist(dp_used: bool, verified: bool) -> list[dict[str, str]]:
    def item(ref: str, topic: str, status: str, where: str) -> dict[str, str]:
        return {"reference": ref, "topic": topic, "status": status, "where": where}

    return [
        item("GDPR Art. 5(1)(c)", "Data minimisation", "in place",
             "fixed feature schema (client/features.py); columns outside the schema are not "
             "stored (client/ingest.py); coarse age bands"),
        item("GDPR Art. 25", "Data protection by design and by default", "in place",
             "raw rows never leave a silo; pseudonyms at ingestion (privacy/pseudonyms.py); "
             "leak guard on every ClientApp reply (privacy/leak_guard.py)"),
        item("GDPR Art. 32", "Security of processing", "partial",
             "AES-GCM at rest (privacy/sealed.py), keyrings 0600 (privacy/keys.py), signed "
             "ledger (privacy/ledger.py); TLS and SuperNode authentication for deployments "
             "are not yet in place"),
        item("GDPR Art. 35", "Data protection impact assessment", "partial",
             "this report and the simulations support a DPIA; the assessment itself is the "
             "controller's"),
        item("PIPL Art. 24", "Automated decision-making: opt-out of personalised marketing",
             "partial", "opted-out customers are excluded from the cross-sell audience "
             "(client/audiences.py); model-targeted audiences are not yet built"),
        item("PIPL Art. 51", "Security measures and de-identification", "partial",
             "as GDPR Art. 32; pseudonymisation with keys the server never holds"),
        item("PIPL Art. 55", "Personal information protection impact assessment", "partial",
             "as GDPR Art. 35"),
        item("PIPL Art. 73", "De-identification vs anonymisation", "stated",
             "pseudonyms are de-identified, not anonymised: they remain personal information "
             "inside a key domain. Only DP-trained models carry a formal (epsilon, delta) "
             "guarantee" + (" (used)" if dp_used else " (no DP spend recorded yet)")),
        item("Accountability", "Tamper-evident privacy-budget ledger",
             "in place" if verified else "FAILED", "hash chain + HMAC signatures; "
             "`fedprofile ledger verify`"),
    ]


def _epsilon_plot(entries: list[dict[str, Any]]) -> str:
    """Cumulative charged epsilon over time per (silo, purpose), as a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    series: dict[str, tuple[list[dt.datetime], list[float]]] = {}
    for e in entries:
        key = f"{e['silo']} / {e['purpose']}"
        times, values = series.setdefault(key, ([], []))
        times.append(dt.datetime.fromisoformat(e["at"]))
        values.append((values[-1] if values else 0.0) + e["epsilon"])
    for key, (times, values) in sorted(series.items()):
        ax.step(times, values, where="post", marker="o", label=key)
    ax.set_ylabel("cumulative epsilon (spent)")
    ax.set_title("Privacy budget spent over time")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no spend recorded", ha="center", va="center", transform=ax.transAxes)
    fig.autofmt_xdate()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def silo_key_versions(silos_dir: Path | None) -> list[dict[str, str]]:
    """Key domain and version each silo's pseudonyms use (from its metadata)."""
    from fedprofile.client.store import STORE_FILENAME, SiloStore

    out = []
    if silos_dir and Path(silos_dir).is_dir():
        for silo in sorted(p for p in Path(silos_dir).iterdir() if (p / STORE_FILENAME).is_file()):
            with SiloStore.open(silo) as store:
                meta = store.meta()
            out.append({"silo": meta.get("name", silo.name), "key_domain": meta.get("key_domain", ""),
                        "key_version": meta.get("key_version", ""),
                        "raw_ids": meta.get("raw_ids", "")})
    return out


def gather(ledger_path: Path, key: bytes, silos_dir: Path | None = None) -> dict[str, Any]:
    """Everything the report shows, as plain data (the JSON twin)."""
    try:
        ledger = Ledger.open(ledger_path, key)
    except LedgerTamperError as err:
        return {"generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "ledger": str(ledger_path),
                "verification": {"ok": False, "problems": [str(p) for p in err.report.problems]},
                "summary": [], "entries": [], "worst_case_per_customer": None,
                "key_versions": silo_key_versions(silos_dir), "trust_model": TRUST_MODEL,
                "data_categories": DATA_CATEGORIES, "retention": RETENTION,
                "checklist": _checklist(False, False)}
    with ledger:
        report = ledger.verify()
        spent = [e.to_dict() for e in ledger.entries(status="spent")]
        purposes = sorted({e["purpose"] for e in spent})
        return {
            "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "ledger": str(ledger_path),
            "ledger_id": ledger.ledger_id,
            "verification": {"ok": report.ok, "problems": [str(p) for p in report.problems],
                             "head": report.head.to_dict()},
            "summary": ledger.summary(),
            "entries": [{k: e[k] for k in ("seq", "run_id", "silo", "purpose", "privacy_unit",
                                           "mechanism", "params", "delta",
                                           "epsilon_by_accountant", "epsilon", "at",
                                           "model_id", "operator")} for e in spent],
            "worst_case_per_customer": {"all purposes": ledger.worst_case_per_customer(),
                                        **{p: ledger.worst_case_per_customer(p) for p in purposes}},
            "privacy_units": sorted({e["privacy_unit"] for e in spent}),
            "accountants": {
                "rdp": "Renyi DP accountant (Opacus), the standard upper bound",
                "prv": "Privacy random variable accountant (Opacus): tighter, with a numeric "
                       "error bound; both are checked against Google's dp-accounting in tests",
                "charged": "the larger of the accountants' values; runs add up (basic composition)",
            },
            "key_versions": silo_key_versions(silos_dir),
            "trust_model": TRUST_MODEL,
            "data_categories": DATA_CATEGORIES,
            "retention": RETENTION,
            "checklist": _checklist(bool(spent), report.ok),
        }


REPORT_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:"
              "collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:.25em .5em;"
              "font-size:.85em;text-align:left}th{background:#eee}.ok{color:#070}.bad{color:#b00}")
"""The style of fedprofile's self-contained HTML reports (the audit and the simulation report)."""


def html_table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt_value(value: Any) -> str:
    return "—" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def render_html(data: dict[str, Any]) -> str:
    verification = data["verification"]
    status = ("intact" if verification["ok"] else "FAILED: " + "; ".join(verification["problems"]))
    summary_rows = [[r["silo"], r["purpose"], fmt_value(r["cap_epsilon"]), fmt_value(r["cap_delta"]),
                     fmt_value(r["spent"]), fmt_value(r["reserved"]), fmt_value(r["remaining"]), r["runs"]]
                    for r in data["summary"]]
    entry_rows = []
    for e in data["entries"]:
        p = e["params"]
        n = p.get("customers")
        entry_rows.append([e["seq"], e["at"], e["silo"], e["purpose"], e["mechanism"],
                           e["privacy_unit"], fmt_value(p.get("noise_multiplier")),
                           fmt_value(p.get("sample_rate")), fmt_value(p.get("steps")),
                           fmt_value(p.get("clip_norm")), fmt_value(e["delta"]), fmt_value(n),
                           fmt_value(e["delta"] * n) if n else "—",
                           fmt_value(e["epsilon_by_accountant"].get("rdp")),
                           fmt_value(e["epsilon_by_accountant"].get("prv")), fmt_value(e["epsilon"]),
                           e["model_id"] or "—", e["operator"]])
    worst = data.get("worst_case_per_customer") or {}
    plot = _epsilon_plot(data["entries"])
    css = REPORT_CSS
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>fedprofile privacy audit "
        "report</title>", f"<style>{css}</style></head><body>",
        "<h1>Privacy audit report</h1>",
        f"<p>Generated {html.escape(data['generated'])} from ledger "
        f"<code>{html.escape(data['ledger'])}</code>.</p>",
        f"<p id='verification'>Ledger verification: <b class='{'ok' if verification['ok'] else 'bad'}'>"
        f"{html.escape(status)}</b>"
        + (f" (head seq {verification['head']['seq']}, hash <code>{verification['head']['hash']}"
           "</code>)" if verification.get("head") else "") + "</p>",
        "<h2>Budget spent vs cap, per silo and purpose</h2>",
        html_table(["silo", "purpose", "cap epsilon", "cap delta", "spent", "reserved",
                "remaining", "runs"], summary_rows),
        "<h2>Worst case per customer</h2><p>A customer present in several silos may be in "
        "every silo's training data, so the totals add up over silos (basic composition):</p>",
        html_table(["purpose", "worst-case epsilon"], [[k, fmt_value(v)] for k, v in worst.items()]),
        "<h2>Epsilon over time</h2>", f"<img alt='epsilon over time' src='{plot}'>",
        "<h2>Mechanisms and parameters</h2><p>Privacy unit: <b>"
        + html.escape(", ".join(data.get("privacy_units") or ["customer"]))
        + "</b> (one training example per customer per silo). delta·N is the chance budget "
        "spread over the silo's customers; it should stay far below 1.</p>",
        html_table(["seq", "time", "silo", "purpose", "mechanism", "unit", "noise", "sample rate",
                "steps", "clip", "delta", "N", "delta·N", "eps RDP", "eps PRV", "eps charged",
                "model", "operator"], entry_rows),
        "<h2>Accountants</h2>",
        html_table(["accountant", "what it is"], [[k, v] for k, v in data.get("accountants", {}).items()]),
        "<h2>Trust model: who can see what</h2>",
        html_table(["party", "can see"], [list(r) for r in data["trust_model"]]),
        "<h2>Data categories used</h2>",
        html_table(["category", "fields"], [list(r) for r in data["data_categories"]]),
        "<h2>Retention</h2>", html_table(["what", "retention"], [list(r) for r in data["retention"]]),
        "<h2>Pseudonymisation key versions in use</h2>",
        html_table(["silo", "key domain", "key version", "raw identifiers"],
               [[k["silo"], k["key_domain"], k["key_version"], k["raw_ids"]]
                for k in data["key_versions"]]),
        "<h2>GDPR / PIPL checklist</h2>",
        html_table(["reference", "topic", "status", "where"],
               [[c["reference"], c["topic"], c["status"], c["where"]] for c in data["checklist"]]),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(ledger_path: Path, key: bytes, out_dir: Path,
                 silos_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``audit-report.html`` and its JSON twin ``audit-report.json`` to ``out_dir``."""
    data = gather(ledger_path, key, silos_dir)
    html_path, json_path = Path(out_dir) / "audit-report.html", Path(out_dir) / "audit-report.json"
    atomic_write_json(json_path, data)
    atomic_write_bytes(html_path, render_html(data).encode("utf-8"))
    return html_path, json_path
