"""How good is a model at picking whom to target? Qini and uplift curves.

A propensity model ranks who will buy; a campaign wants whom the contact
*changes*. With a randomised campaign (each customer treated or held out by
chance) the ranking can be judged: walk down the ranking and compare treated
and control conversions among the top ``t`` customers.

Inputs, one entry per customer: ``score`` (higher = target first),
``treated`` (0/1) and ``outcome`` (converted, 0/1). With ``N_T(t)``,
``N_C(t)`` the treated / control customers among the top ``t`` and ``Y_T(t)``,
``Y_C(t)`` their conversions:

* **uplift@k** (:func:`uplift_at_k`): ``Y_T/N_T - Y_C/N_C`` within the top
  ``ceil(k n)`` customers: the campaign's lift if it contacted only them.
* **Qini curve** (:func:`qini_curve`, Radcliffe 2007, "Using control groups to
  target on predicted lift", Direct Marketing Analytics Journal 1:14-21):
  ``Q(t) = Y_T(t) - Y_C(t) N_T(t)/N_C(t)``, incremental conversions among the
  top ``t`` with the control scaled to the treated count.
* **uplift curve** (:func:`uplift_curve`, Rzepakowski & Jaroszewicz 2012,
  "Decision trees for uplift modeling with single and multiple treatments",
  KAIS 32:303-327): ``U(t) = (Y_T/N_T - Y_C/N_C) t``, the lift among the top
  ``t`` times their number.

Conventions, the same as scikit-uplift's ``sklift.metrics.qini_curve`` /
``uplift_curve`` so numbers can be compared with it:

* *ties*: customers with equal scores cannot be ordered, so the curves have a
  point only after each whole group of tied scores, and are linear in between
  (the trapezoid rule below integrates exactly that). The result does not
  depend on the input order within ties; :func:`uplift_at_k` takes a
  proportional share of a tie group split by the cut, which is what a random
  tie-break gives on average;
* the curves start at ``(0, 0)``; a rate of a group with nobody yet in the
  top ``t`` counts as 0 in :func:`uplift_curve` and the control term of
  :func:`qini_curve` as 0 while ``N_C = 0`` (then also ``Y_C = 0``);
* x is the *fraction* of customers targeted, ``t / n``, in [0, 1]; y stays in
  conversions, so a plot reads "incremental conversions".

The areas are per customer so that populations of different sizes compare:

* :func:`qini_coefficient`: the area between the Qini curve and the random
  targeting line from ``(0, 0)`` to ``(1, Q(n))``, divided by ``n`` (x as a
  fraction). A random ranking scores 0 in expectation; the Qini coefficient
  of Radcliffe (2007) is this area, up to his normalisation.
* :func:`auuc`: the area under the uplift curve divided by ``n``; a random
  ranking scores about half the overall lift.

``normalize=True`` turns either into scikit-uplift's ``qini_auc_score`` /
``uplift_auc_score`` form ``(area - random) / (oracle - random)``, where the
oracle ranks treated converters first, control converters last and everyone
else in between (Radcliffe's "optimal" curve, sklift's ``perfect_qini_curve``
with ``negative_effect=True``); 1 is the best ranking the data allow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class _Cumulative:
    """Counts among the top ``n_all`` customers, at 0 and after each tie group."""

    n_all: np.ndarray
    n_t: np.ndarray
    y_t: np.ndarray
    n_c: np.ndarray
    y_c: np.ndarray

    @property
    def n(self) -> int:
        return int(self.n_all[-1])


def _binary(values: ArrayLike, name: str, n: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with one entry per customer ({n}), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be 0/1, got dtype {arr.dtype}")
    out = arr.astype(np.float64)
    if not np.all((out == 0.0) | (out == 1.0)):
        raise ValueError(f"{name} must contain only 0 and 1")
    return out


def _cumulative(score: ArrayLike, treated: ArrayLike, outcome: ArrayLike) -> _Cumulative:
    s = np.asarray(score)
    if s.ndim != 1 or s.shape[0] == 0:
        raise ValueError(f"score must be a non-empty 1-D array, got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.number) or s.dtype == bool:
        raise ValueError(f"score must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError("score must be finite (no NaN or inf)")
    n = s.shape[0]
    t = _binary(treated, "treated", n)
    y = _binary(outcome, "outcome", n)
    if t.sum() == 0 or t.sum() == n:
        raise ValueError("treated must contain both treated (1) and control (0) customers")
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    t_sorted, y_sorted = t[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(s_sorted)), n - 1]  # last index of each tie group
    n_all = np.r_[0.0, ends + 1.0]
    n_t = np.r_[0.0, np.cumsum(t_sorted)[ends]]
    y_t = np.r_[0.0, np.cumsum(t_sorted * y_sorted)[ends]]
    y_c = np.r_[0.0, np.cumsum((1.0 - t_sorted) * y_sorted)[ends]]
    return _Cumulative(n_all=n_all, n_t=n_t, y_t=y_t, n_c=n_all - n_t, y_c=y_c)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (the scikit-uplift convention)."""
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def _resample(x: np.ndarray, y: np.ndarray, n_points: int | None) -> tuple[np.ndarray, np.ndarray]:
    if n_points is None:
        return x, y
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2 or None, got {n_points!r}")
    grid = np.linspace(0.0, 1.0, int(n_points))
    return grid, np.interp(grid, x, y)


