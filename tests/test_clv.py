"""BG/NBD and Gamma-Gamma: each formula against an independent computation or a simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from fedprofile.models.clv import (MIN_REPEAT_BUYERS, BGNBDParams, CLVFitError,
                                   GammaGammaParams, _integral_purchases, p_alive,
                                   bgnbd_log_likelihood, clv, discounted_purchases,
                                   expected_purchases, expected_spend, fit_bgnbd,
                                   fit_gamma_gamma, gamma_gamma_log_likelihood, p_alive,
                                   prob_no_purchase)

# CDNOW's published estimates (Fader, Hardie & Lee 2005), alpha converted from weeks to days.
CDNOW = BGNBDParams(r=0.243, alpha=4.414 * 7, a=0.793, b=2.426)
CDNOW_GG = GammaGammaParams(p=6.25, q=3.74, v=15.44)
CHI2_4DF_999 = stats.chi2.ppf(0.999, 4)


def simulate_bgnbd(params: BGNBDParams, n: int, seed: int, holdout: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Customers from the BG/NBD story: ``(x, t_x, T, purchases in (T, T + holdout])``.

    Everyone's first purchase is at 0; the calibration period ends at T
    (uniform over 27-39 weeks, like CDNOW's staggered cohort).
    """
    rng = np.random.default_rng(seed)
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    drop = rng.beta(params.a, params.b, n)
    T = rng.uniform(27 * 7, 39 * 7, n)
    x, t_x, later = np.zeros(n), np.zeros(n), np.zeros(n)
    now, active = np.zeros(n), np.ones(n, dtype=bool)
    while active.any():
        idx = np.nonzero(active)[0]
        when = now[idx] + rng.exponential(1.0 / lam[idx])
        past_end = when > T[idx] + holdout
        active[idx[past_end]] = False
        idx, when = idx[~past_end], when[~past_end]
        now[idx] = when
        calibration = when <= T[idx]
        x[idx[calibration]] += 1
        t_x[idx[calibration]] = when[calibration]
        later[idx[~calibration]] += 1
        active[idx[rng.random(len(idx)) < drop[idx]]] = False
    return x, t_x, T, later


@pytest.fixture(scope="module")
def cdnow_like() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return simulate_bgnbd(CDNOW, 5000, seed=7, holdout=39 * 7)


def _rel(got: float, want: float) -> float:
    return abs(got - want) / want


# --------------------------------------------------------------------------- BG/NBD


def test_mle_recovers_cdnow_parameters(cdnow_like) -> None:
    x, t_x, T, _ = cdnow_like
    fit = fit_bgnbd(x, t_x, T)
    assert _rel(fit.r, CDNOW.r) < 0.10 and _rel(fit.alpha, CDNOW.alpha) < 0.15
    assert _rel(fit.a, CDNOW.a) < 0.30 and _rel(fit.b, CDNOW.b) < 0.30
    # A maximum is at least as likely as the truth, and not implausibly more
    # (likelihood-ratio statistic against chi-square with 4 degrees of freedom).
    lr = 2 * (bgnbd_log_likelihood(fit, x, t_x, T).sum()
              - bgnbd_log_likelihood(CDNOW, x, t_x, T).sum())
    assert 0 <= lr < CHI2_4DF_999
    # The time unit only rescales alpha.
    weeks = fit_bgnbd(x, t_x / 7, T / 7)
    assert weeks.alpha == pytest.approx(fit.alpha / 7, rel=1e-3)
    assert weeks.r == pytest.approx(fit.r, rel=1e-3)


def _closed_form_likelihood(p: BGNBDParams, x: int, t_x: float, T: float) -> float:
    """Eq. (6) of the paper written out with plain Gamma/Beta functions (small x only)."""
    beta = lambda u, v: math.gamma(u) * math.gamma(v) / math.gamma(u + v)  # noqa: E731
    head = math.gamma(p.r + x) * p.alpha ** p.r / math.gamma(p.r)
    alive = beta(p.a, p.b + x) / beta(p.a, p.b) * head / (p.alpha + T) ** (p.r + x)
    if x == 0:
        return alive
    dropped = beta(p.a + 1, p.b + x - 1) / beta(p.a, p.b) * head / (p.alpha + t_x) ** (p.r + x)
    return alive + dropped


@pytest.mark.parametrize(("x", "t_x", "T"), [(0, 0.0, 30.0), (1, 10.0, 200.0), (4, 150.0, 180.0),
                                             (9, 60.0, 270.0)])
