"""ECDH private set intersection (PSI) over X25519, transport-agnostic.

Two silos want to know which customers they have in common (or only how many)
without revealing the rest of their customer lists to each other or to whoever
relays their messages. This module is the protocol core: pure classes and
functions on lists of ``bytes``. Wiring it into Flower messages lives elsewhere.

Protocol (semi-honest Diffie-Hellman PSI with commutative blinding)
-------------------------------------------------------------------
Let ``H`` hash an element to a point and ``k·P`` be X25519 scalar
multiplication. The **receiver** R holds X and learns the result; the
**sender** S holds Y. Each draws a fresh secret scalar per session
(``os.urandom(32)``): ``k_R`` and ``k_S``.

1. R -> S: ``a = [k_R·H(x) for x in X']``, where X' is X de-duplicated, in a
   random order that R remembers (so the order cannot leak how R stores X).
2. S -> R: ``b = shuffle([k_S·H(y) for y in Y'])`` (Y' de-duplicated), and
   ``ab = [k_S·a_i for a_i in a]``: in R's order in **intersection mode**,
   shuffled in **cardinality mode** (then R cannot tell *which* of its
   elements matched, only how many).
3. R computes ``ba = {k_R·b_j}``. Because blinding commutes,
   ``k_S·k_R·H(x) == k_R·k_S·H(y)`` exactly when ``x == y`` (up to negligible
   collisions). Intersection mode: ``{x_i : ab_i in ba}``; cardinality mode:
   ``|set(ab) & ba|``.

What each party learns: R learns X ∩ Y (or only ``|X ∩ Y|``) and ``|Y'|``;
S learns only ``|X'|``. A relay between them sees only pseudorandom 32-byte
values and the set sizes. Security rests on the (decisional) Diffie-Hellman
assumption with ``H`` modelled as a random oracle, **for semi-honest parties
only**: a malicious party that deviates from the protocol (e.g. S answering
with a different key per element, R sending points it did not derive from its
own set, either side lying about its set) is out of scope. Each run is also
one-shot: an instance refuses to be used for a second session.

Why X25519
----------
* The group operation is X25519 from RFC 7748, computed by OpenSSL through the
  ``cryptography`` package: constant-time, audited, no hand-written curve
  arithmetic here. The only primitive used is
  ``X25519PrivateKey.from_private_bytes(k).exchange(X25519PublicKey.from_public_bytes(u))``.
* It is fast (about 30k scalar multiplications/s per core on the development
  machine; the cost of the protocol is two multiplications per element, see
  ``benchmarks/bench_psi.py``) and elements are 32 bytes on the wire.
* Curve25519 is twist-secure. Hashing arbitrary 32-byte strings to
  u-coordinates lands on the curve or on its quadratic twist (about half each);
  both have a large prime-order subgroup, so blinding such points is safe and
  no hash-to-curve map is needed.
* Scalar multiplication on the u-line commutes: ``X(a, X(b, P)) ==
  X(b, X(a, P))`` for curve and twist points alike (X25519 clamps scalars,
  which multiplies by the cofactor 8 and so also removes any small-order
  component). ``tests/test_psi.py`` checks this, hashed inputs included.
* ``exchange`` raises when the result is all zeros, i.e. the input was a
  low-order point. With hashed inputs this has negligible probability
  (a dozen such u values out of 2**255); it can only realistically happen when a peer sends such a
  point, and it is reported as a :class:`PsiError` naming the index.

Hashing: ``hash_to_u(e, context) = SHA-512(b"fedprofile-psi/v1\\0" + context +
b"\\0" + e)[:32]``. The ``context`` binds a run (e.g. key domain + session id):
blinded values from different sessions or domains cannot be matched even if a
scalar were (wrongly) reused. X25519 ignores the top bit of u (RFC 7748), so
``H`` is effectively a 255-bit hash; collisions stay negligible.

Performance
-----------
The scalar multiplications are the whole cost, so they run in a process pool
(``workers=None`` means ``os.cpu_count()``), in chunks of 5k-10k values. The
pool uses the "forkserver" start method ("spawn" where that is unavailable),
never "fork": callers may run threads (gRPC, Ray), and forking a threaded
process can deadlock the child. One pool serves one call (``request``,
``respond``, ``finish``); inputs under ``POOL_THRESHOLD`` values, or
``workers=1``, run in-process, as starting a pool costs more than it saves.
Like any "spawn"/"forkserver" pool, workers re-import the caller's ``__main__``
module, so a script that calls this must keep its work under
``if __name__ == "__main__":``. The secret scalar travels to the pool's worker
processes over a local pipe (the only way to use more than one core); it is
never written anywhere else, and the classes that hold it refuse pickling.

Should the hash also run in the workers? SHA-512 of a short id costs about
2% of a scalar multiplication (~1.6M hashes/s vs ~30k multiplications/s on one
core), but done in the parent it is serial and competes with the workers for a
core. Measured on the 2-core development machine, blinding 400k 16-byte ids:
57k ids/s with the hash fused into the workers' loop
(``_hash_and_blind_chunk``) vs 54-56k ids/s hashing in the parent first. So it
is fused; as a bonus the workers receive the (usually shorter) raw elements
instead of 32-byte hashes.

Pool or not: starting a 2-worker pool costs ~0.04 s there once the forkserver
runs (~0.08 s for the first pool of a process). Blinding 10k ids took 0.23 s
over a pool vs 0.34 s in-process, so ``POOL_THRESHOLD`` is 10k multiplications
per call (break-even is near 5k; the margin covers slower process start-up).
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

__all__ = [
    "ELEMENT_SIZE",
    "POOL_THRESHOLD",
    "PsiError",
    "PsiReceiver",
    "PsiResult",
    "PsiSender",
    "hash_to_u",
    "private_intersection",
    "random_permutation",
]

#: Size in bytes of every blinded value on the wire (an X25519 u-coordinate).
ELEMENT_SIZE = 32
#: Below this many scalar multiplications in one call, work in-process: starting
#: a pool (forkserver, then one import per worker) would cost more than it saves.
POOL_THRESHOLD = 10_000
#: Bounds on values per pool task: big enough that pickling and scheduling are
#: noise (~0.2-0.3 s of work per chunk), small enough to balance the tail.
MIN_CHUNK = 5_000
MAX_CHUNK = 10_000

_DOMAIN = b"fedprofile-psi/v1\0"


class PsiError(ValueError):
    """Any PSI failure: bad input, malformed or low-order peer value, misuse of a session."""


def _prefix(context: bytes) -> bytes:
    if not isinstance(context, bytes):
        raise PsiError(f"context must be bytes, got {type(context).__name__}")
    return _DOMAIN + context + b"\0"


def hash_to_u(element: bytes, context: bytes) -> bytes:
    """Map ``element`` to an X25519 u-coordinate, bound to the run's ``context``.

    ``SHA-512(b"fedprofile-psi/v1\\0" + context + b"\\0" + element)[:32]``. The
    result is a point on Curve25519 or its twist; either is safe to blind
    (twist security), so no hash-to-curve map is needed.
    """
    if not isinstance(element, bytes):
        raise PsiError(f"element must be bytes, got {type(element).__name__}")
    return hashlib.sha512(_prefix(context) + element).digest()[:ELEMENT_SIZE]


# --------------------------------------------------------------------------
# The hot loops. Module-level so that pool workers can import them by name.


class _LowOrderPoint(Exception):
    """Raised inside a chunk: ``exchange`` gave the all-zero output at ``index``."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


