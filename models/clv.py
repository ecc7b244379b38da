"""Customer lifetime value and churn from first principles: BG/NBD and Gamma-Gamma.

What the models say
    *BG/NBD* (Fader, Hardie & Lee 2005, "Counting your customers the easy
    way", Marketing Science 24(2)) describes non-contractual repeat buying:
    while alive, a customer buys as a Poisson process with rate ``lambda ~
    Gamma(r, alpha)``; after every purchase they drop out for good with
    probability ``p ~ Beta(a, b)``. A customer is summarised by ``x`` (repeat
    purchase occasions), ``t_x`` (time of the last one, from the first
    purchase) and ``T`` (time from the first purchase to the as-of date). From
    the four population parameters follow the probability a customer is still
    alive, their expected purchases over any future window, and the probability
    they make none in it.

    The *Gamma-Gamma* spend model (Fader, Hardie & Lee 2005, "RFM and CLV:
    using iso-value curves", JMR 42(4); Fader & Hardie 2013, "The Gamma-Gamma
    model of monetary value") says each transaction value is ``Gamma(p, nu)``
    with a customer-specific ``nu ~ Gamma(q, v)``, so a customer's expected
    spend per transaction is a weighted average of the population mean and
    their own observed mean ``m``, trusting ``m`` more the more transactions
    it averages. It assumes spend is independent of purchase frequency.

    CLV is the product of the two: expected purchases over a horizon times
    expected spend per purchase (optionally discounted per period).

Why implemented here, not imported
    ``lifetimes`` is archived and unmaintained and pins an old pandas; its
    successor ``pymc-marketing`` pulls in PyMC and PyTensor (a compiler
    toolchain) and is far too heavy for a silo that should run on any
    machine. The models are a few well-published closed forms: the
    log-likelihoods below are the papers' equations written with
    ``gammaln``/``betaln``/``logaddexp`` so they stay finite for heavy buyers,
    and they are fitted by maximum likelihood with ``scipy.optimize``. Every
    function is pure (arrays in, arrays out), so each formula is tested against
    an independent computation.

Units
    ``t_x``, ``T`` and every horizon share one time unit (profiles use days);
    ``alpha`` is in that unit, the other parameters are unit-free. ``m`` and
    ``v`` share the currency unit.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import integrate, optimize, stats
from scipy.special import betaln, expit, gammaln, hyp2f1

__all__ = [
    "MIN_REPEAT_BUYERS",
    "CLVFitError",
    "BGNBDParams",
    "GammaGammaParams",
    "bgnbd_log_likelihood",
    "fit_bgnbd",
    "p_alive",
    "expected_purchases",
    "prob_no_purchase",
    "discounted_purchases",
    "gamma_gamma_log_likelihood",
    "fit_gamma_gamma",
    "expected_spend",
    "clv",
]

#: Fewer repeat buyers than this and a fit is refused. The dropout process
#: (``a``, ``b``) is learnt only from customers who bought again, and the
#: Gamma-Gamma heterogeneity (``q``, ``v``) only from customers with a repeat
#: spend: with a handful of them the likelihood is flat in those directions
#: and the optimiser returns arbitrary, often boundary, values. 20 is the
#: smallest count at which simulated fits (tests/test_clv.py) stay stable.
MIN_REPEAT_BUYERS = 20

# Log-parameters are searched within +-_LOG_BOUND (factor e^12 ~ 1.6e5 either
# side of the data's own scale); an optimum on that edge means the likelihood
# kept improving towards a degenerate model (e.g. nobody ever drops out), which
# is reported as a failed fit rather than returned as numbers.
_LOG_BOUND = 12.0
# Within this distance of a == 1 the closed form's (a - 1) division loses
# precision; the value there is interpolated from a = 1 -+ _A_ONE_GAP.
_A_ONE_GAP = 1e-6


class CLVFitError(RuntimeError):
    """The data cannot support a fit (too few repeat buyers, no convergence, degenerate optimum).

    Callers are expected to catch it and fall back to a simpler, stated rule.
    """


def _positive(name: str, value: float) -> float:
    out = float(value)
    if not (math.isfinite(out) and out > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return out


@dataclass(frozen=True)
class BGNBDParams:
    """Population parameters of the BG/NBD model (``alpha`` in the data's time unit)."""

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        for name in ("r", "alpha", "a", "b"):
            object.__setattr__(self, name, _positive(f"BGNBDParams.{name}", getattr(self, name)))


@dataclass(frozen=True)
class GammaGammaParams:
    """Population parameters of the Gamma-Gamma spend model (``v`` in currency units)."""

    p: float
    q: float
    v: float

    def __post_init__(self) -> None:
        for name in ("p", "q", "v"):
            object.__setattr__(self, name, _positive(f"GammaGammaParams.{name}", getattr(self, name)))

    @property
    def population_mean_spend(self) -> float:
        """E[spend per transaction] over the population, ``p v / (q - 1)`` (needs ``q > 1``)."""
        if self.q <= 1.0:
            return math.inf
        return self.p * self.v / (self.q - 1.0)


# ---------------------------------------------------------------------------
# input checks


def _customers(x: np.ndarray, t_x: np.ndarray, T: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x, t_x, T`` as broadcast float arrays, or a ValueError naming the bad argument."""
    try:
        xa, ta, Ta = np.broadcast_arrays(np.asarray(x, dtype=np.float64),
                                         np.asarray(t_x, dtype=np.float64),
                                         np.asarray(T, dtype=np.float64))
    except ValueError as err:
        raise ValueError(f"x, t_x and T must have the same shape: {err}") from None
    for name, arr in (("x", xa), ("t_x", ta), ("T", Ta)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite everywhere")
    if np.any(xa < 0) or np.any(xa != np.round(xa)):
        raise ValueError("x (repeat purchase occasions) must be whole numbers >= 0")
    if np.any(Ta <= 0):
        raise ValueError("T (age: first purchase to as-of) must be > 0")
    if np.any(ta < 0) or np.any(ta > Ta):
        raise ValueError("t_x (recency: first to last purchase) must satisfy 0 <= t_x <= T")
    if np.any((xa == 0) & (ta != 0)):
        raise ValueError("t_x must be 0 for customers with x == 0 (no repeat purchase)")
    return xa, ta, Ta


def _horizon(name: str, t: np.ndarray) -> np.ndarray:
    arr = np.asarray(t, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and >= 0")
    return arr


# ---------------------------------------------------------------------------
# BG/NBD


def bgnbd_log_likelihood(params: BGNBDParams, x: np.ndarray, t_x: np.ndarray,
                         T: np.ndarray) -> np.ndarray:
    """Per-customer log-likelihood, eq. (6) of Fader, Hardie & Lee (2005).

    ``L = B(a, b+x)/B(a, b) * G(r+x)/G(r) * alpha^r / (alpha+T)^(r+x)
    + [x > 0] B(a+1, b+x-1)/B(a, b) * G(r+x)/G(r) * alpha^r / (alpha+t_x)^(r+x)``:
    the customer is alive at ``T`` (first term) or dropped out right after the
    last purchase (second; impossible without a repeat purchase). The two
    terms are added with ``logaddexp`` because each alone under/overflows for
    heavy buyers.
    """
    xa, ta, Ta = _customers(x, t_x, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    common = gammaln(r + xa) - gammaln(r) + r * math.log(alpha) - betaln(a, b)
    alive = betaln(a, b + xa) - (r + xa) * np.log(alpha + Ta)
    repeat = xa > 0
    x1 = np.where(repeat, xa, 1.0)  # keeps betaln's argument > 0 where the term is unused
    dropped = betaln(a + 1.0, b + x1 - 1.0) - (r + xa) * np.log(alpha + ta)
    return common + np.where(repeat, np.logaddexp(alive, dropped), alive)


def _require_repeat_buyers(count: int, what: str) -> None:
    if count < MIN_REPEAT_BUYERS:
        raise CLVFitError(f"{what}: {count} repeat buyer(s), at least {MIN_REPEAT_BUYERS} "
                          "are needed for a stable fit")


def _minimise(objective, start_points: list[np.ndarray], what: str) -> np.ndarray:
    """Best converged optimum over ``start_points`` (L-BFGS-B, polished by Nelder-Mead).

    L-BFGS-B with numerical gradients sometimes stops with a line-search
    warning at a point that is in fact the optimum; Nelder-Mead, started
    there, either confirms it (converges) or moves on. A result counts only if
    one of the two reports convergence.
    """
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * len(start_points[0])
    best: optimize.OptimizeResult | None = None
    for start in start_points:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            res = optimize.minimize(objective, start, method="L-BFGS-B", bounds=bounds)
            if not res.success or not np.isfinite(res.fun):
                res = optimize.minimize(objective, res.x, method="Nelder-Mead", bounds=bounds,
                                        options={"xatol": 1e-7, "fatol": 1e-10,
                                                 "maxiter": 4000, "maxfev": 8000})
        if res.success and np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise CLVFitError(f"{what}: the maximum-likelihood search did not converge")
    if np.any(np.abs(best.x) >= _LOG_BOUND - 1e-3):
        raise CLVFitError(f"{what}: the likelihood keeps improving towards a degenerate model "
                          f"(log-parameters {np.round(best.x, 2).tolist()} hit the search bound)")
    return best.x


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, T: np.ndarray, penalizer: float = 0.0
              ) -> BGNBDParams:
    """Maximum-likelihood BG/NBD parameters for these customers.

    The search runs over log-parameters (so they stay positive without
    constraints) with times divided by the mean age ``T`` (so ``alpha`` starts
    near 1 whatever the time unit). ``penalizer`` adds ``penalizer * sum(log
    parameter^2)`` on that scale to the mean negative log-likelihood: a ridge
    that pulls a poorly identified parameter towards 1 (``alpha`` towards the
    mean age) instead of letting it run off; 0 (the default) is the plain MLE.

    Raises :class:`CLVFitError` with fewer than :data:`MIN_REPEAT_BUYERS`
    customers with ``x > 0``, or when no start converges to an interior optimum.
    """
    xa, ta, Ta = _customers(x, t_x, T)
    xa, ta, Ta = xa.ravel(), ta.ravel(), Ta.ravel()
    if not (math.isfinite(penalizer) and penalizer >= 0):
        raise ValueError(f"penalizer must be finite and >= 0, got {penalizer!r}")
    _require_repeat_buyers(int(np.count_nonzero(xa > 0)), "BG/NBD")
    scale = float(Ta.mean())
    log_alpha_plus = _LogShift(ta / scale), _LogShift(Ta / scale)
    # Every term that depends on x alone is evaluated once per distinct x
    # (a few hundred at most), not once per customer: the special functions
    # dominate the cost of an evaluation.
    xs, x_of = np.unique(xa, return_inverse=True)
    repeat = xs > 0
    xs1 = np.where(repeat, xs, 1.0)

    def objective(theta: np.ndarray) -> float:
        r, alpha, a, b = np.exp(theta)
        common = gammaln(r + xs) - gammaln(r) + r * math.log(alpha) - betaln(a, b)
        alive_x = betaln(a, b + xs)
        dropped_x = np.where(repeat, betaln(a + 1.0, b + xs1 - 1.0), -np.inf)
        power = r + xa
        alive = alive_x[x_of] - power * log_alpha_plus[1](alpha)
        dropped = dropped_x[x_of] - power * log_alpha_plus[0](alpha)
        ll = common[x_of] + np.logaddexp(alive, dropped)
        value = -float(ll.mean()) + penalizer * float(theta @ theta)
        return value if math.isfinite(value) else 1e300

    starts = [np.zeros(4), np.log([0.5, 0.5, 0.5, 2.0]), np.log([2.0, 2.0, 2.0, 0.5])]
    theta = _minimise(objective, starts, "BG/NBD")
    r, alpha, a, b = np.exp(theta)
    return BGNBDParams(r=float(r), alpha=float(alpha * scale), a=float(a), b=float(b))


class _LogShift:
    """``log(alpha + t)`` for a fixed array ``t``, remembering the last ``alpha`` asked for.

    The optimiser asks for the same ``alpha`` several times in a row (finite
    differences move one parameter at a time), and the logs of thousands of
    customers are the other half of an evaluation's cost.
    """

    def __init__(self, t: np.ndarray) -> None:
        self.t = t
        self.alpha = math.nan
        self.value = t

    def __call__(self, alpha: float) -> np.ndarray:
        if alpha != self.alpha:
            self.alpha, self.value = alpha, np.log(alpha + self.t)
        return self.value


def _log_odds_dead(params: BGNBDParams, xa: np.ndarray, ta: np.ndarray, Ta: np.ndarray
                   ) -> np.ndarray:
    """``log(P(dead)/P(alive))``; ``-inf`` without a repeat purchase (cannot have dropped out)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x1 = np.where(xa > 0, xa, 1.0)
    odds = (math.log(a) - np.log(b + x1 - 1.0)
            + (r + xa) * (np.log(alpha + Ta) - np.log(alpha + ta)))
    return np.where(xa > 0, odds, -np.inf)


def p_alive(params: BGNBDParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """P(still alive at ``T``), eq. (13): ``1 / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x))``.

    Exactly 1 for ``x == 0``: in BG/NBD dropout can only happen right after a
    *repeat* purchase, so a customer who never bought again cannot have left.
    That is the model's assumption, not evidence; :func:`prob_no_purchase`
    is the quantity that still says something about such customers.
    """
    xa, ta, Ta = _customers(x, t_x, T)
    return expit(-_log_odds_dead(params, xa, ta, Ta))


def _closed_form_purchases(params: BGNBDParams, a: float, t: np.ndarray, xa: np.ndarray,
                           ta: np.ndarray, Ta: np.ndarray) -> np.ndarray:
    """Eq. (10) at dropout shape ``a`` (``a != 1``), with the hypergeometric Euler-transformed.

    Eq. (10) has ``((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z)``,
    ``z = t/(alpha+T+t)``: for heavy buyers or long horizons the power
    underflows while the 2F1 overflows (NaN in double precision). Euler's
    transformation ``2F1(A,B;C;z) = (1-z)^(C-A-B) 2F1(C-A, C-B; C; z)`` with
    ``1 - z = (alpha+T)/(alpha+T+t)`` turns the product into
    ``(1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z)``, whose upper parameters no
    longer grow with ``x``; it agrees with a 50-digit evaluation of eq. (10)
    to 1e-6 relative over the whole parameter range tested.
    """
    r, alpha, b = params.r, params.alpha, params.b
    c = a + b + xa - 1.0
    log_1mz = np.log(alpha + Ta) - np.log(alpha + Ta + t)
    z = -np.expm1(log_1mz)
    with np.errstate(all="ignore"):
        term = np.exp((a - 1.0) * log_1mz) * hyp2f1(a + b - 1.0 - r, a - 1.0, c, z)
        alive_part = c / (a - 1.0) * (1.0 - term)
    odds = _log_odds_dead(BGNBDParams(r, alpha, a, b), xa, ta, Ta)
    return alive_part * expit(-odds)


def _integral_purchases(params: BGNBDParams, t: float, x: float, t_x: float, T: float) -> float:
    """Eq. (10) by quadrature, for the rare points where the closed form is not finite.

    Given alive at ``T``, ``lambda ~ Gamma(r+x, alpha+T)`` and ``p ~ Beta(a, b+x)``
    independently, and a live customer with ``(lambda, p)`` makes
    ``(1 - exp(-lambda p t)) / p`` expected purchases in ``t``. Integrating
    ``lambda`` out leaves one integral over ``p`` against the Beta weight,
    which QUADPACK's algebraic-weight rule handles at both ends.
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    k, c = r + x, t / (alpha + T)

    def per_p(p: float) -> float:
        return -math.expm1(-k * math.log1p(c * p)) / p if p > 0 else k * c

    alive = float(p_alive(params, x, t_x, T))
    log_norm = betaln(a, b + x)
    if log_norm > -700:
        value, _ = integrate.quad(per_p, 0.0, 1.0, weight="alg", wvar=(a - 1.0, b + x - 1.0),
                                  limit=200)
        return alive * value / math.exp(log_norm)
    # Large a and b (a fit that makes the dropout probability nearly certain): the Beta
    # weight and its normaliser both underflow. The expectation over p is then taken over
    # the Beta's quantiles, E f(p) = int_0^1 f(Q(u)) du, where nothing underflows.
    dist = stats.beta(a, b + x)
    value, _ = integrate.quad(lambda u: per_p(float(dist.ppf(u))), 0.0, 1.0, limit=200)
    return alive * value


def expected_purchases(params: BGNBDParams, t: np.ndarray, x: np.ndarray, t_x: np.ndarray,
                       T: np.ndarray) -> np.ndarray:
    """E[purchases in ``(T, T+t]`` | ``x, t_x, T``], eq. (10) of Fader, Hardie & Lee (2005).

    Numerical guards: the hypergeometric is Euler-transformed (see
    :func:`_closed_form_purchases`); at ``a`` within 1e-6 of 1, where eq. (10)
    is 0/0, the value is linearly interpolated between ``a = 1 -+ 1e-6``; any
    point still not finite is integrated numerically.
    """
    xa, ta, Ta = _customers(x, t_x, T)
    tt = _horizon("t (the horizon)", t)
    tt, xa, ta, Ta = np.broadcast_arrays(tt, xa, ta, Ta)
    a = params.a
    if abs(a - 1.0) < _A_ONE_GAP:
        lo = _closed_form_purchases(params, 1.0 - _A_ONE_GAP, tt, xa, ta, Ta)
        hi = _closed_form_purchases(params, 1.0 + _A_ONE_GAP, tt, xa, ta, Ta)
        out = lo + (hi - lo) * (a - (1.0 - _A_ONE_GAP)) / (2 * _A_ONE_GAP)
    else:
        out = _closed_form_purchases(params, a, tt, xa, ta, Ta)
    out = np.where(tt == 0, 0.0, out)
    bad = ~np.isfinite(out) | (out < 0)
    if np.any(bad):
        out = np.array(out, dtype=np.float64)
        for i in zip(*np.nonzero(bad), strict=True):
            out[i] = _integral_purchases(params, float(tt[i]), float(xa[i]), float(ta[i]),
                                         float(Ta[i]))
    return out


def prob_no_purchase(params: BGNBDParams, horizon: np.ndarray, x: np.ndarray,
                     t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """P(no purchase in ``(T, T+horizon]``) = ``1 - P(alive) + P(alive) ((alpha+T)/(alpha+T+horizon))^(r+x)``.

    A dead customer never buys; a live one's rate given the history is
    ``Gamma(r+x, alpha+T)`` and, since dropout happens only *after* a
    purchase, they make none in the window with probability ``E[exp(-lambda
    horizon)]``. Unlike ``1 - P(alive)`` this is informative for customers
    with no repeat purchase, and it grows the longer they have been silent.
    """
    xa, ta, Ta = _customers(x, t_x, T)
    h = _horizon("horizon", horizon)
    alive = expit(-_log_odds_dead(params, xa, ta, Ta))
    silent_if_alive = np.exp((params.r + xa) * (np.log(params.alpha + Ta)
                                                 - np.log(params.alpha + Ta + h)))
    return 1.0 - alive + alive * silent_if_alive


def discounted_purchases(params: BGNBDParams, horizon: float, x: np.ndarray,
                         t_x: np.ndarray, T: np.ndarray, discount_rate_per_period: float = 0.0,
                         period_length: float = 30.0) -> np.ndarray:
    """Expected purchases over ``horizon``, each period's discounted by ``(1+d)^-k``.

    The horizon is cut into periods of ``period_length`` (the last may be
    shorter); the purchases expected in period ``k = 1, 2, ...`` are
    ``E[Y(t_k)] - E[Y(t_(k-1))]`` and are discounted as if they happened at
    the period's end (the convention of Fader, Hardie & Lee's CLV examples).
    With ``d = 0`` this is plainly ``expected_purchases(horizon)``.
    """
    horizon = float(horizon)
    if not (math.isfinite(horizon) and horizon >= 0):
        raise ValueError(f"horizon must be finite and >= 0, got {horizon!r}")
    d = float(discount_rate_per_period)
    if not (math.isfinite(d) and d > -1.0):
        raise ValueError(f"discount_rate_per_period must be finite and > -1, got {d!r}")
    if d == 0.0:
        return expected_purchases(params, horizon, x, t_x, T)
    length = _positive("period_length", period_length)
    ends = np.append(np.arange(length, horizon, length), horizon) if horizon > 0 else np.zeros(1)
    xa, ta, Ta = _customers(x, t_x, T)
    total = np.zeros(np.shape(xa))
    previous = np.zeros(np.shape(xa))
    for k, end in enumerate(ends, start=1):
        cumulative = expected_purchases(params, end, xa, ta, Ta)
        total = total + (cumulative - previous) / (1.0 + d) ** k
        previous = cumulative
    return total


# ---------------------------------------------------------------------------
# Gamma-Gamma


def _spenders(x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    try:
        xa, ma = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(m, dtype=np.float64))
    except ValueError as err:
        raise ValueError(f"x and m must have the same shape: {err}") from None
    if not np.all(np.isfinite(xa)) or np.any(xa < 0) or np.any(xa != np.round(xa)):
        raise ValueError("x (transactions m averages) must be whole numbers >= 0")
    used = xa > 0
    if np.any(~np.isfinite(ma[used])) or np.any(ma[used] <= 0):
        raise ValueError("m (mean spend per repeat transaction) must be finite and > 0 where x > 0")
    return xa, ma


def gamma_gamma_log_likelihood(params: GammaGammaParams, x: np.ndarray, m: np.ndarray
                               ) -> np.ndarray:
    """Log-density of a mean spend ``m`` over ``x > 0`` transactions (Fader & Hardie 2013, eq. 3).

    ``f(m) = G(px+q) / (G(px) G(q)) * v^q m^(px-1) x^(px) / (v + m x)^(px+q)``.
    """
    xa, ma = _spenders(x, m)
    if np.any(xa == 0):
        raise ValueError("the Gamma-Gamma likelihood needs x > 0 (a repeat spend) for every customer")
    p, q, v = params.p, params.q, params.v
    px = p * xa
    return (gammaln(px + q) - gammaln(px) - gammaln(q) + q * math.log(v)
            + (px - 1.0) * np.log(ma) + px * np.log(xa) - (px + q) * np.log(v + ma * xa))


def fit_gamma_gamma(x: np.ndarray, m: np.ndarray, penalizer: float = 0.0) -> GammaGammaParams:
    """Maximum-likelihood Gamma-Gamma parameters from customers with ``x > 0``.

    Customers with ``x == 0`` are ignored (they have no repeat spend to learn
    from). Spends are divided by their mean during the search (``v`` scales
    with the currency; ``p, q`` do not); ``penalizer`` is the same log-scale
    ridge as in :func:`fit_bgnbd`. The fit is refused (:class:`CLVFitError`)
    with fewer than :data:`MIN_REPEAT_BUYERS` spenders, without convergence,
    or with ``q <= 1``, where the population mean spend is infinite.
    """
    xa, ma = _spenders(x, m)
    used = xa > 0
    xa, ma = xa[used].ravel(), ma[used].ravel()
    if not (math.isfinite(penalizer) and penalizer >= 0):
        raise ValueError(f"penalizer must be finite and >= 0, got {penalizer!r}")
    _require_repeat_buyers(len(xa), "Gamma-Gamma")
    scale = float(ma.mean())
    ms = ma / scale
    log_m, log_x = np.log(ms), np.log(xa)

    def objective(theta: np.ndarray) -> float:
        p, q, v = np.exp(theta)
        px = p * xa
        ll = (gammaln(px + q) - gammaln(px) - gammaln(q) + q * math.log(v)
              + (px - 1.0) * log_m + px * log_x - (px + q) * np.log(v + ms * xa))
        value = -float(ll.mean()) + penalizer * float(theta @ theta)
        return value if math.isfinite(value) else 1e300

    starts = [np.log([1.0, 2.0, 1.0]), np.log([4.0, 4.0, 4.0]), np.log([0.5, 1.5, 0.5])]
    p, q, v = np.exp(_minimise(objective, starts, "Gamma-Gamma"))
    if q <= 1.0:
        raise CLVFitError(f"Gamma-Gamma: fitted q = {q:.3g} <= 1, so the mean spend is infinite; "
                          "spends are too heavy-tailed for this model")
    return GammaGammaParams(p=float(p), q=float(q), v=float(v * scale))


def expected_spend(params: GammaGammaParams, x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """E[spend per transaction | ``x, m``] = ``p (v + m x) / (p x + q - 1)``.

    A credibility-weighted average of the population mean ``p v / (q-1)``
    and the customer's own mean ``m``; for ``x == 0`` it is the population
    mean (``m`` is then ignored and may be NaN).
    """
    if params.q <= 1.0:
        raise ValueError(f"expected spend needs q > 1, got q = {params.q}")
    xa, ma = _spenders(x, m)
    own = np.where(xa > 0, ma, 0.0)
    return params.p * (params.v + own * xa) / (params.p * xa + params.q - 1.0)


def clv(bg: BGNBDParams, gg: GammaGammaParams, x: np.ndarray, t_x: np.ndarray,
        T: np.ndarray, m: np.ndarray, horizon: float, discount_rate_per_period: float = 0.0,
        period_length: float = 30.0) -> np.ndarray:
    """Expected value of each customer over ``horizon``: purchases times spend per purchase.

    ``discounted_purchases(...) * expected_spend(gg, x, m)``: valid because
    the Gamma-Gamma model takes spend independent of the purchase process.
    ``m`` is the mean value of the ``x`` repeat purchases (ignored where
    ``x == 0``). No discounting by default; see :func:`discounted_purchases`.
    """
    purchases = discounted_purchases(bg, horizon, x, t_x, T, discount_rate_per_period,
                                     period_length)
    return purchases * expected_spend(gg, x, m)