def test_log_likelihood_matches_the_paper_and_an_integral(x: int, t_x: float, T: float) -> None:
    got = float(np.exp(bgnbd_log_likelihood(CDNOW, x, t_x, T)))
    assert got == pytest.approx(_closed_form_likelihood(CDNOW, x, t_x, T), rel=1e-10)

    # The individual-level story integrated over lambda ~ Gamma and p ~ Beta
    # (a, b > 1 here so the Beta density is bounded for the quadrature).
    params = BGNBDParams(r=1.3, alpha=20.0, a=1.6, b=2.5)

    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    log_norm = r * math.log(alpha) - math.lgamma(r) - _betaln(a, b)

    def individual(lam: float, p: float) -> float:
        if lam <= 0 or not 0 < p < 1:
            return 0.0
        alive = (1 - p) ** x * lam ** x * math.exp(-lam * T)
        dropped = p * (1 - p) ** (x - 1) * lam ** x * math.exp(-lam * t_x) if x else 0.0
        prior = math.exp(log_norm + (r - 1) * math.log(lam) - alpha * lam
                         + (a - 1) * math.log(p) + (b - 1) * math.log1p(-p))
        return (alive + dropped) * prior

    numeric, _ = integrate.dblquad(individual, 0, 1, 0, np.inf, epsabs=0, epsrel=1e-8)
    assert float(np.exp(bgnbd_log_likelihood(params, x, t_x, T))) == pytest.approx(numeric, rel=1e-6)


def test_p_alive() -> None:
    # No repeat purchase: the model cannot have let the customer drop out.
    assert np.array_equal(p_alive(CDNOW, [0, 0], [0.0, 0.0], [1.0, 900.0]), [1.0, 1.0])
    # P(alive) is the "alive" share of the likelihood (eq. 6's first term over L).
    x, t_x, T = 3, 40.0, 250.0
    alive_term = (math.lgamma(CDNOW.r + x) - math.lgamma(CDNOW.r) + CDNOW.r * math.log(CDNOW.alpha)
                  + _betaln(CDNOW.a, CDNOW.b + x) - _betaln(CDNOW.a, CDNOW.b)
                  - (CDNOW.r + x) * math.log(CDNOW.alpha + T))
    share = math.exp(alive_term - float(bgnbd_log_likelihood(CDNOW, x, t_x, T)))
    assert float(p_alive(CDNOW, x, t_x, T)) == pytest.approx(share, rel=1e-10)
    # Longer silence -> less likely alive; a late last purchase -> more likely.
    silence = p_alive(CDNOW, 3, 40.0, np.array([50.0, 100.0, 300.0]))
    assert np.all(np.diff(silence) < 0)
    assert float(p_alive(CDNOW, 3, 240.0, 250.0)) > float(p_alive(CDNOW, 3, 40.0, 250.0))


def _betaln(u: float, v: float) -> float:
    return math.lgamma(u) + math.lgamma(v) - math.lgamma(u + v)


def test_expected_purchases_against_50_digit_arithmetic() -> None:
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50

    def eq10(p: BGNBDParams, t: float, x: int, t_x: float, T: float) -> float:
        r, al, a, b = (mp.mpf(v) for v in (p.r, p.alpha, p.a, p.b))
        z = t / (al + T + t)
        term = ((al + T) / (al + T + t)) ** (r + x) * mp.hyp2f1(r + x, b + x, a + b + x - 1, z)
        den = 1 + (a / (b + x - 1) * ((al + T) / (al + t_x)) ** (r + x) if x else 0)
        return float((a + b + x - 1) / (a - 1) * (1 - term) / den)

    # Includes heavy buyers and long horizons, where eq. (10) taken literally
    # in double precision gives NaN (a 0 * inf product).
    cases = [(CDNOW, 30.0, 0, 0.0, 50.0), (CDNOW, 365.0, 2, 100.0, 200.0),
             (CDNOW, 3650.0, 150, 360.0, 365.0), (BGNBDParams(0.8, 50.0, 2.5, 0.4), 90.0, 300, 300.0, 365.0),
             (BGNBDParams(3.0, 10.0, 0.2, 5.0), 730.0, 40, 20.0, 30.0)]
    for params, t, x, t_x, T in cases:
        want = eq10(params, t, x, t_x, T)
        got = float(expected_purchases(params, t, x, t_x, T))
        assert got == pytest.approx(want, rel=1e-7), (params, t, x, t_x, T)
        # The independent route (quadrature over the dropout probability) agrees too.
        assert _integral_purchases(params, t, x, t_x, T) == pytest.approx(want, rel=1e-6)