def _locate_low_order(exchange: Callable[[X25519PublicKey], bytes], points: Iterable[bytes]) -> int:
    """Slow path, only after ``exchange`` raised: which point was it?"""
    load = X25519PublicKey.from_public_bytes
    for i, u in enumerate(points):
        try:
            exchange(load(u))
        except ValueError:
            return i
    raise AssertionError("exchange failed once but not on replay")  # pragma: no cover


def _blind_chunk(scalar: bytes, points: list[bytes]) -> list[bytes]:
    """Return ``[scalar·u for u in points]`` (each u a 32-byte u-coordinate).

    The tight loop: methods pre-bound, ``map`` instead of a per-element Python
    frame; ``from_public_bytes`` + ``exchange`` per element is the unavoidable
    part (it is all OpenSSL).
    """
    exchange = X25519PrivateKey.from_private_bytes(scalar).exchange
    try:
        return list(map(exchange, map(X25519PublicKey.from_public_bytes, points)))
    except ValueError:
        raise _LowOrderPoint(_locate_low_order(exchange, points)) from None


def _hash_and_blind_chunk(scalar: bytes, prefix: bytes, elements: list[bytes]) -> list[bytes]:
    """Return ``[scalar·H(e) for e in elements]``, hashing in the same loop."""
    exchange = X25519PrivateKey.from_private_bytes(scalar).exchange
    load = X25519PublicKey.from_public_bytes
    sha512 = hashlib.sha512
    points = [sha512(prefix + e).digest()[:ELEMENT_SIZE] for e in elements]
    try:
        return list(map(exchange, map(load, points)))
    except ValueError:  # all-zero output: negligible for a hash output
        raise _LowOrderPoint(_locate_low_order(exchange, points)) from None


