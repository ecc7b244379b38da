"""k-anonymous release of count tables (fedprofile.privacy.release)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedprofile.privacy.release import k_anonymous_counts, release_check

QI = ("region", "tier")


def _rows(spec: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    return [key for key, n in spec.items() for _ in range(n)]


def _shown(rel) -> list[int]:
    return [c.count for c in rel.cells if c.count is not None]


def test_small_group_withheld_and_not_recoverable():
    rel = k_anonymous_counts(_rows({("north", "gold"): 3, ("south", "gold"): 40,
                                    ("east", "basic"): 25, ("west", "basic"): 60}),
                             QI, k_min=10, name="customer breakdown (flights)")
    cell = {c.key: c for c in rel.cells}
    assert cell[("north", "gold")].count is None and cell[("north", "gold")].reason == "below k"
    # Without complementary suppression total - shown would give back the 3.
    assert cell[("east", "basic")].suppressed and cell[("east", "basic")].reason == "complementary"
    withheld = rel.total - sum(_shown(rel))
    assert withheld == 28 and withheld >= rel.k_min
    d = rel.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["total"] == 128 and d["suppressed_customers"] == 28 and d["suppressed_groups"] == 2
    assert {tuple(c["key"]): c["count"] for c in d["cells"]}[("north", "gold")] is None
    assert "smallest_group_before" not in d and rel.smallest_group_before == 3
    assert "reason" not in json.dumps(d) and "below k" not in json.dumps(d)
    assert 3 not in [c["count"] for c in d["cells"]]
    text = rel.to_text()
    assert text.startswith("customer breakdown (flights)") and text.count("<10") >= 2
    assert not any(line.split()[-1] == "3" for line in text.splitlines()[1:])


def test_two_small_groups_summing_to_k_need_no_complement():
    rel = k_anonymous_counts(_rows({("a", "x"): 3, ("b", "x"): 4, ("c", "x"): 20}), QI, k_min=7)
    assert [c.reason for c in rel.cells] == ["below k", "below k", ""]
    assert _shown(rel) == [20] and rel.suppressed_customers == 7


def test_single_small_group_takes_smallest_shown_as_complement():
    rel = k_anonymous_counts(_rows({("a", "x"): 4, ("b", "x"): 30, ("c", "x"): 6, ("d", "x"): 9}),
                             QI, k_min=5)
    reasons = {c.key[0]: c.reason for c in rel.cells}
    assert reasons == {"a": "below k", "b": "", "c": "complementary", "d": ""}
    assert rel.suppressed_groups == 2 and rel.suppressed_customers == 10
    assert rel.k_anonymity == 9


def test_all_groups_large_nothing_withheld():
    spec = {("north", "gold"): 12, ("north", "basic"): 30, ("south", "gold"): 15}
    rel = k_anonymous_counts(_rows(spec), QI, k_min=12)  # a group of exactly k_min is shown
    assert rel.suppressed_groups == 0 and rel.suppressed_customers == 0
    assert rel.k_anonymity == rel.smallest_group_released == rel.smallest_group_before == 12
    assert [c.key for c in rel.cells] == sorted(spec)
    text = rel.to_text()
    assert "<12" not in text and "withheld" not in text
    for n in ("12", "30", "15", "57"):
        assert n in text


def test_everything_small_all_withheld():
    rel = k_anonymous_counts(_rows({("a", "x"): 2, ("b", "y"): 3}), QI, k_min=10)
    assert all(c.suppressed and c.count is None for c in rel.cells)
    assert rel.k_anonymity is None and rel.smallest_group_released is None
    # The total (5) would itself be the small group: it is withheld too.
    d = rel.to_dict()
    assert d["total"] is None and d["suppressed_customers"] is None
    assert "5" not in json.dumps(d["cells"]) and "Total" in rel.to_text()


def test_validation():
    with pytest.raises(ValueError, match="row 2"):
        k_anonymous_counts([("a", "x"), ("b", "y"), ("c",)], QI, k_min=2)
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="k_min"):
            k_anonymous_counts([("a", "x")], QI, k_min=bad)
        with pytest.raises(ValueError, match="k_min"):
            release_check({"a": 10}, k_min=bad)
    with pytest.raises(ValueError, match="quasi_identifiers"):
        k_anonymous_counts([("a", "x")], ("region", "region"), k_min=2)
    with pytest.raises(ValueError, match="quasi_identifiers"):
        k_anonymous_counts([], (), k_min=2)
    assert k_anonymous_counts([], QI, k_min=np.int64(3)).k_min == 3


def test_release_check_flags_small_arm():
    out = release_check({("spring", "treatment"): 480, ("spring", "control"): 7,
                         "holdout": None, "empty": 0}, k_min=10)
    assert out == {"groups": 2, "smallest_group": 7, "below_k": ["spring/control"],
                   "k_anonymous": False}
    ok = release_check({"a": 10, "b": 11}, k_min=10)
    assert ok["k_anonymous"] and ok["below_k"] == [] and ok["smallest_group"] == 10
    assert release_check({"a": None}, k_min=5)["smallest_group"] is None
    with pytest.raises(ValueError):
        release_check({"a": -1}, k_min=5)


@pytest.mark.parametrize("seed", range(8))
def test_random_tables_are_k_anonymous(seed):
    rng = np.random.default_rng(seed)
    k_min = int(rng.integers(2, 12))
    regions, tiers = [f"r{i}" for i in range(int(rng.integers(1, 6)))], ["gold", "silver", "basic"]
    n = int(rng.integers(1, 200))
    # Skewed choice so that small groups are common.
    p = rng.dirichlet(np.full(len(regions) * len(tiers), 0.3))
    combos = [(r, t) for r in regions for t in tiers]
    rows = [combos[i] for i in rng.choice(len(combos), size=n, p=p)]
    rel = k_anonymous_counts(rows, QI, k_min=k_min)
    shown = _shown(rel)
    assert rel.total == n and all(c >= k_min for c in shown)
    if rel.total_released is not None:
        assert rel.total - sum(shown) == 0 or rel.total - sum(shown) >= k_min
    else:
        assert not shown and n < k_min
    assert sum(c.reason == "complementary" for c in rel.cells) <= 1
    true = {}
    for r in rows:
        true[r] = true.get(r, 0) + 1
    assert {c.key for c in rel.cells} == set(true)
    assert all(c.count in (None, true[c.key]) for c in rel.cells)
    assert release_check({c.key: c.count for c in rel.cells}, k_min)["k_anonymous"]


def test_campaign_report_by_offer_withholds_a_small_group():
    from fedprofile.client.breakdown import campaign_breakdown
    from fedprofile.client.campaigns import Audience, AudienceRow

    spec = [("A", "JP pack", True, 2), ("A", "JP pack", False, 40), ("B", "JP pack", False, 41),
            ("A", "TH pack", False, 30), ("B", "TH pack", False, 29), ("B", "TH pack", True, 12)]
    rows, converted = [], []
    for group, offer, hit, n in spec:
        for _ in range(n):
            rows.append(AudienceRow(f"p{len(rows):04d}", group, offer))
            converted.append(hit)
    rel = campaign_breakdown(Audience("spring-1", tuple(rows)), np.array(converted), k_min=10)
    assert rel.quasi_identifiers == ("group", "offer", "outcome")
    cells = {c.key: c for c in rel.cells}
    assert cells[("A", "JP pack", "converted")].count is None  # the 2 converters: withheld
    assert cells[("A", "JP pack", "converted")].reason == "below k"
    # one more group goes, or 2 would follow from the total (154) minus what is shown
    assert rel.suppressed_groups == 2 and rel.k_anonymity >= 10
    assert cells[("B", "TH pack", "converted")].count is None  # the smallest shown (12)
    assert 2 not in [c["count"] for c in rel.to_dict()["cells"]]
    assert "<10" in rel.to_text() and rel.to_dict()["total"] == 154
    with pytest.raises(ValueError, match="converted has 3 value"):
        campaign_breakdown(Audience("spring-1", tuple(rows)), np.array([True] * 3), k_min=10)
