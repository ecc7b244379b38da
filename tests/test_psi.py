"""ECDH-PSI over X25519: correctness against plain set intersection, and the protocol's guard rails."""

from __future__ import annotations

import hashlib
import os
import pickle
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedprofile.privacy import psi
from fedprofile.privacy.psi import (
    PsiError,
    PsiReceiver,
    PsiResult,
    PsiSender,
    hash_to_u,
    private_intersection,
)

CTX = b"customer-id\0session-42"
P25519 = 2**255 - 19


def _ids(rng: random.Random, n: int) -> list[bytes]:
    return [rng.randbytes(16) for _ in range(n)]


def _x25519(scalar: bytes, u: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(scalar).exchange(X25519PublicKey.from_public_bytes(u))


def _on_curve(u: bytes) -> bool:
    """Whether u is the u-coordinate of a Curve25519 point (else it is on the twist)."""
    x = int.from_bytes(u, "little") & ((1 << 255) - 1)
    rhs = (x * x * x + 486662 * x * x + x) % P25519
    return rhs == 0 or pow(rhs, (P25519 - 1) // 2, P25519) == 1


def _cases() -> list[tuple[str, list[bytes], list[bytes]]]:
    rng = random.Random(1234)
    shared = _ids(rng, 300)
    only_x, only_y = _ids(rng, 500), _ids(rng, 1200)
    same = _ids(rng, 400)
    dup_x = shared[:50] * 3 + only_x[:80] * 2
    dup_y = shared[25:100] * 2 + only_y[:40] * 4
    return [
        ("both empty", [], []),
        ("receiver empty", [], only_y[:100]),
        ("sender empty", only_x[:100], []),
        ("disjoint", only_x, only_y),
        ("identical", same, list(reversed(same))),
        ("duplicates", dup_x, dup_y),
        ("small receiver", shared[:20] + only_x[:10], shared + only_y),
        ("small sender", shared + only_x, shared[::7] + only_y[:3]),
        ("variable lengths", [b"", b"a", b"ab" * 40, b"\0"], [b"", b"\0", b"ab" * 40, b"x" * 1000]),
    ]


@pytest.mark.parametrize(("name", "xs", "ys"), _cases(), ids=[c[0] for c in _cases()])
def test_intersection_matches_plain_sets(name: str, xs: list[bytes], ys: list[bytes]) -> None:
    result = private_intersection(xs, ys, CTX, workers=1)
    expected = set(xs) & set(ys)
    assert result == PsiResult(len(expected), frozenset(expected), len(set(xs)), len(set(ys)))


@pytest.mark.parametrize(("name", "xs", "ys"), _cases(), ids=[c[0] for c in _cases()])
def test_cardinality_mode_counts_and_reveals_no_elements(name: str, xs: list[bytes], ys: list[bytes]) -> None:
    result = private_intersection(xs, ys, CTX, cardinality_only=True, workers=1)
    assert result.intersection is None
    assert result.cardinality == len(set(xs) & set(ys))
    assert (result.receiver_size, result.sender_size) == (len(set(xs)), len(set(ys)))


def test_message_flow_sizes_and_element_size() -> None:
    rng = random.Random(5)
    xs, ys = _ids(rng, 300), _ids(rng, 200)
    receiver, sender = PsiReceiver(xs + xs[:10], CTX, workers=1), PsiSender(ys, CTX, workers=1)
    a = receiver.request()
    b, ab = sender.respond(a, cardinality_only=False)
    assert (len(a), len(b), len(ab)) == (300, 200, 300)
    assert {len(v) for v in a + b + ab} == {32}
    assert receiver.finish(b, ab).cardinality == 0


def test_cardinality_mode_shuffles_the_double_blinded_values() -> None:
    """In cardinality mode R must not be able to line ab up with its request."""
    rng = random.Random(6)
    receiver = PsiReceiver(_ids(rng, 500), CTX, cardinality_only=True, workers=1)
    sender = PsiSender(_ids(rng, 10), CTX, workers=1)
    a = receiver.request()
    in_order = [_x25519(sender._secret.get(), v) for v in a]  # test-only peek at k_S
    _, ab = sender.respond(a, cardinality_only=True)
    assert sorted(ab) == sorted(in_order)
    assert ab != in_order


def test_different_contexts_do_not_match() -> None:
    rng = random.Random(7)
    xs = _ids(rng, 200)
    assert hash_to_u(xs[0], b"session-1") != hash_to_u(xs[0], b"session-2")
    receiver = PsiReceiver(xs, b"session-1", workers=1)
    sender = PsiSender(xs, b"session-2", workers=1)
    b, ab = sender.respond(receiver.request(), cardinality_only=False)
    result = receiver.finish(b, ab)
    assert result.cardinality == 0 and result.intersection == frozenset()


def test_hash_to_u_follows_the_spec() -> None:
    expected = hashlib.sha512(b"fedprofile-psi/v1\0" + b"ctx" + b"\0" + b"elem").digest()[:32]
    assert hash_to_u(b"elem", b"ctx") == expected
    assert hash_to_u(b"elem", b"ctx2") != expected


def test_x25519_commutes_on_hashed_points_on_curve_and_twist() -> None:
    seen = {True: 0, False: 0}
    for i in range(64):
        u = hash_to_u(i.to_bytes(4, "big"), CTX)
        seen[_on_curve(u)] += 1
        ka, kb = os.urandom(32), os.urandom(32)
        assert _x25519(ka, _x25519(kb, u)) == _x25519(kb, _x25519(ka, u))
    # Hash outputs land on both the curve and its twist; both commute.
    assert seen[True] > 0 and seen[False] > 0


def test_x25519_commutes_on_random_u_values() -> None:
    for _ in range(32):
        u, ka, kb = os.urandom(32), os.urandom(32), os.urandom(32)
        assert _x25519(ka, _x25519(kb, u)) == _x25519(kb, _x25519(ka, u))


def test_wrong_length_blinded_value_is_rejected_with_its_index() -> None:
    receiver = PsiReceiver([b"a", b"b", b"c"], CTX, workers=1)
    a = receiver.request()
    with pytest.raises(PsiError, match=r"request\[1\].*32 bytes"):
        PsiSender([b"a"], CTX, workers=1).respond([a[0], a[1][:31], a[2]], cardinality_only=False)
    b, ab = PsiSender([b"a"], CTX, workers=1).respond(a, cardinality_only=False)
    with pytest.raises(PsiError, match=r"sender_blinded\[0\]"):
        receiver.finish([b[0] + b"\0"], ab)
    with pytest.raises(PsiError, match=r"double_blinded\[2\].*must be bytes"):
        receiver.finish(b, [ab[0], ab[1], "x" * 32])


def test_mismatched_lengths_are_rejected() -> None:
    receiver = PsiReceiver([b"a", b"b", b"c"], CTX, workers=1)
    b, ab = PsiSender([b"a"], CTX, workers=1).respond(receiver.request(), cardinality_only=False)
    with pytest.raises(PsiError, match="2 values but the request had 3"):
        receiver.finish(b, ab[:2])
    # The failed call did not consume the session.
    assert receiver.finish(b, ab).intersection == frozenset({b"a"})


def test_low_order_point_from_peer_is_a_clear_error() -> None:
    receiver = PsiReceiver([b"a", b"b"], CTX, workers=1)
    a = receiver.request()
    with pytest.raises(PsiError, match=r"request\[1\] is a low-order point"):
        PsiSender([b"a"], CTX, workers=1).respond([a[0], bytes(32)], cardinality_only=False)


def test_non_bytes_elements_are_rejected() -> None:
    with pytest.raises(PsiError, match="receiver element 1 must be bytes, got str"):
        PsiReceiver([b"a", "b"], CTX)
    with pytest.raises(PsiError, match="sender element 0 must be bytes, got int"):
        PsiSender([7], CTX)
    with pytest.raises(PsiError, match="single bytes"):
        PsiSender(b"abc", CTX)
    with pytest.raises(PsiError, match="context must be bytes"):
        PsiSender([b"a"], "ctx")  # type: ignore[arg-type]


def test_secret_scalar_is_not_in_repr_and_never_pickled() -> None:
    receiver = PsiReceiver([b"a", b"b"], CTX, workers=1)
    sender = PsiSender([b"b"], CTX, workers=1)
    for party in (receiver, sender):
        scalar = party._secret.get()
        text = repr(party)
        assert scalar.hex() not in text and repr(scalar) not in text and str(list(scalar)) not in text
        with pytest.raises(TypeError, match="never serialised"):
            pickle.dumps(party)
        with pytest.raises(TypeError, match="never serialised"):
            pickle.dumps(party._secret)
    assert "size=2" in repr(receiver)


def test_fresh_scalar_per_session() -> None:
    xs = [b"alice", b"bob", b"carol"]
    first, second = PsiReceiver(xs, CTX, workers=1), PsiReceiver(xs, CTX, workers=1)
    assert first._secret.get() != second._secret.get()
    assert set(first.request()).isdisjoint(second.request())


def test_a_session_is_one_shot() -> None:
    receiver = PsiReceiver([b"a"], CTX, workers=1)
    with pytest.raises(PsiError, match="before request"):
        receiver.finish([], [])
    a = receiver.request()
    with pytest.raises(PsiError, match="already called"):
        receiver.request()
    sender = PsiSender([b"a"], CTX, workers=1)
    b, ab = sender.respond(a, cardinality_only=False)
    with pytest.raises(PsiError, match="finished"):
        sender.respond(a, cardinality_only=False)
    assert receiver.finish(b, ab).cardinality == 1
    with pytest.raises(PsiError, match="finished"):
        receiver.finish(b, ab)


def test_request_order_is_random_not_input_order() -> None:
    xs = [i.to_bytes(4, "big") for i in range(200)]
    receiver = PsiReceiver(xs, CTX, workers=1)
    assert receiver._elements != xs and sorted(receiver._elements) == xs


def test_invalid_workers() -> None:
    with pytest.raises(PsiError, match="workers"):
        PsiSender([b"a"], CTX, workers=0)


def test_process_pool_matches_in_process() -> None:
    """~25k elements per side with workers=2: above POOL_THRESHOLD, so chunks go to a pool."""
    rng = random.Random(99)
    shared = _ids(rng, 6000)
    xs, ys = shared + _ids(rng, 19000), _ids(rng, 19500) + shared
    assert len(xs) > psi.POOL_THRESHOLD
    result = private_intersection(xs, ys, CTX, workers=2)
    assert result.intersection == frozenset(shared)
    assert (result.cardinality, result.receiver_size, result.sender_size) == (6000, 25000, 25500)


def test_process_pool_reports_low_order_point_with_global_index() -> None:
    rng = random.Random(3)
    values = [hash_to_u(x, CTX) for x in _ids(rng, psi.POOL_THRESHOLD + 2000)]
    values[psi.MIN_CHUNK + 17] = bytes(32)
    with pytest.raises(PsiError, match=rf"request\[{psi.MIN_CHUNK + 17}\] is a low-order point"):
        psi._run_jobs([(psi._blind_chunk, (os.urandom(32),), values)], 2, "request")


def test_suspend_and_resume_across_processes_gives_the_same_result() -> None:
    """The Flower wiring keeps a receiver's session in node state between two messages."""
    from fedprofile.privacy.psi import PsiReceiver, PsiSender

    x = [f"id{i}".encode() for i in range(300)]
    y = [f"id{i}".encode() for i in range(200, 500)]
    receiver = PsiReceiver(x, b"ctx")
    request = receiver.request()
    state = receiver.suspend()
    assert state["scalar"].hex() not in repr(receiver) and "forgotten" in repr(receiver)
    b, ab = PsiSender(y, b"ctx").respond(request, cardinality_only=False)
    result = PsiReceiver.resume(state, b"ctx").finish(b, ab)
    assert result.intersection == set(x) & set(y)
    with pytest.raises(PsiError):
        receiver.finish(b, ab)  # the suspended instance forgot its scalar
    with pytest.raises(PsiError, match="not a suspended PSI session"):
        PsiReceiver.resume({"scalar": b"short"}, b"ctx")


def test_alignment_positions_resolve_to_the_same_people_in_every_sender() -> None:
    from fedprofile.privacy.psi import PsiReceiver, PsiSender

    receiver_set = [f"p{i}".encode() for i in range(0, 300)]
    senders = [[f"p{i}".encode() for i in range(100, 500)],
               [f"p{i}".encode() for i in range(250, 260)] + [b"other"]]
    receiver = PsiReceiver(receiver_set, b"ctx", workers=1)
    request = receiver.request()
    answers, orders = [], []
    for elements in senders:
        sender = PsiSender(elements, b"ctx", workers=1)
        b, ab, order = sender.respond_ordered(request)
        answers.append((b, ab))
        orders.append(order)
        assert sorted(order) == sorted(set(elements))  # the sender's key to its positions
    where = receiver.finish_positions(answers)
    assert set(where[0]) == {f"p{i}".encode() for i in range(100, 300)}
    assert set(where[1]) == {f"p{i}".encode() for i in range(250, 260)}
    for k in range(2):
        for element, position in where[k].items():
            assert orders[k][position] == element  # only sender k can read its positions
    with pytest.raises(PsiError):  # one session, one use
        receiver.finish_positions(answers)


def test_alignment_refuses_cardinality_mode_and_short_answers() -> None:
    from fedprofile.privacy.psi import PsiReceiver, PsiSender

    receiver = PsiReceiver([b"a", b"b"], b"ctx", cardinality_only=True, workers=1)
    b, ab, _ = PsiSender([b"a"], b"ctx", workers=1).respond_ordered(receiver.request())
    with pytest.raises(PsiError, match="intersection mode"):
        receiver.finish_positions([(b, ab)])
    receiver = PsiReceiver([b"a", b"b"], b"ctx", workers=1)
    b, ab, _ = PsiSender([b"a"], b"ctx", workers=1).respond_ordered(receiver.request())
    with pytest.raises(PsiError, match="request had 2"):
        receiver.finish_positions([(b, ab[:1])])
