"""Re-identification risk of what leaves a silo in a simulation, artifact by artifact.

These kinds of artifact leave a silo in a simulated rollout:

* the customer breakdown a line would hand marketers or partners (counts by
  region, age band and tier): released through k-anonymous suppression, and
  reported with its smallest group before and after suppression;
* the DP segment report a federated segmentation releases (sizes per segment
  and per silo, already suppressed under ``k_min`` by
  :func:`fedprofile.client.segments.segment_report`);
* what each training run releases per silo to the server, which is then in
  every metrics file: test-set sizes and positives per silo. These are
  published as they are; the audit flags any that is a group under ``k_min``
  (a count of 3 buyers in a small silo is a fact about 3 people);
* a marketing case's audience counts: the sizes a private set intersection
  shows the server, and the counts the receiving silo's operator reads
  (selected, matched in the other line, opted out, without a phone, audience);
* a campaign's plan (arm sizes, treated per offer) and A/B report (converted
  or not per arm), published as they are and flagged like the evaluation
  counts, and its report by offer, released k-anonymously
  (:func:`fedprofile.client.breakdown.campaign_breakdown`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedprofile.client.breakdown import customer_breakdown
from fedprofile.client.campaigns import CampaignPlan
from fedprofile.privacy.release import KAnonymousRelease, release_check

from .campaign_run import PlayedCampaign


def release_row(release: KAnonymousRelease, released_to: str) -> dict[str, Any]:
    """The audit row of a table released through k-anonymous suppression."""
    return {"artifact": release.name, "released_to": released_to,
            "quasi_identifiers": "/".join(release.quasi_identifiers), "k_min": release.k_min,
            "groups": sum(not c.suppressed for c in release.cells),
            "smallest_group_before": release.smallest_group_before,
            "smallest_group_released": release.smallest_group_released,
            "k_anonymity": release.k_anonymity,
            "suppressed_groups": release.suppressed_groups,
            "suppressed_customers": release.suppressed_customers,
            "status": "suppressed below k" if release.suppressed_groups else "no small group"}


def published_row(artifact: str, released_to: str, grouped_by: str,
                  counts: Mapping[str, int], k_min: int) -> dict[str, Any]:
    """The audit row of counts published as they are: any group under ``k_min`` is flagged."""
    check = release_check(counts, k_min)
    return {"artifact": artifact, "released_to": released_to, "quasi_identifiers": grouped_by,
            "k_min": k_min, "groups": check["groups"],
            "smallest_group_before": check["smallest_group"],
            "smallest_group_released": check["smallest_group"],
            "k_anonymity": check["smallest_group"], "suppressed_groups": 0,
            "suppressed_customers": 0,
            "status": ("below k: " + ", ".join(check["below_k"]) if check["below_k"]
                       else "no small group")}


def breakdown_rows(silos: Sequence[Path], quasi_identifiers: Sequence[str], k_min: int,
                   as_of: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one summary row per silo's breakdown, the released tables themselves)."""
    rows, tables = [], []
    for silo in silos:
        release = customer_breakdown(silo, quasi_identifiers, k_min, as_of)
        tables.append(release.to_dict())
        rows.append(release_row(release, "marketers, partners"))
    return rows, tables


def evaluation_rows(metrics: dict[str, Any], k_min: int, run: str) -> list[dict[str, Any]]:
    """The per-silo evaluation counts one training run released, checked against ``k_min``."""
    silos = metrics["federated"]["silos"]
    return [published_row(f"evaluation {field} per silo ({run})", "server", "silo",
                          {name: int(values[field]) for name, values in silos.items()
                           if field in values}, k_min)
            for field in ("examples", "positives")]


AUDIENCE_COUNTS = ("selected", "matched_elsewhere", "opted_out", "no_phone", "audience")
"""The counts of an audience summary (:class:`fedprofile.client.audiences.AudienceSummary`)."""


def audience_rows(psi: Mapping[str, Any], k_min: int, case: str) -> list[dict[str, Any]]:
    """What a PSI run showed: set sizes to the server, the audience summary to the receiver."""
    server, receiver = psi["server"], psi["receiver"]
    pair = f"{server['receiver']} x {server['sender']}"
    return [published_row(f"PSI set sizes ({case}: {pair})", "server", "silo",
                          {server["receiver"]: int(server["receiver_size"]),
                           server["sender"]: int(server["sender_size"])}, k_min),
            published_row(f"audience counts ({case}: {pair})",
                          f"{server['receiver']} operator, marketers", "audience stage",
                          {name: int(receiver[name]) for name in AUDIENCE_COUNTS}, k_min)]


def plan_row(plan: CampaignPlan, k_min: int, case: str) -> dict[str, Any]:
    """A campaign plan's counts (arm sizes, treated per offer, opted out), checked."""
    return published_row(f"campaign plan ({case}: {plan.campaign_id}, {plan.silo})", "marketers",
                         "arm, offer (treated), opted out",
                         {"A": plan.treated, "B": plan.control,
                          "opted out": plan.excluded_opted_out,
                          **{f"A/{offer}": n for offer, n in plan.offers.items()}}, k_min)


def campaign_rows(played: PlayedCampaign, k_min: int, case: str) -> list[dict[str, Any]]:
    """A played campaign's plan, A/B report and report by offer, checked against ``k_min``."""
    plan, report = played.plan, played.report
    arms = {"A": report.treated, "B": report.control}
    return [plan_row(plan, k_min, case),
            published_row(f"campaign A/B report ({case}: {plan.campaign_id}, {plan.silo})",
                          "marketers", "group/outcome",
                          {f"{arm}/{outcome}": n for arm, g in arms.items()
                           for outcome, n in (("converted", g.conversions),
                                              ("not converted", g.n - g.conversions))}, k_min),
            release_row(played.by_offer(k_min), "marketers")]


def segment_rows(report: dict[str, Any], k_min: int) -> list[dict[str, Any]]:
    """The segment report's released sizes (per segment, and per silo in each), checked."""
    sizes = [r["size"] for r in report["segments"]]
    cells = [v for r in report["segments"] for v in r["per_silo"].values()]
    out = []
    for what, values, suppressed in (
            ("segment sizes", sizes, report["suppressed_segments"]),
            ("segment sizes per silo", cells, report["suppressed_cells"])):
        shown = [int(v) for v in values if v is not None]
        check = release_check({str(i): v for i, v in enumerate(shown)}, k_min)
        out.append({"artifact": f"DP segment report: {what}", "released_to": "marketers",
                    "quasi_identifiers": "segment" + ("/silo" if "silo" in what else ""),
                    "k_min": k_min, "groups": check["groups"],
                    "smallest_group_before": None,
                    "smallest_group_released": check["smallest_group"],
                    "k_anonymity": check["smallest_group"], "suppressed_groups": suppressed,
                    "suppressed_customers": None,
                    "status": ("below k: " + ", ".join(check["below_k"]) if check["below_k"]
                               else "suppressed below k" if suppressed else "no small group")})
    return out