# --------------------------------------------------------------------------
# Running the loops: in-process, or chunked over a process pool.

# One job: (worker function, leading arguments, values). Its result is the
# worker function applied to every value, in order.
_Job = tuple[Callable[..., list[bytes]], tuple[Any, ...], list[bytes]]


def _pool_context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _resolve_workers(workers: int | None) -> int:
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PsiError(f"workers must be a positive int or None, got {workers!r}")
    return workers


def _chunk_size(total: int, workers: int) -> int:
    # ~8 chunks per worker keeps the idle tail of a call short.
    return max(MIN_CHUNK, min(MAX_CHUNK, math.ceil(total / (8 * workers))))


def _run_jobs(jobs: Sequence[_Job], workers: int, what: str) -> list[list[bytes]]:
    """Run every job, over one pool when worthwhile; one result list per job.

    ``what`` names the values in errors (e.g. "request"), so that a low-order
    peer value is reported with its index in the message it came in.
    """
    total = sum(len(values) for _, _, values in jobs)
    if workers == 1 or total < POOL_THRESHOLD:
        out = []
        for fn, args, values in jobs:
            try:
                out.append(fn(*args, values))
            except _LowOrderPoint as exc:
                raise _low_order_error(what, exc.index) from None
        return out

    size = _chunk_size(total, workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
        submitted = [
            [(start, pool.submit(fn, *args, values[start:start + size]))
             for start in range(0, len(values), size)]
            for fn, args, values in jobs
        ]
        out = []
        for futures in submitted:
            result: list[bytes] = []
            for start, future in futures:
                try:
                    result += future.result()
                except _LowOrderPoint as exc:
                    for _, other in (f for fs in submitted for f in fs):
                        other.cancel()
                    raise _low_order_error(what, start + exc.index) from None
            out.append(result)
        return out


def _low_order_error(what: str, index: int) -> PsiError:
    return PsiError(
        f"{what}[{index}] is a low-order point (X25519 output would be all zeros); "
        "a peer sent a value no honest party produces"
    )


def random_permutation(n: int) -> list[int]:
    """A uniformly random permutation of ``range(n)`` from the OS CSPRNG.

    Sorting by 64-bit keys from ``os.urandom``: fast for millions of values
    (``random.shuffle`` is a Python loop; ``SystemRandom`` is one syscall per
    swap) and not predictable like a seeded PRNG. Ties (probability about
    ``n**2 / 2**65``) only keep two values in their previous relative order.
    """
    import numpy as np  # here, not at the top: pool workers never need it

    keys = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) if n else np.empty(0, np.uint64)
    return np.argsort(keys, kind="stable").tolist()


def _shuffled(values: list[bytes]) -> list[bytes]:
    return [values[i] for i in random_permutation(len(values))]


