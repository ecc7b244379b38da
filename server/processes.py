"""Stopping a process and everything it started, and nothing else.

Flower's SuperLink starts a SuperExec in a session of its own, which starts the
simulation process, which starts Ray's workers. Signalling one process group
therefore misses some of them. So the whole tree is snapshotted first (children
are re-parented once their parent dies, and would be lost), then terminated
politely, then killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    pgid: int
    state: str
    args: str


def snapshot() -> dict[int, ProcessInfo]:
    """Every process on the machine (``ps`` works on Linux and macOS alike).

    ``-ww``: without it ``ps`` cuts each command line to ``$COLUMNS`` when
    that is set (pytest-xdist's workers set 80), and a SuperLink's ``--port``
    falls off the end of its line.
    """
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,pgid=,stat=,args="],
                         capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        parts = line.split(None, 4)
        if len(parts) < 4:
            continue
        pid, ppid, pgid, state = int(parts[0]), int(parts[1]), int(parts[2]), parts[3]
        table[pid] = ProcessInfo(pid, ppid, pgid, state, parts[4] if len(parts) > 4 else "")
    return table


def tree(root: int, table: dict[int, ProcessInfo] | None = None) -> list[int]:
    """``root`` and all its live descendants, parents before children."""
    table = snapshot() if table is None else table
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    order, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        if pid in table and not table[pid].state.startswith("Z"):
            order.append(pid)
        queue.extend(children.get(pid, []))
    return order


def _alive(pids: list[int]) -> list[int]:
    table = snapshot()
    return [p for p in pids if p in table and not table[p].state.startswith("Z")]


def terminate_tree(root: int, timeout: float = 15.0) -> list[int]:
    """SIGTERM ``root``'s whole tree, wait up to ``timeout``, SIGKILL what remains.

    Returns the pids that were signalled. Never signals the caller's own group.
    """
    pids = tree(root)
    own = os.getpid()
    pids = [p for p in pids if p != own]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # children may have been born during shutdown: adopt them too
        for pid in list(pids):
            for child in tree(pid):
                if child not in pids and child != own:
                    pids.append(child)
                    _signal(child, signal.SIGTERM)
        if not _alive(pids):
            return pids
        time.sleep(0.2)
    for pid in _alive(pids):
        _signal(pid, signal.SIGKILL)
    return pids


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def managed_superlinks(port: str) -> list[ProcessInfo]:
    """Flower's managed local SuperLink(s) on ``port`` (what ``flwr run`` starts for ``:local:``)."""
    found = []
    for info in snapshot().values():
        args = info.args.split()
        if (any(a.endswith("flower-superlink") for a in args) and "--simulation" in args
                and "--port" in args and args[args.index("--port") + 1:][:1] == [port]
                and not info.state.startswith("Z")):
            found.append(info)
    return found
