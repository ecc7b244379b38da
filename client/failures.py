"""What a silo tells the server when its ClientApp fails, and what it keeps to itself.

Flower turns an exception raised in a ClientApp into an error reply whose
reason is the exception's text. Two problems with sending that as it is:

* the server cannot tell *which* silo failed: a silo that fails in its first
  round never named itself;
* an exception raised inside a library (numpy, torch, sqlite) may quote the
  data it choked on, and that text would cross the silo boundary.

:func:`silo_failure_mod` therefore wraps every handler. A failure is logged in
full (traceback included) on the silo's own host, and the server gets one
line: the silo's name, the exception's type, and its message only when the
exception is one of fedprofile's own (:func:`is_own_error`), whose messages are
written to name files, fields and counts, never a customer's data. Any other
exception is reported by type, with a pointer to the silo's log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Message
from flwr.common.logger import log

_PACKAGE = "fedprofile"


class SiloError(ValueError):
    """A silo cannot serve a request with its local data or state; the message says why."""


class SiloFailed(RuntimeError):
    """The one-line reason a silo sends the server when a handler failed."""


def is_own_error(err: BaseException) -> bool:
    """True for exceptions defined by fedprofile, whose messages are safe to send."""
    return type(err).__module__.split(".")[0] == _PACKAGE


def public_reason(silo: str, err: BaseException) -> str:
    """``silo NAME: Type: message`` for fedprofile's errors, ``silo NAME: Type`` otherwise."""
    kind = type(err).__name__
    if is_own_error(err):
        text = " ".join(str(err).split())
        return f"silo {silo}: {kind}: {text}" if text else f"silo {silo}: {kind}"
    return f"silo {silo}: {kind} (the message stays on the silo; see its ClientApp log)"


def _silo_name(context: Context) -> str:
    from .node import resolve_silo_dir

    try:
        return resolve_silo_dir(context).name
    except Exception:  # noqa: BLE001 - the node config itself may be what is wrong
        return f"of node {context.node_id} (no silo in its node config)"


def silo_failure_mod(msg: Message, context: Context,
                     call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower ClientApp mod: a failed handler names its silo and keeps its data at home."""
    try:
        return call_next(msg, context)
    except Exception as err:
        silo = _silo_name(context)
        log(logging.ERROR, "silo %s: %s failed", silo, msg.metadata.message_type, exc_info=err)
        raise SiloFailed(public_reason(silo, err)) from None
