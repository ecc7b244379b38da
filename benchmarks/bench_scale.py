"""A 100-silo, 10-round simulation on this machine: wall time and peak memory.

Run: ``.venv/bin/python benchmarks/bench_scale.py [--scenario scale]``

It runs the packaged ``scale`` scenario (20,000 people cut into 100 silos,
10 rounds, no DP and epsilon = 4, the membership audit and the
re-identification check) through ``fedprofile simulate``'s own code, and
prints the wall time of each stage and the peak resident memory of the whole
process tree (this process, Flower's simulation process and its Ray workers),
sampled twice a second from ``/proc``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from fedprofile.simulations.scenario import load_scenario, packaged_scenario
from fedprofile.simulations.simulate import run_scenario


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants (Linux /proc)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            parent[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, p in parent.items():
            if p == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(rss.get(pid, 0) for pid in tree)


class PeakMemory:
    """Samples the process tree's resident memory in the background; keeps the peak."""

    def __init__(self, interval: float = 0.5) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss_bytes(os.getpid()))
            self._stop.wait(interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="scale", help="packaged name or TOML file")
    args = parser.parse_args(argv)
    scenario = load_scenario(packaged_scenario(args.scenario))
    with tempfile.TemporaryDirectory(prefix="fedprofile-bench-") as tmp:
        out = Path(tmp) / "run"
        started = time.perf_counter()
        with PeakMemory() as memory:
            result = run_scenario(scenario, out, progress=lambda m: print(f"   {m}", flush=True))
        wall = time.perf_counter() - started
        timing = json.loads((out / "timing.json").read_text())
    points = timing["points"]
    print()
    print(f"scenario {scenario.name!r}: {scenario.platform.customers:,} people, "
          f"{len(result.results['silos'])} silos, {scenario.training.rounds} rounds, "
          f"{len(points)} federated runs, on {os.cpu_count()} cores")
    print(f"{'stage':<44} {'seconds':>8}")
    print(f"{'platform, silo cut and ingestion':<44} {timing['build_seconds']:>8.1f}")
    for name, seconds in points.items():
        print(f"{'federated run ' + name:<44} {seconds:>8.1f}")
    releases = timing["releases_seconds"]
    print(f"{'releases (segments, PSI, campaigns, checks)':<44} {releases:>8.1f}")
    rest = wall - timing["build_seconds"] - sum(points.values()) - releases
    print(f"{'audit, plots and report':<44} {rest:>8.1f}")
    print(f"{'total wall time':<44} {wall:>8.1f}")
    print(f"peak resident memory of the process tree: {memory.peak / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
