"""Per-silo profiles and configured tags: values by hand, tag-file errors, vectors, real data."""

from __future__ import annotations

import csv
import datetime as dt
import math
import time
from pathlib import Path

import numpy as np
import pytest

from fedprofile.client.interactions import Interactions
from fedprofile.client.profiles import (CLV_HISTORIC, CLV_MODEL, PROFILE_VECTOR_FEATURES,
                                        PROFILE_VECTOR_NORM_BOUND, ProfileConfig, Profiles,
                                        compute_profiles, decode_vector, profile_vectors,
                                        rfm_scores)
from fedprofile.client.tags import (NUMERIC_FIELDS, TEXT_FIELDS, TagRuleError, apply_tags,
                                    load_tag_rules)
from fedprofile.models.clv import prob_no_purchase
from fedprofile.simulations import online_retail

from .conftest import require_online_retail


def at(month: int, day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2024, month, day, hour)


def epoch(when: dt.datetime) -> int:
    return int(when.replace(tzinfo=dt.UTC).timestamp())


AS_OF = epoch(at(3, 1))
RECORDS = [
    # a: four occasions (the first has two lines); the last has no known value.
    ("a", "x", at(1, 1, 10), 10.0, "north"), ("a", "y", at(1, 1, 10), 5.0, "north"),
    ("a", "x", at(1, 11, 10), 20.0, "north"), ("a", "z", at(1, 31, 10), 30.0, "south"),
    ("a", "x", at(2, 10, 10), None, "south"),
    # b: two occasions in two regions (a tie: the later one wins).
    ("b", "x", at(2, 1, 12), 40.0, "east"), ("b", "y", at(2, 20, 12), 60.0, "west"),
    # c: one purchase, no region.
    ("c", "z", at(1, 15), 7.5, None),
    # d: opted out; one purchase with no known value.
    ("d", "y", at(2, 25), None, "north"),
    # e: only after the as-of date.
    ("e", "x", at(3, 5, 10), 12.0, "north"),
]


@pytest.fixture(scope="module")
def tiny() -> Interactions:
    return Interactions.from_records(RECORDS, opted_out=["d"], name="tiny")


@pytest.fixture(scope="module")
def profiles(tiny: Interactions) -> Profiles:
    return compute_profiles(tiny, as_of=AS_OF)


def _by_user(p: Profiles, name: str) -> np.ndarray:
    return np.asarray(getattr(p, name))


def test_values_by_hand(profiles: Profiles) -> None:
    p = profiles
    assert list(p.users) == ["a", "b", "c", "d", "e"] and p.n_users == 5
    assert p.frequency.tolist() == [4, 2, 1, 1, 0]
    nan = math.nan
    expect = {
        "recency_days": [19 + 14 / 24, 9.5, 46.0, 5.0, nan],  # 2024 is a leap year
        "tenure_days": [59 + 14 / 24, 28.5, 46.0, 5.0, nan],
        "monetary": [65.0, 100.0, 7.5, nan, nan],
        "avg_order_value": [65.0 / 3, 50.0, 7.5, nan, nan],  # a's last occasion has no value
        "mean_interval_days": [40 / 3, 19.0, nan, nan, nan],
        "median_interval_days": [10.0, 19.0, nan, nan, nan],
        "periodicity": [math.sqrt(2) / 4, nan, nan, nan, nan],  # CV of [10, 20, 10]; needs 2 gaps
        "days_until_next": [-(9 + 14 / 24), 9.5, nan, nan, nan],
        "overdue_ratio": [(19 + 14 / 24) / (40 / 3), 9.5 / 19, nan, nan, nan],
    }
    for name, want in expect.items():
        np.testing.assert_allclose(_by_user(p, name), want, rtol=1e-12, err_msg=name)
    assert p.predicted_next_purchase[0] == epoch(at(2, 20, 10))  # last + median interval
    assert p.predicted_next_purchase[1] == epoch(at(3, 10, 12))  # one interval: used as is
    assert p.region.tolist() == ["north", "west", "", "north", ""]
    assert p.opt_out.tolist() == [False, False, False, True, False]


