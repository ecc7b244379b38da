"""Privacy accounting for DP-SGD (the Poisson-subsampled Gaussian mechanism).

Every DP-SGD step a silo takes is one run of the *sampled Gaussian mechanism*:
each example joins the batch independently with probability ``sample_rate``
(Opacus's Poisson sampling), per-example gradients are clipped, and Gaussian
noise of standard deviation ``noise_multiplier * max_grad_norm`` is added. What
that costs in (epsilon, delta) depends only on the sequence of
``(noise_multiplier, sample_rate)`` pairs used, so this module keeps exactly
that sequence and asks Opacus's accountants for epsilon. The maths is Opacus's
(``opacus.accountants``); this module only wraps it in pure functions and a
state object that can be stored between rounds and between runs.

Why the *history*, not a running epsilon
    Privacy losses compose over the whole life of the data, across rounds of a
    run and across runs, but epsilon itself does not add up: RDP composes by
    adding the Renyi divergences order by order, and only the final conversion
    to (epsilon, delta) picks the best order for the *total*; PRV composes by
    convolving privacy-loss distributions. Summing per-round epsilons would
    overstate the loss badly (sqrt(k) vs k growth). The history of
    :class:`MechanismStep` values is the sufficient statistic from which any
    accountant can recompute the total exactly, at any delta, so that is what
    :class:`AccountantState` keeps, and it is small: one entry per change of
    (noise_multiplier, sample_rate), with a step count.

Why two accountants
    ``"rdp"`` (Renyi DP, Mironov et al.) is the standard, widely audited upper
    bound; it is fast and never optimistic, but loose (typically 10-30 % above
    the true epsilon). ``"prv"`` (privacy random variables, Gopi et al. 2021)
    composes the privacy-loss distributions numerically and is close to tight;
    its result carries a numerical error bound ``eps_error``, and
    :func:`epsilon` returns its *upper* end so that it too is a guarantee.
    :func:`prv_epsilon_bounds` exposes the whole (lower, estimate, upper)
    bracket.

All functions here are pure: they build a fresh Opacus accountant per call and
never touch global state, so they are safe to call from any ClientApp, the
ledger, or a budget check before training.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._opacus import opacus  # noqa: F401  (first: imports Opacus without its logging side effect)
from opacus.accountants import PRVAccountant, RDPAccountant  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier

__all__ = [
    "AccountantName",
    "ACCOUNTANTS",
    "DEFAULT_EPS_ERROR",
    "MechanismStep",
    "AccountantState",
    "coalesce",
    "epsilon",
    "prv_epsilon_bounds",
    "noise_for_target",
    "planned_epsilon",
]

AccountantName = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")

#: Default numerical error allowed in a PRV epsilon (Opacus's own default).
DEFAULT_EPS_ERROR = 0.01

#: Version of the :meth:`AccountantState.to_dict` layout.
STATE_VERSION = 1


# ---------------------------------------------------------------------------
# validation helpers


def finite_real(name: str, value: Any, error: type[ValueError] = ValueError) -> float:
    """``value`` as a finite float, or ``error`` naming ``name`` (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise error(f"{name} must be finite, got {value!r}")
    return out



def _check_delta(delta: Any) -> float:
    d = finite_real("delta", delta)
    if not 0.0 < d < 1.0:
        raise ValueError(f"delta must satisfy 0 < delta < 1, got {delta!r}")
    return d


def _check_accountant(accountant: Any) -> str:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    return accountant


def _check_eps_error(eps_error: Any) -> float:
    e = finite_real("eps_error", eps_error)
    if not e > 0.0:
        raise ValueError(f"eps_error must be > 0, got {eps_error!r}")
    return e


def _check_count(name: str, value: Any) -> int:
    """A positive integer (ints, numpy ints and integral floats like 3.0 accepted)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(value, numbers.Integral):
        out = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
        out = int(value)
    else:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if out < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return out


# ---------------------------------------------------------------------------
# the history


@dataclass(frozen=True)
class MechanismStep:
    """``steps`` consecutive DP-SGD steps with the same noise and sampling rate.

    ``noise_multiplier`` is sigma / max_grad_norm (Opacus's ``noise_multiplier``);
    ``sample_rate`` is the Poisson inclusion probability of one example in one
    step (Opacus: ``1 / len(data_loader)``, i.e. expected batch size / dataset
    size). Values are normalised to ``float, float, int`` so that equality, and
    therefore merging of consecutive rounds, does not depend on whether a caller
    passed ``1`` or ``1.0`` or a numpy scalar.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        sigma = finite_real("noise_multiplier", self.noise_multiplier)
        if not sigma > 0.0:
            raise ValueError(f"noise_multiplier must be > 0, got {self.noise_multiplier!r}")
        q = finite_real("sample_rate", self.sample_rate)
        if not 0.0 < q <= 1.0:
            raise ValueError(f"sample_rate must satisfy 0 < sample_rate <= 1, got {self.sample_rate!r}")
        steps = _check_count("steps", self.steps)
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "sample_rate", q)
        object.__setattr__(self, "steps", steps)

    def same_mechanism(self, other: MechanismStep) -> bool:
        """True when ``other`` runs the identical per-step mechanism (steps may differ)."""
        return self.noise_multiplier == other.noise_multiplier and self.sample_rate == other.sample_rate

    def as_opacus(self) -> tuple[float, float, int]:
        """The ``(noise_multiplier, sample_rate, num_steps)`` tuple Opacus keeps in ``history``."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


def _as_steps(history: Iterable[MechanismStep]) -> list[MechanismStep]:
    out = list(history)
    for i, step in enumerate(out):
        if not isinstance(step, MechanismStep):
            raise ValueError(f"history[{i}] must be a MechanismStep, got {type(step).__name__}")
    return out


def coalesce(history: Iterable[MechanismStep]) -> list[MechanismStep]:
    """Merge consecutive entries that run the same mechanism, adding their steps.

    Exact, not an approximation: k steps of a mechanism followed by m more of
    the same one *are* k + m steps of it. It keeps the history short (one entry
    per change of settings, however many rounds ran) and lets the PRV
    accountant compose each run of identical steps with one FFT power instead
    of a chain of convolutions.
    """
    out: list[MechanismStep] = []
    for step in _as_steps(history):
        if out and out[-1].same_mechanism(step):
            last = out.pop()
            step = MechanismStep(last.noise_multiplier, last.sample_rate, last.steps + step.steps)
        out.append(step)
    return out


@dataclass
class AccountantState:
    """Everything spent so far, as the list of mechanisms run (see module docstring).

    A client appends one :class:`MechanismStep` per round with :meth:`record`
    (consecutive identical rounds are merged), keeps the state between rounds
    as :meth:`to_dict` (flat lists of floats/ints, which fit a Flower
    ``ConfigRecord`` in the node's ``context.state`` as well as JSON in the
    ledger), and restores it with :meth:`from_dict` in the next round or run.
    """

    history: list[MechanismStep] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.history = coalesce(self.history)

    # -- recording ---------------------------------------------------------

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> MechanismStep:
        """Append ``steps`` steps of one mechanism; returns the step as recorded."""
        step = MechanismStep(noise_multiplier, sample_rate, steps)
        self.append(step)
        return step

    def append(self, step: MechanismStep) -> None:
        """Append one entry, merged into the last one when it runs the same mechanism."""
        self.history = coalesce([*self.history, *_as_steps([step])])

    def extend(self, steps: Iterable[MechanismStep] | AccountantState) -> None:
        """Append several entries (or another state's whole history), in order."""
        more = steps.history if isinstance(steps, AccountantState) else steps
        self.history = coalesce([*self.history, *_as_steps(more)])

    # -- queries -----------------------------------------------------------

    @property
    def total_steps(self) -> int:
        return sum(step.steps for step in self.history)

    def epsilon(self, delta: float, accountant: AccountantName = "rdp", *,
                eps_error: float = DEFAULT_EPS_ERROR) -> float:
        """Epsilon spent so far at ``delta``; see :func:`epsilon`."""
        return epsilon(self.history, delta, accountant, eps_error=eps_error)

    # -- (de)serialisation -------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of flat, homogeneous lists: JSON-able and Flower ``ConfigRecord``-able.

        Columnar rather than a list of dicts because Flower's records hold only
        scalars and lists of scalars. Floats survive JSON exactly (``repr``
        round-trips), so a restored state gives bit-identical epsilons.
        """
        return {
            "version": STATE_VERSION,
            "noise_multiplier": [s.noise_multiplier for s in self.history],
            "sample_rate": [s.sample_rate for s in self.history],
            "steps": [s.steps for s in self.history],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccountantState:
        """Inverse of :meth:`to_dict`; validates every entry (ValueError on bad input)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"accountant state must be a mapping, got {type(data).__name__}")
        version = data.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"unsupported accountant state version {version!r} (expected {STATE_VERSION})")
        columns = {}
        for key in ("noise_multiplier", "sample_rate", "steps"):
            if key not in data:
                raise ValueError(f"accountant state is missing {key!r}")
            value = data[key]
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise ValueError(f"accountant state {key!r} must be a list, got {type(value).__name__}")
            columns[key] = list(value)
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ValueError("accountant state lists noise_multiplier, sample_rate and steps "
                             f"differ in length: {[len(v) for v in columns.values()]}")
        history = [MechanismStep(s, q, n) for s, q, n in
                   zip(columns["noise_multiplier"], columns["sample_rate"], columns["steps"])]
        return cls(history)