def test_the_integral_route_survives_a_beta_weight_that_underflows() -> None:
    """A degenerate fit (a, b in the hundreds) made B(a, b + x) underflow: 0/0 before."""
    params = BGNBDParams(0.5, 10.0, 800.0, 900.0)
    got = _integral_purchases(params, 365.0, 5, 100.0, 120.0)
    # p is then almost surely a / (a + b + x): the inner expectation at that point
    p = 800.0 / 1705.0
    k, c = 0.5 + 5, 365.0 / (10.0 + 120.0)
    inner = -math.expm1(-k * math.log1p(c * p)) / p
    alive = float(p_alive(params, 5, 100.0, 120.0))
    assert math.isfinite(got) and got == pytest.approx(alive * inner, rel=1e-3)


def test_expected_purchases_shape_and_the_a_equals_one_point() -> None:
    t = np.array([0.0, 7.0, 30.0, 365.0, 3650.0])
    for x, t_x in ((0, 0.0), (5, 100.0)):
        e = expected_purchases(CDNOW, t, x, t_x, 200.0)
        assert e[0] == 0.0 and np.all(np.diff(e) > 0)
    # Eq. (10) is 0/0 at a = 1; the value there joins its neighbours smoothly.
    near = [float(expected_purchases(BGNBDParams(0.5, 10.0, a, 3.0), 365.0, 5, 100.0, 120.0))
            for a in (1 - 1e-3, 1 - 1e-8, 1.0, 1 + 1e-8, 1 + 1e-3)]
    assert np.all(np.isfinite(near))
    assert near[2] == pytest.approx(near[1], rel=1e-6) == near[3]
    assert min(near[0], near[4]) < near[2] < max(near[0], near[4])


def test_conditional_expectations_predict_a_simulated_holdout(cdnow_like) -> None:
    """With the true parameters, the sum of eq. (10) predicts the holdout total."""
    x, t_x, T, later = cdnow_like
    horizon = 39 * 7
    predicted = expected_purchases(CDNOW, horizon, x, t_x, T)
    assert predicted.sum() == pytest.approx(later.sum(), rel=0.05)
    # ...and per frequency group (the paper's conditional-expectations check).
    for lo, hi in ((0, 1), (1, 3), (3, 7)):
        group = (x >= lo) & (x < hi)
        assert predicted[group].sum() == pytest.approx(later[group].sum(), rel=0.12)
    silent = prob_no_purchase(CDNOW, horizon, x, t_x, T)
    assert silent.mean() == pytest.approx((later == 0).mean(), abs=0.02)
    # Never below the share of the dead, which is its limit over an endless
    # window (a live customer buys eventually); certain over an empty one.
    alive = p_alive(CDNOW, x, t_x, T)
    assert np.all(silent >= 1 - alive - 1e-12)
    assert np.allclose(prob_no_purchase(CDNOW, 1e40, x, t_x, T), 1 - alive, atol=1e-6)
    assert np.array_equal(prob_no_purchase(CDNOW, 0.0, x, t_x, T), np.ones(len(x)))


def test_discounting() -> None:
    x, t_x, T = np.array([0, 4]), np.array([0.0, 80.0]), np.array([100.0, 100.0])
    plain = discounted_purchases(CDNOW, 365.0, x, t_x, T)
    assert np.allclose(plain, expected_purchases(CDNOW, 365.0, x, t_x, T))
    # Two periods of 30 and a final one of 5, each discounted at its end.
    e = [expected_purchases(CDNOW, h, x, t_x, T) for h in (30.0, 60.0, 65.0)]
    by_hand = e[0] / 1.01 + (e[1] - e[0]) / 1.01 ** 2 + (e[2] - e[1]) / 1.01 ** 3
    assert np.allclose(discounted_purchases(CDNOW, 65.0, x, t_x, T, 0.01, 30.0), by_hand)
    assert np.all(discounted_purchases(CDNOW, 365.0, x, t_x, T, 0.01) < plain)


