"""What a silo may release about its customers, as k-anonymous count tables.

Two tables: the customer breakdown (counts by region, age band and tier) and
a campaign's report by offer (counts by A/B group, offer and outcome).

Marketers and partners ask "how many of your customers are Gold members aged
25-34 in Hainan?". Each answer is a count of people sharing quasi-identifiers,
and a count of 1 or 2 points at a person. This module builds the table inside
the silo and releases it only through :func:`fedprofile.privacy.release.k_anonymous_counts`,
which withholds every group under ``k_min`` (and one more when the withheld
total could be recovered by subtraction).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedprofile.privacy.release import KAnonymousRelease, k_anonymous_counts

from .campaigns import Audience
from .profiles import profile_silo
from .store import SiloStore
from .tiers import assign_tiers, load_tiers

NO_TIER = "none"
"""The tier of a customer with no purchase yet (no tier rule applies)."""


def quasi_identifier_rows(silo_dir: Path, quasi_identifiers: Sequence[str],
                          as_of: str = "") -> list[tuple[str, ...]]:
    """One row per customer: the values of ``quasi_identifiers`` (region, age_band, tier)."""
    silo_dir = Path(silo_dir)
    with SiloStore.open(silo_dir) as store:
        customers = store.customer_arrays()
    columns: dict[str, list[str]] = {
        "region": [str(p) or "unknown" for p in customers.province],
        "age_band": [str(a) or "unknown" for a in customers.age_band],
    }
    if "tier" in quasi_identifiers:
        profiles = profile_silo(silo_dir, as_of)
        tier_of = dict(zip(profiles.users, assign_tiers(profiles, load_tiers())))
        columns["tier"] = [tier_of.get(key) or NO_TIER for key in customers.customer_ids]
    unknown = [q for q in quasi_identifiers if q not in columns]
    if unknown:
        raise ValueError(f"unknown quasi-identifier(s) {', '.join(unknown)}; known: "
                         "region, age_band, tier")
    return list(zip(*(columns[q] for q in quasi_identifiers)))


def customer_breakdown(silo_dir: Path, quasi_identifiers: Sequence[str], k_min: int,
                       as_of: str = "") -> KAnonymousRelease:
    """The silo's customer counts by ``quasi_identifiers``, with small groups withheld."""
    with SiloStore.open(Path(silo_dir)) as store:
        name = store.name
    rows = quasi_identifier_rows(silo_dir, quasi_identifiers, as_of)
    return k_anonymous_counts(rows, quasi_identifiers, k_min,
                              name=f"customer breakdown ({name})")


CAMPAIGN_QUASI_IDENTIFIERS = ("group", "offer", "outcome")
"""The columns of a campaign report by offer: A/B group, offer, converted or not."""
NO_OFFER = "none"


def campaign_breakdown(audience: Audience, converted: Sequence[bool] | np.ndarray,
                       k_min: int, name: str = "") -> KAnonymousRelease:
    """A campaign's conversions by group, offer and outcome, with small groups withheld.

    Marketers want lift per offer ("did the Japan pack coupon work?"), but a
    cell such as "B / Japan pack / converted: 2" is a fact about two people
    whose membership in the audience is itself personal data. The table goes
    through the same k-anonymous release as the customer breakdown; the
    overall A/B counts (:class:`fedprofile.models.abtest.CampaignReport`)
    are reported separately. A control row's offer is the one it would have got.
    """
    flags = np.asarray(converted, dtype=bool)
    if flags.shape != (len(audience),):
        raise ValueError(f"converted has {flags.size} value(s) for an audience of {len(audience)}")
    rows = [(row.group, row.offer or NO_OFFER, "converted" if hit else "not converted")
            for row, hit in zip(audience.rows, flags)]
    return k_anonymous_counts(rows, CAMPAIGN_QUASI_IDENTIFIERS, k_min,
                              name=name or f"campaign report by offer ({audience.campaign_id})")