def _distinct_elements(elements: Iterable[bytes], who: str) -> list[bytes]:
    """De-duplicate and check types; return the distinct elements in a random order."""
    if isinstance(elements, (bytes, bytearray, memoryview, str)):
        raise PsiError(f"{who} elements must be an iterable of bytes, not a single {type(elements).__name__}")
    items = list(elements)
    # C-speed check for the common case; locate the culprit only on failure.
    if not all(map(bytes.__instancecheck__, items)):
        for i, e in enumerate(items):
            if not isinstance(e, bytes):
                raise PsiError(f"{who} element {i} must be bytes, got {type(e).__name__}")
    return _shuffled(list(set(items)))


def _check_blinded(values: Sequence[bytes], what: str) -> list[bytes]:
    """Every value from the peer must be exactly 32 bytes of type ``bytes``."""
    values = list(values)
    if values and (set(map(type, values)) != {bytes} or set(map(len, values)) != {ELEMENT_SIZE}):
        for i, v in enumerate(values):
            if not isinstance(v, bytes):
                raise PsiError(f"{what}[{i}] must be bytes, got {type(v).__name__}")
            if len(v) != ELEMENT_SIZE:
                raise PsiError(f"{what}[{i}] must be {ELEMENT_SIZE} bytes, got {len(v)}")
    return values


