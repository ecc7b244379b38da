"""Membership tiers (marketing case 2): configuration, validation, first match wins."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from fedprofile.client.interactions import Interactions
from fedprofile.client.profiles import compute_profiles
from fedprofile.client.tags import TagRuleError
from fedprofile.client.tiers import assign_tiers, load_tiers


def _profiles():
    day = dt.datetime(2024, 1, 1)
    rows = []
    for user, orders, amount in (("big", 12, 900.0), ("mid", 4, 300.0), ("two", 2, 50.0),
                                 ("one", 1, 20.0)):
        rows += [(user, f"i{k}", day + dt.timedelta(days=20 * k), amount, "north")
                 for k in range(orders)]
    return compute_profiles(Interactions.from_records(rows))


def test_first_matching_tier_wins(tmp_path: Path) -> None:
    path = tmp_path / "tiers.toml"
    path.write_text('''
[tiers.vip]
when = ["frequency >= 10"]
coupon = "lounge pass"
coupon_value = 0.02

[tiers.regular]
when = ["frequency >= 2"]
coupon = "10% off"
coupon_value = 0.1
''')
    tiers = load_tiers(path)
    assert [t.name for t in tiers] == ["vip", "regular"]
    profiles = _profiles()
    by_user = dict(zip(profiles.users, assign_tiers(profiles, tiers), strict=True))
    # "big" matches both rules and gets the first
    assert by_user == {"big": "vip", "mid": "regular", "one": "", "two": "regular"}


def test_default_tiers_cover_every_buyer() -> None:
    tiers = load_tiers()
    assert [t.name for t in tiers] == ["platinum", "gold", "silver", "member"]
    assert all(0 <= t.coupon_value < 1 and t.coupon for t in tiers)
    assert all(name != "" for name in assign_tiers(_profiles(), tiers))


@pytest.mark.parametrize("body, message", [
    ('when = ["frequency >= 2"]\ncoupon_value = 0.1', "'coupon' must name the offer"),
    ('when = ["frequency >= 2"]\ncoupon = "x"\ncoupon_value = 1.5', "'coupon_value' must be"),
    ('when = ["frequency >= 2"]\ncoupon = "x"\ncoupon_value = 0.1\ncolour = "red"',
     "unknown key(s) 'colour'"),
    ('when = ["frequncy >= 2"]\ncoupon = "x"\ncoupon_value = 0.1', "unknown field 'frequncy'"),
])
def test_tier_file_errors_name_the_file_and_tier(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "tiers.toml"
    path.write_text(f"[tiers.gold]\n{body}\n")
    with pytest.raises(TagRuleError) as info:
        load_tiers(path)
    assert str(path) in str(info.value) and "tier 'gold'" in str(info.value)
    assert message in str(info.value)