def _qini(c: _Cumulative) -> np.ndarray:
    return c.y_t - c.y_c * _ratio(c.n_t, c.n_c)


def _uplift(c: _Cumulative) -> np.ndarray:
    return (_ratio(c.y_t, c.n_t) - _ratio(c.y_c, c.n_c)) * c.n_all


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def _oracle_score(treated: ArrayLike, outcome: ArrayLike) -> np.ndarray:
    """Treated converters first (+1), control converters last (-1), others between (0)."""
    t = np.asarray(treated, dtype=np.float64)
    y = np.asarray(outcome, dtype=np.float64)
    return y * t - y * (1.0 - t)


def uplift_at_k(score: ArrayLike, treated: ArrayLike, outcome: ArrayLike,
                k_fraction: float) -> float:
    """Treated minus control conversion rate among the top ``ceil(k_fraction * n)`` customers.

    This is what a campaign restricted to the model's top ``k`` would have
    lifted conversion by. A tie group split by the cut counts in proportion to
    the share of it inside the cut. NaN when the top ``k`` holds no treated or
    no control customer (the lift is then unobserved).
    """
    if isinstance(k_fraction, bool) or not isinstance(k_fraction, (int, float, np.floating)) \
            or not 0.0 < float(k_fraction) <= 1.0:
        raise ValueError(f"k_fraction must be in (0, 1], got {k_fraction!r}")
    c = _cumulative(score, treated, outcome)
    # round first so 0.3 * 10 = 3.0000000000000004 means 3 customers, not 4
    m = float(math.ceil(round(float(k_fraction) * c.n, 9)))
    n_t = float(np.interp(m, c.n_all, c.n_t))
    n_c = float(np.interp(m, c.n_all, c.n_c))
    if n_t <= 0.0 or n_c <= 0.0:
        return float("nan")
    y_t = float(np.interp(m, c.n_all, c.y_t))
    y_c = float(np.interp(m, c.n_all, c.y_c))
    return y_t / n_t - y_c / n_c


def qini_curve(score: ArrayLike, treated: ArrayLike, outcome: ArrayLike,
               n_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Radcliffe's Qini curve: ``(fraction targeted, incremental conversions)``.

    Points at 0 and after each tie group, or, with ``n_points``, on an even
    grid of fractions by linear interpolation (useful to average or plot
    curves of different populations on one axis).
    """
    c = _cumulative(score, treated, outcome)
    return _resample(c.n_all / c.n, _qini(c), n_points)


def uplift_curve(score: ArrayLike, treated: ArrayLike, outcome: ArrayLike,
                 n_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Uplift curve ``(fraction targeted, (rate_T - rate_C) * customers targeted)``."""
    c = _cumulative(score, treated, outcome)
    return _resample(c.n_all / c.n, _uplift(c), n_points)


def _area_between_random(c: _Cumulative, curve: np.ndarray) -> float:
    x = c.n_all / c.n
    return (_trapezoid(x, curve) - curve[-1] / 2.0) / c.n


def _normalised(model: float, oracle: float) -> float:
    return model / oracle if oracle > 0.0 else float("nan")


def qini_coefficient(score: ArrayLike, treated: ArrayLike, outcome: ArrayLike,
                     normalize: bool = False) -> float:
    """Area between the Qini curve and random targeting, per customer.

    ``(integral_0^1 Q(f) df - Q(n)/2) / n`` with ``f`` the fraction targeted:
    0 in expectation for a random ranking, positive when the model puts the
    persuadable first. With ``normalize=True``, divided by the same area of
    the oracle ranking (sklift's ``qini_auc_score``); NaN if that is not
    positive (e.g. nobody converted).
    """
    c = _cumulative(score, treated, outcome)
    model = _area_between_random(c, _qini(c))
    if not normalize:
        return model
    o = _cumulative(_oracle_score(treated, outcome), treated, outcome)
    return _normalised(model, _area_between_random(o, _qini(o)))


def auuc(score: ArrayLike, treated: ArrayLike, outcome: ArrayLike,
         normalize: bool = False) -> float:
    """Area under the uplift curve, per customer: ``integral_0^1 U(f) df / n``.

    A random ranking scores about half the overall lift (``U(n) / (2 n)``).
    With ``normalize=True``: ``(area - random) / (oracle - random)`` with the
    random line from ``(0, 0)`` to ``(1, U(n))`` and the oracle ranking of
    :func:`qini_coefficient` (sklift's ``uplift_auc_score`` form); NaN if the
    oracle does not beat random.
    """
    c = _cumulative(score, treated, outcome)
    curve = _uplift(c)
    if not normalize:
        return _trapezoid(c.n_all / c.n, curve) / c.n
    o = _cumulative(_oracle_score(treated, outcome), treated, outcome)
    return _normalised(_area_between_random(c, curve), _area_between_random(o, _uplift(o)))
