"""Membership tiers from frequency and spend (marketing case 2), defined in configuration.

A tier is a tag rule with a coupon: the first tier (in file order) whose
conditions hold is the customer's tier, so tiers partition the customers who
bought at least once. The default tiers (``default_tiers.toml``) are cut on
RFM scores, which are quintiles within the silo, so a tier means the same
thing in a silo of any size or currency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .profiles import Profiles
from .tags import TagRule, TagRuleError, apply_tags, load_rules

DEFAULT_TIERS_FILE = "default_tiers.toml"
TIER_KEYS = ("coupon", "coupon_value")


@dataclass(frozen=True)
class Tier:
    """One membership tier and the coupon its members are offered."""

    name: str
    description: str
    rule: TagRule
    coupon: str
    coupon_value: float  # share of the next order the coupon is worth (its cost)


def load_tiers(path: Path | None = None) -> list[Tier]:
    """The tiers in ``path`` (or the packaged defaults), validated, in file order."""
    source = str(path) if path is not None else DEFAULT_TIERS_FILE
    tiers = []
    for rule in load_rules(path, DEFAULT_TIERS_FILE, "tiers", TIER_KEYS):
        where = f"{source}: tier {rule.name!r}"
        coupon = rule.extra.get("coupon")
        value = rule.extra.get("coupon_value")
        if not isinstance(coupon, str) or not coupon.strip():
            raise TagRuleError(f"{where}: 'coupon' must name the offer, e.g. \"8% off the next "
                               "order\"")
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and 0 <= value < 1):
            raise TagRuleError(f"{where}: 'coupon_value' must be the coupon's share of an order, "
                               f"in [0, 1), got {value!r}")
        tiers.append(Tier(rule.name, rule.description, rule, coupon, float(value)))
    return tiers


def assign_tiers(profiles: Profiles, tiers: list[Tier]) -> np.ndarray:
    """Each customer's tier name (the first that applies), ``""`` for none (no purchase yet)."""
    hits = apply_tags(profiles.field_arrays(), [t.rule for t in tiers])
    return np.array([names[0] if names else "" for names in hits], dtype=object)
