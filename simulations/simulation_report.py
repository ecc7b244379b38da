"""The simulation report: one self-contained HTML page (plots inline), in the audit report's style.

It is what a compliance officer reads and signs: the plain-language summary
first, then the evidence (utility against epsilon, the smallest epsilon that
keeps utility, the membership audit with its control, the re-identification
table). Everything comes from ``results.json``; the page needs no network.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path
from typing import Any

from fedprofile.files import atomic_write_bytes
from fedprofile.privacy.audit import REPORT_CSS, fmt_value, html_table

from .sweep import METRIC_LABELS

REPORT_FILE = "report.html"


def _image(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}' style='max-width:100%'>"


def _interval(row: dict[str, Any]) -> str:
    low, high = row["low"], row["high"]
    if low != low:  # NaN: one seed, no interval
        return "—"
    return f"[{low:.4f}, {high:.4f}]"


def render(out_dir: Path, results: dict[str, Any]) -> str:
    """The report's HTML for the run in ``out_dir`` (its plots are read from there)."""
    scenario = results["scenario"]
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>fedprofile simulation report: "
        f"{esc(scenario['name'])}</title><style>{REPORT_CSS}</style></head><body>",
        f"<h1>Simulation report: {esc(scenario['name'])}</h1>",
        f"<p>Generated {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}. Synthetic "
        f"platform of {scenario['platform']['customers']:,} people in {len(results['silos'])} "
        f"silos; {scenario['training']['rounds']} federated rounds; seeds "
        f"{', '.join(map(str, scenario['seeds']))}; delta = {scenario['dp']['delta']:g}; data as "
        f"of {esc(results['as_of'])}. Re-running <code>scenario.toml</code> gives the same "
        "numbers.</p>",
        "<h2 id='summary'>Summary</h2><ul>"
        + "".join(f"<li>{esc(line)}</li>" for line in results["summary"]) + "</ul>",
        "<h2>Privacy-utility sweep</h2>",
        "<p>Each point is a real federated run (DP-SGD in every silo, customer-level, its own "
        "ledger capped at the point's epsilon). Intervals are Student-t "
        f"{scenario['sweep']['confidence']:.0%} intervals over seeds.</p>",
        html_table(["model", "privacy", "metric", "mean", "interval", "seeds", "epsilon spent"],
                   [[r["model"], r["level"], METRIC_LABELS.get(r["metric"], r["metric"]),
                     f"{r['mean']:.4f}", _interval(r), r["seeds"], fmt_value(r["spent_epsilon"])]
                    for r in results["sweep"]]),
    ]
    for model in scenario["training"]["models"]:
        parts.append(_image(out_dir / f"utility_{model}.png", f"{model} utility vs epsilon"))
    tolerance = scenario["sweep"]["tolerance"]
    parts += [
        f"<h3>Smallest epsilon within {tolerance:.0%} of no-DP</h3>",
        html_table(["model", "metric", "no-DP", "target", "smallest epsilon", "share of no-DP"],
                   [[k["model"], k["metric"], fmt_value(k["no_dp"]), fmt_value(k["target"]),
                     "none in the grid" if k["epsilon"] is None else f"{k['epsilon']:g}",
                     "—" if k["share"] is None else f"{k['share']:.1%}"]
                    for k in results["smallest_epsilon"]]),
    ]
    audit = results.get("audit")
    if audit:
        control = audit["control"]
        status = (f"conclusive: the {control['attack']} attack beats guessing against every "
                  "non-private control" if control["conclusive"] else
                  f"INCONCLUSIVE: the {control['attack']} attack does not beat guessing against "
                  "every non-private control")
        fprs = sorted({f for a in audit["models"] for f in a["tpr_at_fpr"]}, key=float, reverse=True)
        parts += [
            "<h2>Empirical privacy audit (membership inference)</h2>",
            "<p>Loss-threshold attack on each propensity model, twice. <b>canary</b>: planted "
            "audit customers with coin-flip labels, each put into a silo's training data with "
            "probability one half (the rest held out); a model fits a member canary only by "
            "remembering it, so this attack is built to work against a non-private model. "
            "<b>population</b>: real customers the silos trained on against customers of the "
            "same lines held out of every silo. "
            "The threshold is chosen on one half of each group and measured on the other. The "
            "empirical epsilon lower bound uses Clopper-Pearson bounds on the attack's error "
            f"rates ({scenario['audit']['confidence']:.0%} confidence); it must never exceed the "
            "accountant's epsilon.</p>",
            f"<p>Control: <b class='{'ok' if control['conclusive'] else 'bad'}'>{esc(status)}</b>"
            f" (best AUC {fmt_value(control['best_auc'])}).</p>",
            f"<p>Claims: <b class='{'bad' if audit['violations'] else 'ok'}'>"
            + (esc("; ".join(audit["violations"])) if audit["violations"] else
               "no empirical lower bound exceeds the accountant's epsilon") + "</b></p>",
            html_table(["attack", "privacy", "seed", "attack AUC", "AUC interval"]
                       + [f"TPR at FPR {f}" for f in fprs]
                       + ["empirical epsilon lower bound", "accountant epsilon",
                          "members / non-members (test half)"],
                       [[a["attack"], a["level"], a["seed"], f"{a['auc']:.4f}",
                         f"[{a['auc_ci'][0]:.3f}, {a['auc_ci'][1]:.3f}]"]
                        + [f"{a['tpr_at_fpr'].get(f, 0.0):.4f}" for f in fprs]
                        + [f"{a['epsilon_lower_bound']:.4f}", fmt_value(a["claimed_epsilon"]),
                           f"{a['members']:,} / {a['non_members']:,}"]
                        for a in audit["models"]]),
            _image(out_dir / "audit.png", "membership audit"),
        ]
    releases = results["releases"]
    parts += [
        "<h2>Re-identification risk of released artifacts</h2>",
        f"<p>Groups under k = {releases['k_min']} customers are withheld from customer "
        "breakdowns and segment reports (and one more group when the withheld total could be "
        "recovered from the published total). k-anonymity is the smallest group a released "
        "table shows. Segment sizes carry DP noise. A campaign's report by offer is released "
        "the same way. Per-silo evaluation counts, PSI set sizes, audience counts, campaign "
        "plans and A/B reports are published as they are; a row marked \"below k\" names "
        "each count in it that describes fewer than k customers.</p>",
        html_table(["artifact", "released to", "grouped by", "groups shown",
                    "smallest group released", "k-anonymity", "suppressed groups",
                    "customers in suppressed groups", "status"],
                   [[a["artifact"], a["released_to"], a["quasi_identifiers"], a["groups"],
                     fmt_value(a["smallest_group_released"]), fmt_value(a["k_anonymity"]),
                     a["suppressed_groups"], fmt_value(a["suppressed_customers"]), a["status"]]
                    for a in releases["artifacts"]]),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write_report(out_dir: Path, results: dict[str, Any]) -> Path:
    """Write ``report.html`` into ``out_dir``."""
    path = Path(out_dir) / REPORT_FILE
    atomic_write_bytes(path, render(Path(out_dir), results).encode("utf-8"))
    return path