# ---------------------------------------------------------------------------
# epsilon


def _opacus_history(history: Iterable[MechanismStep]) -> list[tuple[float, float, int]]:
    """The Opacus ``history`` for ``history``, each distinct mechanism once with its total steps.

    Grouping also non-consecutive entries is exact: these accountants bound the
    (adaptive) composition of the listed mechanisms, which does not depend on
    their order (RDP adds per-order divergences, PRV adds privacy-loss random
    variables). It makes the cost depend on the number of *distinct*
    settings, not on how often a client alternated between them; the PRV
    accountant composes each group with one FFT power rather than a
    convolution per entry.
    """
    totals: dict[tuple[float, float], int] = {}
    for step in _as_steps(history):
        key = (step.noise_multiplier, step.sample_rate)
        totals[key] = totals.get(key, 0) + step.steps
    return [(sigma, q, n) for (sigma, q), n in totals.items()]


def epsilon(history: Sequence[MechanismStep], delta: float, accountant: AccountantName = "rdp", *,
            eps_error: float = DEFAULT_EPS_ERROR,
            orders: Sequence[float] | None = None) -> float:
    """Epsilon at ``delta`` of running every mechanism in ``history``, in order.

    Builds a fresh Opacus accountant and sets its ``history`` to the
    (coalesced) list of ``(noise_multiplier, sample_rate, steps)`` tuples,
    which is what its ``step()`` would have built one step at a time; setting
    it directly costs O(len(history)) however many steps there are, where
    calling ``step()`` would be O(total steps).

    ``accountant="rdp"``: :class:`opacus.accountants.RDPAccountant`, with its
    ``DEFAULT_ALPHAS`` unless ``orders`` is given. ``accountant="prv"``:
    :class:`opacus.accountants.PRVAccountant`, whose ``get_epsilon`` returns
    the upper end of its numerical bracket (estimate + ``eps_error``, at
    ``delta - delta/1000``), so the result is a guarantee, not an estimate.

    An empty history has spent nothing: 0.0.

    Cost: RDP is milliseconds at any step count. PRV discretises the privacy
    loss on a grid whose size grows like ``sqrt(total steps) * epsilon /
    eps_error``: ~0.05 s at 2k steps, ~0.5 s at 20k, ~3 s at 100k (one
    distinct setting, epsilon ~ 1-10, 2-core CPU), plus about the same again
    per further distinct (noise_multiplier, sample_rate) pair.
    """
    d = _check_delta(delta)
    _check_accountant(accountant)
    steps = _opacus_history(history)
    if accountant == "rdp":
        if orders is not None:
            orders = [finite_real("orders[i]", a) for a in orders]
            if not orders or min(orders) <= 1.0:
                raise ValueError("orders must be a non-empty list of RDP orders > 1")
        if not steps:
            return 0.0
        acc = RDPAccountant()
        acc.history = steps
        return float(acc.get_epsilon(delta=d, alphas=orders))
    if orders is not None:
        raise ValueError("orders applies to the 'rdp' accountant only")
    err = _check_eps_error(eps_error)
    if not steps:
        return 0.0
    acc = PRVAccountant()
    acc.history = steps
    with _quiet_sample_rate_one():
        return float(acc.get_epsilon(delta=d, eps_error=err))