def test_rfm_scores_and_segments(profiles: Profiles) -> None:
    p = profiles
    # R over recency [19.6, 9.5, 46, 5]: the most recent scores highest.
    assert p.r_score.tolist() == [3, 4, 2, 5, 0]
    # F over [4, 2, 1, 1]: the tied ones share a score.
    assert p.f_score.tolist() == [5, 4, 2, 2, 0]
    # M over [65, 100, 7.5] (d has no known value: 0).
    assert p.m_score.tolist() == [4, 5, 2, 0, 0]
    assert p.rfm_segment.tolist() == ["R3F5M4", "R4F4M5", "R2F2M2", "R5F2M0", ""]


def test_rfm_score_boundaries() -> None:
    # Score k covers average ranks in ((k-1) n/5, k n/5]: rank n/5 is still a 1.
    assert rfm_scores(np.arange(10.0)).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert rfm_scores(np.arange(7.0)).tolist() == [1, 2, 3, 3, 4, 5, 5]
    assert rfm_scores(np.arange(5.0), higher_is_better=False).tolist() == [5, 4, 3, 2, 1]
    # Ties share a score whatever their order; NaN scores 0.
    assert rfm_scores(np.array([1.0, 1, 1, 1, 9])).tolist() == [3, 3, 3, 3, 5]
    assert rfm_scores(np.array([9.0, 1, np.nan, 1, 1, 1])).tolist() == [5, 3, 0, 3, 3, 3]
    assert rfm_scores(np.array([np.nan, np.nan])).tolist() == [0, 0]
    assert rfm_scores(np.array([3.0])).tolist() == [5]


def test_fallback_churn_and_clv_by_hand(profiles: Profiles) -> None:
    """Four customers are too few for BG/NBD: the stated historic rule runs."""
    p = profiles
    assert p.clv_method == CLV_HISTORIC and p.bgnbd is None and "repeat buyer" in p.fit_note
    rhythm = [40 / 3, 19.0, (40 / 3 + 19) / 2, (40 / 3 + 19) / 2]  # own mean gap, else the median
    recency = p.recency_days[:4]
    np.testing.assert_allclose(p.churn_risk[:4], 1 - np.exp(-recency / rhythm), rtol=1e-12)
    # Histories shorter than the horizon are not extrapolated: the value so far.
    np.testing.assert_allclose(p.clv[:4], [65.0, 100.0, 7.5, np.nan])
    assert np.isnan(p.churn_risk[4]) and np.isnan(p.clv[4]) and np.all(np.isnan(p.p_alive))
    shorter = compute_profiles(Interactions.from_records(RECORDS), AS_OF,
                               ProfileConfig(clv_horizon_days=30))
    np.testing.assert_allclose(shorter.clv[:3], [65.0 / (59 + 14 / 24) * 30, 100.0, 7.5 / 46 * 30])


def test_as_of(tiny: Interactions) -> None:
    default = compute_profiles(tiny)
    assert default.as_of == epoch(at(3, 6))  # the start of the day after the last interaction
    assert default.frequency[4] == 1 and default.recency_days[4] == pytest.approx(14 / 24)
    # Interactions at or after as_of are not seen, even a's own.
    early = compute_profiles(tiny, as_of=epoch(at(1, 11, 10)))
    assert early.frequency.tolist() == [1, 0, 0, 0, 0] and early.monetary[0] == 15.0
    with pytest.raises(TypeError, match="as_of"):
        compute_profiles(tiny, as_of="2024-03-01")  # type: ignore[arg-type]
    empty = Interactions.from_records([], name="empty")
    with pytest.raises(ValueError, match="empty: no interactions"):
        compute_profiles(empty)
    assert compute_profiles(empty, as_of=AS_OF).n_users == 0


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="clv_horizon_days"):
        ProfileConfig(clv_horizon_days=0)
    with pytest.raises(ValueError, match="churn_horizon_days"):
        ProfileConfig(churn_horizon_days=math.nan)
    with pytest.raises(ValueError, match="discount_rate_per_period"):
        ProfileConfig(discount_rate_per_period=-1.0)


# --------------------------------------------------------------------------- tags

