"""Stopping a process tree reaches descendants in other sessions, and nothing else."""

from __future__ import annotations

import subprocess
import time

from fedprofile.server.processes import snapshot, terminate_tree, tree


def _live(pid: int) -> bool:
    info = snapshot().get(pid)
    return info is not None and not info.state.startswith("Z")


def test_terminate_tree_reaches_a_child_in_its_own_session() -> None:
    # bash -> (setsid) sleep in a new session, like Flower's SuperLink -> SuperExec
    parent = subprocess.Popen(["bash", "-c", "setsid sleep 300 & sleep 300 & wait"])
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        deadline = time.monotonic() + 10
        while len(tree(parent.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        members = tree(parent.pid)
        assert len(members) == 3, members
        table = snapshot()
        assert len({table[p].pgid for p in members}) == 2, "the setsid child has its own group"

        terminate_tree(parent.pid, timeout=5)
        parent.wait(timeout=5)
        assert not [p for p in members if _live(p)]
        assert _live(bystander.pid), "an unrelated process must not be touched"
    finally:
        bystander.kill()
        bystander.wait()
        if parent.poll() is None:
            parent.kill()


def test_snapshot_keeps_whole_command_lines_whatever_columns_says(monkeypatch) -> None:
    # `fedprofile superlink stop` finds the SuperLink by the `--port` near the end of its line
    monkeypatch.setenv("COLUMNS", "40")
    marker = "x" * 150 + "-end-of-line"
    proc = subprocess.Popen(["bash", "-c", "sleep 300; : " + marker])
    try:
        deadline = time.monotonic() + 10
        while proc.pid not in snapshot() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert snapshot()[proc.pid].args.endswith(marker)
    finally:
        proc.kill()
        proc.wait()