@contextlib.contextmanager
def _quiet_sample_rate_one() -> Iterator[None]:
    """At sample rate 1 Opacus's PRV code takes log(1 - q) = log(0): harmless, but it warns."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="divide by zero encountered in log",
                                category=RuntimeWarning)
        yield


def prv_epsilon_bounds(history: Sequence[MechanismStep], delta: float, *,
                       eps_error: float = DEFAULT_EPS_ERROR,
                       delta_error: float | None = None) -> tuple[float, float, float]:
    """``(lower, estimate, upper)`` epsilon at ``delta`` from Opacus's PRV accountant.

    The true epsilon of the mechanism lies in ``[lower, upper]``
    (Gopi et al. 2021, Thm 5.5): ``upper`` is the estimate at
    ``delta - delta_error`` plus ``eps_error``, ``lower`` the estimate at
    ``delta + delta_error`` minus ``eps_error``. ``delta_error`` defaults to
    ``delta / 1000`` as in ``PRVAccountant.get_epsilon``, so ``upper`` equals
    ``epsilon(history, delta, "prv", eps_error=eps_error)``.

    Uses ``PRVAccountant._get_dprv`` (private in Opacus, stable across 1.x):
    its public ``get_epsilon`` returns only ``upper``.
    """
    d = _check_delta(delta)
    err = _check_eps_error(eps_error)
    if delta_error is None:
        d_err = d / 1000
    else:
        d_err = finite_real("delta_error", delta_error)
        if not 0.0 < d_err < d:
            raise ValueError(f"delta_error must satisfy 0 < delta_error < delta, got {delta_error!r}")
    steps = _opacus_history(history)
    if not steps:
        return (0.0, 0.0, 0.0)
    acc = PRVAccountant()
    acc.history = steps
    dprv = acc._get_dprv(eps_error=err, delta_error=d_err)
    lower, estimate, upper = dprv.compute_epsilon(d, d_err, err)
    return (float(lower), float(estimate), float(upper))


# ---------------------------------------------------------------------------
# planning


@functools.lru_cache(maxsize=1024)
def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                     accountant: AccountantName = "rdp", *,
                     epsilon_tolerance: float = 0.01,
                     eps_error: float = DEFAULT_EPS_ERROR) -> float:
    """Smallest-found noise multiplier whose ``steps`` steps stay within ``target_epsilon``.

    Opacus's :func:`~opacus.accountants.utils.get_noise_multiplier`: a
    bisection that returns a sigma with
    ``target_epsilon - epsilon_tolerance < epsilon(sigma) <= target_epsilon``
    under the chosen accountant (for PRV, under its upper bound).

    Cached (it is a pure function of its arguments and takes seconds): a silo
    plans the same mechanism every round, and 100 silos x 10 rounds would
    otherwise redo the bisection 1,000 times.
    """
    target = finite_real("target_epsilon", target_epsilon)
    if not target > 0.0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon!r}")
    d = _check_delta(delta)
    _check_accountant(accountant)
    step = MechanismStep(1.0, sample_rate, steps)  # validates sample_rate and steps
    tol = finite_real("epsilon_tolerance", epsilon_tolerance)
    if not tol > 0.0:
        raise ValueError(f"epsilon_tolerance must be > 0, got {epsilon_tolerance!r}")
    kwargs: dict[str, Any] = {}
    if accountant == "prv":
        kwargs["eps_error"] = _check_eps_error(eps_error)
    with warnings.catch_warnings():
        # The bisection's first probes (sigma = 20, 40, ...) put RDP's optimal
        # order at the largest alpha, which Opacus warns about; those probes are
        # not the answer, so the warning would only mislead.
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        warnings.filterwarnings("ignore", message="divide by zero encountered in log",
                                category=RuntimeWarning)  # sample rate 1 under PRV
        sigma = get_noise_multiplier(target_epsilon=target, target_delta=d,
                                     sample_rate=step.sample_rate, steps=step.steps,
                                     accountant=accountant, epsilon_tolerance=tol, **kwargs)
    return float(sigma)


def planned_epsilon(noise_multiplier: float, sample_rate: float, steps_per_round: int, rounds: int,
                    delta: float, accountant: AccountantName = "rdp", *,
                    prior: Sequence[MechanismStep] = (),
                    eps_error: float = DEFAULT_EPS_ERROR) -> float:
    """Epsilon a run *would* reach: ``rounds`` x ``steps_per_round`` steps, after ``prior``.

    For the budget check before training: pass what the ledger says this
    data has already spent as ``prior`` (e.g. ``AccountantState.history``) to
    get the cumulative total, which is what the budget limits.
    """
    per_round = _check_count("steps_per_round", steps_per_round)
    n_rounds = _check_count("rounds", rounds)
    planned = MechanismStep(noise_multiplier, sample_rate, per_round * n_rounds)
    return epsilon([*_as_steps(prior), planned], delta, accountant, eps_error=eps_error)