CUSTOM = """
[tags.rhythm]
description = "a steady rhythm"
when = ["frequency >= 2", "periodicity <= 0.5"]

[tags.north]
when = ['region == "north"']

[tags.not-north]
when = ['region != "north"']

[tags.top-spender]
when = ["monetary >= q0.5"]

[tags.overdue]
when = ["days_until_next < 0"]

[tags.recent]
when = ["recency_days <= 10"]

[tags.unknown-churn]
when = ["churn_risk != 0.5"]
"""


def test_tags_from_a_custom_file(tmp_path: Path, tiny: Interactions) -> None:
    path = tmp_path / "tags.toml"
    path.write_text(CUSTOM)
    rules = load_tag_rules(path)
    assert [r.name for r in rules][:2] == ["rhythm", "north"] and rules[0].description == "a steady rhythm"
    p = compute_profiles(tiny, AS_OF, ProfileConfig(tag_rules=tuple(rules)))
    assert p.tags == [
        ["rhythm", "north", "top-spender", "overdue", "unknown-churn"],
        # median spend of [65, 100, 7.5] is 65; b's region is west; "" is unknown, not "not north"
        ["not-north", "top-spender", "recent", "unknown-churn"],
        ["unknown-churn"],
        [],  # d would be "north" and "recent", but opted out: no targeting tags
        [],  # e: no purchase, every value unknown, and NaN != 0.5 does not hold
    ]
    assert p.summary()["tags"] == {"rhythm": 1, "north": 1, "not-north": 1, "top-spender": 2,
                                   "overdue": 1, "recent": 1, "unknown-churn": 3}


def test_apply_tags_directly() -> None:
    rules = load_tag_rules()
    fields = {f: np.array([np.nan, 1.0]) for f in NUMERIC_FIELDS}
    fields.update({f: np.array(["", "x"], dtype=object) for f in TEXT_FIELDS})
    fields["tenure_days"] = np.array([10.0, 400.0])
    tags = apply_tags(fields, rules)
    assert tags[0] == ["new-customer"] and "new-customer" not in tags[1]
    with pytest.raises(KeyError, match="tenure_days"):
        apply_tags({"frequency": np.array([1.0])}, [r for r in rules if r.name == "new-customer"])


def test_default_tags_load_and_make_sense(profiles: Profiles) -> None:
    names = [r.name for r in load_tag_rules()]
    for expected in ("high-value", "at-risk", "periodic-buyer", "new-customer", "lapsed",
                     "big-basket"):
        assert expected in names
    assert profiles.tag_names == tuple(names)
    # b started 28.5 days ago, c 46 days ago: both new; a is 59.6 days in: new too.
    assert all("new-customer" in profiles.tags[u] for u in (0, 1, 2))


@pytest.mark.parametrize(("text", "message"), [
    ("[tags.x\nwhen = []", r"tags\.toml: not valid TOML: .*line 1"),
    ("title = 'mine'\n[tags.x]\nwhen = ['frequency > 1']", "unknown top-level key"),
    ("", "no tags"),
    ("[tags]\nx = 3", "tag 'x': must be a table"),
    ("[tags.'high value']\nwhen = ['frequency > 1']", "tag 'high value': a tag name is"),
    ("[tags.x]\nwhenn = ['frequency > 1']", "tag 'x': unknown key.*'whenn'"),
    ("[tags.x]\ndescription = 3\nwhen = ['frequency > 1']", "'description' must be a string"),
    ("[tags.x]\nwhen = []", "'when' must be a non-empty list"),
    ("[tags.x]\nwhen = 'frequency > 1'", "'when' must be a non-empty list"),
    ("[tags.x]\nwhen = ['frequency > 1', 3]", "tag 'x': condition 2: must be a string"),
    ("[tags.x]\nwhen = ['frequency']", "condition 1 'frequency': expected '<field> <op> <value>'"),
    ("[tags.x]\nwhen = ['frequency =< 3']", "condition 1 'frequency =< 3': expected '<field> <op>"),
    ("[tags.high-value]\nwhen = ['frequency >= 3', 'monetry >= q0.8']",
     r"tags\.toml: tag 'high-value': condition 2 'monetry >= q0\.8': unknown field 'monetry' "
     r"\(known: recency_days, frequency, "),
    ("[tags.x]\nwhen = ['frequency >']", "no value after '>'"),
    ("[tags.x]\nwhen = ['region == uk']", "'region' is text, so the value must be quoted"),
    ("[tags.x]\nwhen = ['region > \"uk\"']", "can only be compared with == or !="),
    ("[tags.x]\nwhen = ['monetary == \"big\"']", "'monetary' is a number"),
    ("[tags.x]\nwhen = ['monetary >= q1.5']", "quantile 'q1.5' must be between q0 and q1"),
    ("[tags.x]\nwhen = ['monetary >= q0']", "quantile 'q0' must be between"),
    ("[tags.x]\nwhen = ['monetary >= lots']", "value 'lots' is neither a number nor a quantile"),
    ("[tags.x]\nwhen = ['monetary >= inf']", "value 'inf' must be a finite number"),
    ("[tags.x]\nwhen = ['monetary >= nan']", "value 'nan' must be a finite number"),
])
def test_every_tag_file_error_names_file_tag_and_condition(tmp_path: Path, text: str,
                                                           message: str) -> None:
    path = tmp_path / "tags.toml"
    path.write_text(text)
    with pytest.raises(TagRuleError, match=message) as err:
        load_tag_rules(path)
    assert str(err.value).startswith(str(path))


