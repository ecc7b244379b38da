"""Re-identification risk of what leaves a silo in a simulation, artifact by artifact.

Three kinds of artifact leave a silo in a simulated rollout:

* the customer breakdown a line would hand marketers or partners (counts by
  region, age band and tier): released through k-anonymous suppression, and
  reported with its smallest group before and after suppression;
* the DP segment report a federated segmentation releases (sizes per segment
  and per silo, already suppressed under ``k_min`` by
  :func:`fedprofile.client.segments.segment_report`);
* what each training run releases per silo to the server, which is then in
  every metrics file: test-set sizes and positives per silo. These are
  published as they are; the audit flags any that is a group under ``k_min``
  (a count of 3 buyers in a small silo is a fact about 3 people).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedprofile.client.breakdown import customer_breakdown
from fedprofile.privacy.release import release_check


def breakdown_rows(silos: Sequence[Path], quasi_identifiers: Sequence[str], k_min: int,
                   as_of: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one summary row per silo's breakdown, the released tables themselves)."""
    rows, tables = [], []
    for silo in silos:
        release = customer_breakdown(silo, quasi_identifiers, k_min, as_of)
        tables.append(release.to_dict())
        rows.append({"artifact": release.name, "released_to": "marketers, partners",
                     "quasi_identifiers": "/".join(quasi_identifiers), "k_min": k_min,
                     "groups": sum(not c.suppressed for c in release.cells),
                     "smallest_group_before": release.smallest_group_before,
                     "smallest_group_released": release.smallest_group_released,
                     "k_anonymity": release.k_anonymity,
                     "suppressed_groups": release.suppressed_groups,
                     "suppressed_customers": release.suppressed_customers,
                     "status": "suppressed below k" if release.suppressed_groups else "no small group"})
    return rows, tables


def evaluation_rows(metrics: dict[str, Any], k_min: int, run: str) -> list[dict[str, Any]]:
    """The per-silo evaluation counts one training run released, checked against ``k_min``."""
    silos = metrics["federated"]["silos"]
    out = []
    for field in ("examples", "positives"):
        counts = {name: int(values[field]) for name, values in silos.items() if field in values}
        check = release_check(counts, k_min)
        out.append({"artifact": f"evaluation {field} per silo ({run})", "released_to": "server",
                    "quasi_identifiers": "silo", "k_min": k_min, "groups": check["groups"],
                    "smallest_group_before": check["smallest_group"],
                    "smallest_group_released": check["smallest_group"],
                    "k_anonymity": check["smallest_group"], "suppressed_groups": 0,
                    "suppressed_customers": 0,
                    "status": ("below k: " + ", ".join(check["below_k"]) if check["below_k"]
                               else "no small group")})
    return out


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
