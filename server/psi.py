"""The PSI job on the server: a relay that learns set sizes and nothing else.

The server finds which node serves the receiver and which the sender (by the
silo names they report), checks they pseudonymise with the same key domain and
version (otherwise equal people would not match), picks a fresh session id,
and passes the blinded values between them. It never holds a scalar, never
sees an identifier or pseudonym, and the receiver tells it only "done", so it
does not learn the size of the overlap either.
"""

from __future__ import annotations

import secrets
import time
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedprofile.config import ConfigError, TrainConfig


class PsiJobError(RuntimeError):
    """A PSI run could not be carried out (a silo missing, failing or mismatched)."""


def ask_all(grid: Grid, requests: list[tuple[int, str, RecordDict]], timeout: float
             ) -> list[Message]:
    """Send one message per (node, type, content) and return the replies in the same order.

    Any silo's error or silence stops the job with a message naming the step.
    """
    nodes = [node for node, _, _ in requests]
    if len(set(nodes)) != len(nodes):
        raise ValueError("one message per node per exchange")
    messages = [Message(content=content, message_type=f"query.{kind}", dst_node_id=node)
                for node, kind, content in requests]
    by_node = {reply.metadata.src_node_id: reply
               for reply in grid.send_and_receive(messages, timeout=timeout)}
    out = [by_node.get(node) for node in nodes]
    for (node, kind, _), reply in zip(requests, out, strict=True):
        if reply is None:
            raise PsiJobError(f"{kind}: node {node} did not answer within {timeout:.0f}s")
        if reply.has_error():
            raise PsiJobError(f"{kind} failed on a silo: {reply.error.reason}")
    return out  # type: ignore[return-value]


def ask_one(grid: Grid, node_id: int, kind: str, content: RecordDict, timeout: float) -> Message:
    """:func:`ask_all` for a single node."""
    (reply,) = ask_all(grid, [(node_id, kind, content)], timeout)
    return reply


def describe_silos(grid: Grid, timeout: float) -> dict[str, tuple[int, ConfigRecord]]:
    """``{silo name: (node id, its description)}`` for every connected node."""
    nodes = list(grid.get_node_ids())
    messages = [Message(content=RecordDict(), message_type="query.describe", dst_node_id=n)
                for n in nodes]
    out: dict[str, tuple[int, ConfigRecord]] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise PsiJobError(f"a silo could not describe itself: {reply.error.reason}")
        record = reply.content["silo"]
        out[str(record["name"])] = (reply.metadata.src_node_id, record)
    return out


def run_psi(grid: Grid, cfg: TrainConfig) -> dict[str, object]:
    """Relay one PSI session between ``cfg.psi_receiver`` and ``cfg.psi_sender``."""
    started = time.perf_counter()
    silos = describe_silos(grid, cfg.round_timeout)
    for role, name in (("receiver", cfg.psi_receiver), ("sender", cfg.psi_sender)):
        if name not in silos:
            raise ConfigError(f"psi-{role} {name!r} is not in the federation "
                              f"(silos: {', '.join(sorted(silos))})")
    r_node, r_desc = silos[cfg.psi_receiver]
    s_node, s_desc = silos[cfg.psi_sender]
    key = (str(r_desc["key-domain"]), int(r_desc["key-version"]))
    if key != (str(s_desc["key-domain"]), int(s_desc["key-version"])):
        raise PsiJobError(
            f"{cfg.psi_receiver} uses key domain {r_desc['key-domain']!r} v{r_desc['key-version']} "
            f"but {cfg.psi_sender} uses {s_desc['key-domain']!r} v{s_desc['key-version']}: "
            "their pseudonyms cannot match; re-key both silos to the active version")
    session = secrets.token_hex(16)
    base = {"session": session, "key-domain": key[0], "key-version": key[1],
            "mode": cfg.psi_mode}

    log(INFO, "fedprofile: PSI session %s: %s (receiver) x %s (sender), %s mode",
        session[:8], cfg.psi_receiver, cfg.psi_sender, cfg.psi_mode)
    request = ask_one(grid, r_node, "psi_request", RecordDict(
        {"config": ConfigRecord({**base, "selection": cfg.psi_selection})}), cfg.round_timeout)
    a = request.content["blinded"]["a"]
    response = ask_one(grid, s_node, "psi_respond", RecordDict(
        {"config": ConfigRecord({**base, "selection": "all"}),
         "blinded": ArrayRecord({"a": a})}), cfg.round_timeout)
    blinded = response.content["blinded"]
    ask_one(grid, r_node, "psi_finish", RecordDict(
        {"config": ConfigRecord({**base, "audience": cfg.psi_audience}),
         "blinded": ArrayRecord({"b": blinded["b"], "ab": blinded["ab"]})}), cfg.round_timeout)
    sizes = {"receiver_size": int(a.shape[0]), "sender_size": int(blinded["b"].shape[0])}
    log(INFO, "fedprofile: PSI done: the server saw %d and %d blinded values (set sizes only)",
        sizes["receiver_size"], sizes["sender_size"])
    return {"session": session, "receiver": cfg.psi_receiver, "sender": cfg.psi_sender,
            "mode": cfg.psi_mode, "selection": cfg.psi_selection, "key_domain": key[0],
            "key_version": key[1], "audience": cfg.psi_audience, **sizes,
            "seconds": time.perf_counter() - started,
            "server_learned": "set sizes only"}