def test_missing_tag_file(tmp_path: Path) -> None:
    with pytest.raises(TagRuleError, match=r"absent\.toml: cannot read"):
        load_tag_rules(tmp_path / "absent.toml")


def test_tag_vocabulary_matches_profiles(profiles: Profiles) -> None:
    fields = profiles.field_arrays()
    assert set(fields) == set(NUMERIC_FIELDS) | set(TEXT_FIELDS)
    assert all(len(v) == profiles.n_users for v in fields.values())


# --------------------------------------------------------------------------- outputs


def test_rows_and_csv(tmp_path: Path, profiles: Profiles) -> None:
    rows = profiles.rows()
    a, e = rows[0], rows[4]
    assert a["user"] == "a" and a["frequency"] == 4 and a["rfm_segment"] == "R3F5M4"
    assert a["predicted_next_purchase"] == "2024-02-20" and a["monetary"] == 65.0
    assert e["recency_days"] is None and e["predicted_next_purchase"] is None and e["tags"] == []
    assert rows[3]["opt_out"] is True
    path = tmp_path / "out" / "profiles.csv"
    profiles.write_csv(path)
    with path.open(newline="") as fh:
        read = list(csv.DictReader(fh))
    assert [r["user"] for r in read] == ["a", "b", "c", "d", "e"]
    assert read[0]["tags"] == ";".join(profiles.tags[0]) and read[0]["monetary"] == "65.0"
    assert read[4]["recency_days"] == "" and float(read[1]["days_until_next"]) == 9.5
    assert not list(path.parent.glob(".*.tmp"))  # written through a temporary file


def test_summary(profiles: Profiles) -> None:
    s = profiles.summary()
    assert s["users"] == 5 and s["customers"] == 4 and s["opted_out"] == 1
    assert s["as_of"] == "2024-03-01" and s["clv_method"] == CLV_HISTORIC
    assert s["rfm_scores"]["R"] == {"1": 0, "2": 1, "3": 1, "4": 1, "5": 1}
    assert s["medians"]["frequency"] == 1.5 and s["medians"]["monetary"] == 65.0
    assert s["clv_total"] == pytest.approx(172.5)
    assert "a" not in str(s["top_rfm_segments"]) and set(s["tags"]) == set(profiles.tag_names)