def test_too_few_repeat_buyers_is_a_fit_error() -> None:
    x, t_x, T, _ = simulate_bgnbd(CDNOW, 5000, seed=3)
    repeaters = np.nonzero(x > 0)[0][:MIN_REPEAT_BUYERS - 1]
    keep = np.concatenate([repeaters, np.nonzero(x == 0)[0][:500]])
    with pytest.raises(CLVFitError, match=f"{MIN_REPEAT_BUYERS - 1} repeat buyer"):
        fit_bgnbd(x[keep], t_x[keep], T[keep])
    with pytest.raises(CLVFitError, match="0 repeat buyer"):
        fit_bgnbd(np.zeros(100), np.zeros(100), np.full(100, 50.0))
    with pytest.raises(CLVFitError, match="Gamma-Gamma"):
        fit_gamma_gamma([1, 2, 0], [10.0, 20.0, np.nan])


def test_bad_input_names_the_argument() -> None:
    with pytest.raises(ValueError, match="t_x"):
        p_alive(CDNOW, [2], [60.0], [50.0])
    with pytest.raises(ValueError, match="t_x must be 0"):
        bgnbd_log_likelihood(CDNOW, [0], [5.0], [50.0])
    with pytest.raises(ValueError, match="x "):
        bgnbd_log_likelihood(CDNOW, [1.5], [5.0], [50.0])
    with pytest.raises(ValueError, match="T "):
        expected_purchases(CDNOW, 10.0, [0], [0.0], [0.0])
    with pytest.raises(ValueError, match="horizon"):
        prob_no_purchase(CDNOW, -1.0, [0], [0.0], [10.0])
    with pytest.raises(ValueError, match="BGNBDParams.alpha"):
        BGNBDParams(r=1.0, alpha=-2.0, a=1.0, b=1.0)
    with pytest.raises(ValueError, match="m "):
        expected_spend(CDNOW_GG, [2], [-5.0])


# --------------------------------------------------------------------------- Gamma-Gamma


def simulate_spend(params: GammaGammaParams, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 11, n)
    nu = rng.gamma(params.q, 1.0 / params.v, n)
    totals = rng.gamma(params.p * x, 1.0 / nu)  # a sum of x Gamma(p, nu) spends
    return x, totals / x


def test_gamma_gamma_recovers_parameters() -> None:
    x, m = simulate_spend(CDNOW_GG, 5000, seed=5)
    fit = fit_gamma_gamma(np.append(x, [0, 0]), np.append(m, [np.nan, np.nan]))  # x = 0 ignored
    assert _rel(fit.p, CDNOW_GG.p) < 0.2 and _rel(fit.q, CDNOW_GG.q) < 0.1 and _rel(fit.v, CDNOW_GG.v) < 0.25
    assert _rel(fit.population_mean_spend, CDNOW_GG.population_mean_spend) < 0.05
    lr = 2 * (gamma_gamma_log_likelihood(fit, x, m).sum()
              - gamma_gamma_log_likelihood(CDNOW_GG, x, m).sum())
    assert 0 <= lr < stats.chi2.ppf(0.999, 3)
    # Spends in cents: v scales, p and q do not.
    cents = fit_gamma_gamma(x, m * 100)
    assert cents.v == pytest.approx(fit.v * 100, rel=1e-3) and cents.q == pytest.approx(fit.q, rel=1e-3)


def test_gamma_gamma_density_and_expected_spend() -> None:
    # The density of a mean over x = 3 spends integrates to 1.
    total, _ = integrate.quad(lambda m: float(np.exp(gamma_gamma_log_likelihood(CDNOW_GG, 3, m))),
                              0, np.inf, limit=200)
    assert total == pytest.approx(1.0, rel=1e-8)
    population = CDNOW_GG.population_mean_spend
    assert float(expected_spend(CDNOW_GG, 0, np.nan)) == pytest.approx(population)
    # A credibility-weighted average that trusts m more with more transactions.
    few, many = expected_spend(CDNOW_GG, [1, 50], [100.0, 100.0])
    assert population < few < many < 100.0
    w = CDNOW_GG.p * 50 / (CDNOW_GG.p * 50 + CDNOW_GG.q - 1)
    assert many == pytest.approx(w * 100 + (1 - w) * population)


def test_clv_is_purchases_times_spend() -> None:
    x, t_x, T, m = np.array([0, 3]), np.array([0.0, 50.0]), np.array([60.0, 60.0]), np.array([np.nan, 40.0])
    value = clv(CDNOW, CDNOW_GG, x, t_x, T, m, 365.0)
    assert np.allclose(value, expected_purchases(CDNOW, 365.0, x, t_x, T) * expected_spend(CDNOW_GG, x, m))
    assert np.all(clv(CDNOW, CDNOW_GG, x, t_x, T, m, 365.0, discount_rate_per_period=0.01) < value)