class _Secret:
    """Holds a session scalar: kept out of ``repr``, refuses to be pickled or copied."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value: bytes | None = os.urandom(32)

    def get(self) -> bytes:
        if self._value is None:
            raise PsiError("this PSI session is finished; start a new one (fresh scalar) for another run")
        return self._value

    def forget(self) -> None:
        self._value = None

    def __repr__(self) -> str:
        return "<secret>" if self._value is not None else "<forgotten>"

    def __reduce__(self) -> Any:
        raise TypeError("a PSI session scalar is never serialised")


# --------------------------------------------------------------------------
# The protocol.


@dataclass(frozen=True)
class PsiResult:
    """What the receiver learns.

    ``intersection`` is ``None`` in cardinality mode: the receiver learns only
    the count. ``receiver_size`` and ``sender_size`` are the de-duplicated set
    sizes, which the protocol reveals anyway (the message lengths).
    """

    cardinality: int
    intersection: frozenset[bytes] | None
    receiver_size: int
    sender_size: int


class PsiReceiver:
    """Party R: holds X, sends the first message, learns the result.

    One instance is one session: a fresh scalar, one ``request``, one ``finish``.
    The scalar is forgotten after ``finish``.
    """

    __slots__ = ("_elements", "_prefix", "_secret", "_workers", "_request_len", "cardinality_only")

    def __init__(
        self,
        elements: Iterable[bytes],
        context: bytes,
        *,
        cardinality_only: bool = False,
        workers: int | None = None,
    ) -> None:
        self._prefix = _prefix(context)
        self._workers = _resolve_workers(workers)
        # Random order: the position of a value in the request must not say
        # anything about how R stores X (sorted ids, insertion time, ...).
        self._elements = _distinct_elements(elements, "receiver")
        self._secret = _Secret()
        self._request_len: int | None = None
        #: Whether to ask the sender for cardinality mode. The sender is told
        #: this out of band (its ``respond`` argument); R trusts S to honour it.
        self.cardinality_only = bool(cardinality_only)

    @property
    def size(self) -> int:
        """``|X'|``: the number of distinct elements (the sender learns this)."""
        return len(self._elements)

    def __repr__(self) -> str:
        mode = "cardinality" if self.cardinality_only else "intersection"
        return f"PsiReceiver(size={self.size}, mode={mode}, workers={self._workers}, scalar={self._secret!r})"

    def __reduce__(self) -> Any:
        raise TypeError("a PSI session holds a secret scalar and is never serialised")

    def request(self) -> list[bytes]:
        """Step 1: ``a = [k_R·H(x) for x in X']``, in R's remembered random order."""
        if self._request_len is not None:
            raise PsiError("request() was already called for this session")
        scalar = self._secret.get()
        (a,) = _run_jobs([(_hash_and_blind_chunk, (scalar, self._prefix), self._elements)],
                         self._workers, "receiver element")
        self._request_len = len(a)
        return a

    def finish(self, sender_blinded: Sequence[bytes], double_blinded: Sequence[bytes]) -> PsiResult:
        """Step 3: from S's ``(b, ab)``, compute the intersection (or its size).

        ``double_blinded`` must be as long as the request: in intersection mode
        its i-th value belongs to the i-th element R sent.
        """
        if self._request_len is None:
            raise PsiError("finish() before request(): nothing to match against")
        scalar = self._secret.get()
        b, ab = self._checked_response(sender_blinded, double_blinded)
        (ba_list,) = _run_jobs([(_blind_chunk, (scalar,), b)], self._workers, "sender_blinded")
        self._secret.forget()  # the session is over; nothing else needs k_R
        ba = set(ba_list)
        del ba_list
        if self.cardinality_only:
            return PsiResult(len(ba.intersection(ab)), None, self._request_len, len(b))
        common = frozenset(x for x, v in zip(self._elements, ab) if v in ba)
        return PsiResult(len(common), common, self._request_len, len(b))

    def _checked_response(self, sender_blinded: Sequence[bytes], double_blinded: Sequence[bytes],
                          who: str = "") -> tuple[list[bytes], list[bytes]]:
        """A sender's ``(b, ab)``, checked: 32-byte values, ``ab`` as long as the request."""
        b = _check_blinded(sender_blinded, f"{who}sender_blinded")
        ab = _check_blinded(double_blinded, f"{who}double_blinded")
        if len(ab) != self._request_len:
            raise PsiError(f"{who}double_blinded has {len(ab)} values but the request had "
                           f"{self._request_len}")
        return b, ab

    def finish_positions(self, responses: Sequence[tuple[Sequence[bytes], Sequence[bytes]]]
                         ) -> list[dict[bytes, int]]:
        """Step 3 for record alignment: where each of R's elements sits in each sender's list.

        ``responses[k]`` is sender k's ``(b, ab)`` from :meth:`PsiSender.respond_ordered`
        (intersection mode, same request). Returns, per sender, ``{x: j}`` for
        every element ``x`` of R that sender k also holds, ``j`` being its
        position in k's *shuffled* list ``b``. Sender k can resolve ``j`` (it
        kept its shuffle), nobody else can: a list of such positions, in an
        order R draws, is how R tells the senders which rows to line up
        without anyone naming a customer. R learns what intersection mode
        reveals anyway (which of its elements each sender holds).
        """
        if self._request_len is None:
            raise PsiError("finish_positions() before request(): nothing to match against")
        if self.cardinality_only:
            raise PsiError("record alignment needs intersection mode, not cardinality mode")
        scalar = self._secret.get()
        checked = [self._checked_response(b, ab, f"sender {k} ")
                   for k, (b, ab) in enumerate(responses)]
        reblinded = _run_jobs([(_blind_chunk, (scalar,), b) for b, _ in checked], self._workers,
                              "sender_blinded")
        self._secret.forget()
        out = []
        for (_b, ab), ba in zip(checked, reblinded, strict=True):
            where = {v: j for j, v in enumerate(ba)}
            out.append({x: where[v] for x, v in zip(self._elements, ab) if v in where})
        return out


    def suspend(self) -> dict[str, Any]:
        """The session between ``request`` and ``finish``, for a transport that may
        run the two steps in different processes (Flower's Simulation Engine hands
        a node's messages to any of its workers).

        It holds the secret scalar: keep it in the silo's own node-local state
        (Flower's ``context.state``), never on the wire, and drop it after
        :meth:`resume`. This instance forgets the scalar.
        """
        if self._request_len is None:
            raise PsiError("suspend() before request(): nothing to keep")
        state = {"scalar": self._secret.get(), "elements": list(self._elements),
                 "request-len": self._request_len, "cardinality": self.cardinality_only}
        self._secret.forget()
        return state

    @classmethod
    def resume(cls, state: Any, context: bytes, *, workers: int | None = None) -> PsiReceiver:
        """A receiver ready to ``finish``, from :meth:`suspend`'s state and the same context."""
        try:
            scalar = bytes(state["scalar"])
            elements = [bytes(e) for e in state["elements"]]
            request_len = int(state["request-len"])
            cardinality = bool(state["cardinality"])
        except (KeyError, TypeError, ValueError) as err:
            raise PsiError(f"not a suspended PSI session ({err})") from None
        if len(scalar) != 32 or request_len != len(elements):
            raise PsiError("not a suspended PSI session (inconsistent state)")
        receiver = cls.__new__(cls)
        receiver._prefix = _prefix(context)
        receiver._workers = _resolve_workers(workers)
        receiver._elements = elements
        receiver._secret = _Secret()
        receiver._secret._value = scalar
        receiver._request_len = request_len
        receiver.cardinality_only = cardinality
        return receiver