def test_profile_vectors_are_bounded_fixed_transforms(profiles: Profiles) -> None:
    v = profile_vectors(profiles)
    d = len(PROFILE_VECTOR_FEATURES)
    assert v.dtype == np.float32 and v.shape == (5, d)
    assert np.all((v >= 0) & (v <= 1))
    assert np.all(np.linalg.norm(v, axis=1) <= PROFILE_VECTOR_NORM_BOUND + 1e-6)
    assert PROFILE_VECTOR_NORM_BOUND == pytest.approx(math.sqrt(d))
    col = {name: v[:, i] for i, name in enumerate(PROFILE_VECTOR_FEATURES)}
    # Fixed scales, not data-dependent ones: checked against the stated formulas.
    assert col["recency_days"][0] == pytest.approx((19 + 14 / 24) / 365, rel=1e-6)
    assert col["frequency"][0] == pytest.approx(math.log1p(4) / math.log1p(100), rel=1e-6)
    assert col["monetary"][1] == pytest.approx(math.log1p(100) / math.log1p(50_000), rel=1e-6)
    # Unknown values take the stated ends: never bought = as long ago as it gets, nothing spent.
    assert col["recency_days"][4] == 1.0 and col["monetary"][3] == 0.0
    assert col["mean_interval_days"][2] == 1.0 and col["periodicity"][1] == 1.0
    # One customer's vector does not depend on who else is in the silo (same fallback here).
    alone = compute_profiles(Interactions.from_records([r for r in RECORDS if r[0] == "b"]), AS_OF)
    np.testing.assert_allclose(profile_vectors(alone)[0, :7], v[1, :7])


def test_decode_vector_inverts_the_transforms(profiles: Profiles) -> None:
    v = profile_vectors(profiles)
    for u in (0, 1):
        decoded = decode_vector(v[u])
        assert list(decoded) == list(PROFILE_VECTOR_FEATURES)
        for name, value in decoded.items():
            original = float(getattr(profiles, name)[u])
            if np.isfinite(original):
                assert value == pytest.approx(original, rel=1e-5, abs=1e-6), name
    top = decode_vector(np.full(len(PROFILE_VECTOR_FEATURES), 1.5))  # clipped, e.g. DP noise
    assert top["recency_days"] == 365.0 and top["frequency"] == pytest.approx(100.0)
    assert top["monetary"] == pytest.approx(50_000.0) and top["churn_risk"] == 1.0
    assert decode_vector(np.zeros(len(PROFILE_VECTOR_FEATURES)))["clv"] == 0.0
    with pytest.raises(ValueError, match="coordinates"):
        decode_vector([0.5, 0.5])
    with pytest.raises(ValueError, match="finite"):
        decode_vector([math.nan] * len(PROFILE_VECTOR_FEATURES))


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def retail_uk() -> Interactions:
    require_online_retail()
    silos, _ = online_retail.load(limit=60_000)
    return online_retail.to_interactions(silos["uk"], "uk")


def test_real_data_uses_the_model(retail_uk: Interactions) -> None:
    started = time.perf_counter()
    p = compute_profiles(retail_uk)
    assert time.perf_counter() - started < 10.0
    assert p.clv_method == CLV_MODEL and p.bgnbd is not None and p.gamma_gamma is not None
    assert p.n_users > 500 and np.all(p.frequency > 0)
    assert np.all((p.churn_risk >= 0) & (p.churn_risk <= 1)) and np.all(p.clv >= 0)
    # Churn risk is the fitted model's no-purchase probability over 90 days.
    x, t_x = p.frequency - 1, p.tenure_days - p.recency_days
    np.testing.assert_allclose(p.churn_risk, prob_no_purchase(p.bgnbd, 90.0, x, t_x, p.tenure_days),
                               rtol=1e-9)
    # Long-inactive customers are at higher risk on average, and it rises with silence.
    silent = p.recency_days > np.median(p.recency_days)
    assert p.churn_risk[silent].mean() > p.churn_risk[~silent].mean() + 0.1
    one_timers = p.frequency == 1
    assert np.corrcoef(p.recency_days[one_timers], p.churn_risk[one_timers])[0, 1] > 0.9
    # Every user gets an RFM segment, and tags apply to some but not all.
    assert np.all(p.r_score >= 1) and all(len(s) == 6 for s in p.rfm_segment)
    counts = p.summary()["tags"]
    assert all(0 < counts[t] < p.n_users for t in ("high-value", "at-risk", "due-soon"))
    v = profile_vectors(p)
    assert np.all((v >= 0) & (v <= 1)) and v.shape == (p.n_users, len(PROFILE_VECTOR_FEATURES))
