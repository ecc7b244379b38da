"""A failing silo names itself to the server, and a library's message never leaves the silo."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
from flwr.app import Context, Message, RecordDict

from fedprofile.client.failures import SiloError, SiloFailed, public_reason, silo_failure_mod
from fedprofile.client.store import StoreError
from fedprofile.server.strategy import failure_reason


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def _message() -> Message:
    # Outside a run Flower cannot build a Message; the mod reads only its type.
    return SimpleNamespace(metadata=SimpleNamespace(message_type="train"))  # type: ignore[return-value]


def _failing(err: Exception):  # noqa: ANN202
    def handler(_msg: Message, _context: Context) -> Message:
        raise err
    return handler


def test_fedprofile_errors_are_sent_with_their_message_and_the_silo_name(tmp_path: Path) -> None:
    context = _context({"silo-dir": str(tmp_path / "hotels")})
    err = StoreError(f"{tmp_path}/hotels/store.sqlite: not a readable silo store")
    with pytest.raises(SiloFailed) as raised:
        silo_failure_mod(_message(), context, _failing(err))
    assert str(raised.value) == f"silo hotels: StoreError: {err}"
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert public_reason("flights", SiloError("no PSI session 3\n on this node")) == (
        "silo flights: SiloError: no PSI session 3 on this node")


def test_a_library_error_keeps_its_message_at_home(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """sqlite, numpy or torch may quote the data they choke on: only the type is sent."""
    context = _context({"silo-dir": str(tmp_path / "flights")})
    secret_row = "alice@example.com,+44 7700 900123"
    for err in (sqlite3.IntegrityError(f"UNIQUE constraint failed: {secret_row}"),
                ValueError(f"could not convert string to float: {secret_row!r}"),
                KeyError(secret_row)):
        with pytest.raises(SiloFailed) as raised:
            silo_failure_mod(_message(), context, _failing(err))
        sent = str(raised.value)
        assert sent.startswith(f"silo flights: {type(err).__name__} (the message stays on the silo")
        assert "alice" not in sent and "7700" not in sent
    # ...and the silo's own log has the whole story.
    assert "alice@example.com" in caplog.text


def test_a_node_without_a_silo_still_fails_with_a_name() -> None:
    with pytest.raises(SiloFailed, match=r"^silo of node 7 \(no silo in its node config\): "
                                         r"SiloError: bad"):
        silo_failure_mod(_message(), _context({}), _failing(SiloError("bad")))


def test_a_handler_that_succeeds_is_untouched(tmp_path: Path) -> None:
    reply = _message()
    assert silo_failure_mod(_message(), _context({}), lambda _m, _c: reply) is reply


@pytest.mark.parametrize("raw, shown", [
    # the Deployment Engine's wrapper
    ("<class 'fedprofile.client.failures.SiloFailed'>:<'silo hotels: StoreError: bad store'>",
     "silo hotels: StoreError: bad store"),
    # the Simulation Engine's (a traceback, then this last line)
    ("Traceback (most recent call last):\n  File x\nException ClientAppException occurred. "
     "Message: silo hotels: SiloError: no customers'>", "silo hotels: SiloError: no customers"),
    # Flower's own failures keep Flower's words
    ("Node Unavailable: the node's heartbeat expired", "Node Unavailable: the node's heartbeat "
     "expired"),
    ("", "no reason given"),
])
def test_the_server_keeps_the_silos_own_line(raw: str, shown: str) -> None:
    assert failure_reason(raw) == shown


def test_a_run_cut_off_mid_round_charges_the_round_in_flight() -> None:
    """The server counts a silo's round when its reply arrives; a run cut off while replies
    were awaited adds the planned round for every reserved silo (it may have been released)."""
    from fedprofile.privacy.accounting import MechanismStep
    from fedprofile.server.app import spent_by_silo
    from fedprofile.server.budget import mechanism_spent
    from fedprofile.server.strategy import RoundRecord, SiloFedAvg

    reported = {"noise-multiplier": 1.1, "sample-rate": 0.05, "round-steps": 40, "clip-norm": 1.0}
    strategy = SiloFedAvg()
    strategy.history = [RoundRecord(1, 0.0, trained=["flights"], privacy={"flights": reported},
                                    train_aggregated=True),
                        RoundRecord(2, 0.0)]  # round 2's training replies never came
    counted = spent_by_silo(strategy, 1e-5)
    assert counted["flights"]["steps"] == 40
    planned = {"flights": (MechanismStep(1.1, 0.05, 40), 1.0),
               "hotels": (MechanismStep(0.9, 0.1, 20), 2.0)}  # hotels had not answered yet
    cut_off = spent_by_silo(strategy, 1e-5, planned)
    assert cut_off["flights"] == mechanism_spent([MechanismStep(1.1, 0.05, 40)] * 2, 1e-5, 1.0)
    assert cut_off["hotels"] == mechanism_spent([MechanismStep(0.9, 0.1, 20)], 1e-5, 2.0)
    assert cut_off["flights"]["epsilon-rdp"] > counted["flights"]["epsilon-rdp"]