class PsiSender:
    """Party S: holds Y, answers the receiver's request once, learns only ``|X'|``.

    The scalar is forgotten after ``respond``: S has nothing left to do.
    """

    __slots__ = ("_elements", "_order", "_prefix", "_secret", "_workers")

    def __init__(self, elements: Iterable[bytes], context: bytes, *, workers: int | None = None) -> None:
        self._order: list[bytes] = []
        self._prefix = _prefix(context)
        self._workers = _resolve_workers(workers)
        self._elements = _distinct_elements(elements, "sender")
        self._secret = _Secret()

    @property
    def size(self) -> int:
        """``|Y'|``: the number of distinct elements (the receiver learns this)."""
        return len(self._elements)

    def __repr__(self) -> str:
        return f"PsiSender(size={self.size}, workers={self._workers}, scalar={self._secret!r})"

    def __reduce__(self) -> Any:
        raise TypeError("a PSI session holds a secret scalar and is never serialised")

    def respond(self, request: Sequence[bytes], cardinality_only: bool) -> tuple[list[bytes], list[bytes]]:
        """Step 2: return ``(b, ab)``.

        ``b`` is S's own blinded set, shuffled. ``ab`` is the request blinded
        again with ``k_S``: in request order for intersection mode, shuffled
        for cardinality mode so that R cannot tell which of its values matched.
        """
        a = _check_blinded(request, "request")
        scalar = self._secret.get()
        b, ab = _run_jobs(
            [(_hash_and_blind_chunk, (scalar, self._prefix), self._elements), (_blind_chunk, (scalar,), a)],
            self._workers,
            "request",
        )
        self._secret.forget()
        # S's elements are already in a random order, so b is too; shuffle
        # anyway, so that b's order never depends on how the list was built.
        order = random_permutation(len(b))
        self._order = [self._elements[i] for i in order]
        b = [b[i] for i in order]
        if cardinality_only:
            ab = _shuffled(ab)
        return b, ab

    def respond_ordered(self, request: Sequence[bytes]) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """Step 2 for record alignment (intersection mode): ``(b, ab, order)``.

        ``order[j]`` is the element whose blinded value is ``b[j]``. It is the
        sender's secret key to the receiver's answer (positions in ``b``):
        keep it in the silo, never send it.
        """
        b, ab = self.respond(request, cardinality_only=False)
        return b, ab, list(self._order)


def private_intersection(
    receiver_elements: Iterable[bytes],
    sender_elements: Iterable[bytes],
    context: bytes,
    *,
    cardinality_only: bool = False,
    workers: int | None = None,
) -> PsiResult:
    """Run both roles in-process: for tests, benchmarks and simulations.

    Gives nothing a single party could not compute in the clear; it exists so
    that callers exercise exactly the message flow the federated version uses.
    """
    receiver = PsiReceiver(receiver_elements, context, cardinality_only=cardinality_only, workers=workers)
    sender = PsiSender(sender_elements, context, workers=workers)
    b, ab = sender.respond(receiver.request(), cardinality_only)
    return receiver.finish(b, ab)
