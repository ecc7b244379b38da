"""The marketing cases a simulated rollout runs, for what they release (simulation only).

A compliance team must see the re-identification risk of every artifact a
rollout releases, and the marketing cases release the most pointed ones:
counts of people in a cross-line audience, arms of an A/B test, conversions
per offer. So ``fedprofile simulate`` runs them the way an operator would:

* case 1, cross-category acquisition: a private set intersection on Flower
  between the first flights silo (receiver) and the first data-pack silo
  (sender); the flights silo plans the data-pack coupon campaign on the
  audience it sealed, split A/B, and the simulation plays it out against the
  ground truth (conversion is a data-pack order within 3 days);
* case 2, retention: the first silo of each line plans its membership-tier
  coupons (the plan's counts per tier are what leaves the silo).

Case 2 is planned, not played out: its audiences include the audit canaries,
who have no ground-truth person to convert or not.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedprofile.client.campaigns import save_audience_plan
from fedprofile.client.cases import cross_sell_campaign, retention_campaign
from fedprofile.config import TrainConfig
from fedprofile.privacy.keys import Secret
from fedprofile.privacy.silo_keys import load_silo_keys

from .campaign_run import play_campaign, write_campaign
from .psi_run import run_psi_job
from .reidentification import audience_rows, campaign_rows, plan_row
from .shards import Federation, silo_line

CASE_1_ID = "case-1-cross-sell"
CASE_2_ID = "case-2-retention"


def first_silo_of(federation: Federation, line: str) -> Path:
    """The first silo (by name) that serves ``line``."""
    for silo in federation.silos:
        if silo_line(silo.name) == line:
            return silo
    raise ValueError(f"no silo serves the {line} line (silos: "
                     f"{', '.join(s.name for s in federation.silos)})")


def case_release_rows(federation: Federation, platform_dir: Path, keyring: Path, key_file: Path,
                      as_of: str, k_min: int, seed: int, where: Path,
                      progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run case 1 (PSI, plan, played-out A/B test) and case 2's plans; check their releases.

    ``where`` receives the PSI run and the case 1 campaign report (JSON,
    text, plots); the audiences stay sealed in the silos.
    """
    secret = Secret.from_key_file(key_file)
    flights = first_silo_of(federation, "flights")
    datapacks = first_silo_of(federation, "datapacks")
    progress(f"  case 1: private set intersection {flights.name} x {datapacks.name}, the "
             "data-pack coupon campaign played out")
    cfg = TrainConfig(silos_dir=str(federation.silos_dir), workspace=str(where),
                      run_dir=str(where / "psi"), as_of=as_of, seed=seed,
                      min_silos=len(federation.silos), psi_receiver=flights.name,
                      psi_sender=datapacks.name, key_file=str(key_file))
    psi = run_psi_job(cfg, progress=lambda _m: None)
    rows = audience_rows(psi, k_min, "case 1")
    keys = load_silo_keys(keyring, secret, flights)
    if keys.identity_key is None:
        raise ValueError(f"silo {flights} keeps no raw identifiers: case 1 cannot be played out")
    plan, audience = cross_sell_campaign(flights, CASE_1_ID, keys.identity_key, as_of=as_of)
    save_audience_plan(flights, plan, audience, keys.identity_key)
    played = play_campaign(platform_dir, keys, CASE_1_ID, line="datapacks", seed=seed)
    write_campaign(played, where / CASE_1_ID, k_min)
    rows += campaign_rows(played, k_min, "case 1")
    lines = sorted({silo_line(s.name) for s in federation.silos})
    progress(f"  case 2: membership-tier coupon plans in {', '.join(lines)}")
    for line in lines:
        plan, _ = retention_campaign(first_silo_of(federation, line), CASE_2_ID, as_of=as_of)
        rows.append(plan_row(plan, k_min, "case 2"))
    return rows
