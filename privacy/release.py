"""k-anonymous release of aggregate count tables (small-group suppression).

A table of customer counts by quasi-identifiers (region, age band, tier, ...)
can re-identify people: a group of 2 in "north / 80+ / platinum" nearly names
them (personal data under GDPR/PIPL). So every non-empty group under ``k_min``
is withheld, and since the total is published, while the withheld sum
(``total - sum(shown)``) is itself small the smallest shown group is withheld
too (complementary suppression, as in :mod:`fedprofile.client.segments`). All
withheld cells look alike, so the truly small one is not singled out.

Like the segment reports this is a disclosure-control policy on exact counts,
not a formal guarantee, and it is not counted in the privacy ledger.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["KAnonymousRelease", "ReleasedCell", "k_anonymous_counts", "release_check"]


def _check_k_min(k_min: int) -> int:
    # Same rule and message as fedprofile.client.segments._check_k_min; re-implemented
    # because importing it would pull Opacus/torch (via models.kmeans) into privacy/.
    if isinstance(k_min, bool) or not isinstance(k_min, numbers.Integral) or k_min < 1:
        raise ValueError(f"k_min must be an integer >= 1, got {k_min!r}")
    return int(k_min)


@dataclass(frozen=True)
class ReleasedCell:
    """One group; ``count`` is ``None`` when withheld. ``reason`` is for the silo's own
    audit and never output: naming the small cell would undo the complementary one."""

    key: tuple[str, ...]
    count: int | None
    suppressed: bool
    reason: str  # "" | "below k" | "complementary"


@dataclass(frozen=True)
class KAnonymousRelease:
    """A count table with every group under ``k_min`` customers withheld."""

    name: str
    quasi_identifiers: tuple[str, ...]
    k_min: int
    cells: tuple[ReleasedCell, ...]
    total: int
    smallest_group_before: int  # internal: below k_min it *is* a withheld count, never output

    @property
    def smallest_group_released(self) -> int | None:
        shown = [c.count for c in self.cells if c.count is not None]
        return min(shown) if shown else None

    @property
    def k_anonymity(self) -> int | None:
        """The k for which the shown table is k-anonymous (``None``: nothing shown)."""
        return self.smallest_group_released

    @property
    def suppressed_groups(self) -> int:
        return sum(c.suppressed for c in self.cells)

    @property
    def suppressed_customers(self) -> int:
        return self.total - sum(c.count for c in self.cells if c.count is not None)

    @property
    def total_released(self) -> int | None:
        """The total as published: ``None`` when 0 < total < k_min.

        When so few customers exist that everything is withheld, the total is
        itself the small group (with one group, exactly its count).
        """
        return None if 0 < self.total < self.k_min else self.total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: withheld counts are ``None`` and appear nowhere else.

        ``smallest_group_before`` and the per-cell reasons are left out (the
        first is a withheld count whenever anything was withheld).
        """
        total = self.total_released
        return {"name": self.name, "quasi_identifiers": list(self.quasi_identifiers),
                "k_min": self.k_min, "total": total, "k_anonymity": self.k_anonymity,
                "suppressed_groups": self.suppressed_groups,
                "suppressed_customers": None if total is None else self.suppressed_customers,
                "cells": [{"key": list(c.key), "count": c.count, "suppressed": c.suppressed}
                          for c in self.cells]}

    def to_text(self) -> str:
        """A plain-text table; every withheld count (and a small total) shows as ``"<k_min"``."""
        hidden = f"<{self.k_min}"
        header = [*self.quasi_identifiers, "Customers"]
        body = [[*c.key, hidden if c.count is None else f"{c.count:,}"] for c in self.cells]
        total = self.total_released
        body.append(["Total", *[""] * (len(header) - 2), hidden if total is None else f"{total:,}"])
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        fmt = "  ".join(f"{{:<{w}}}" if i < len(header) - 1 else f"{{:>{w}}}"
                        for i, w in enumerate(widths))
        lines = [f"{self.name or 'Customer counts'} (groups under {self.k_min} customers are not shown)",
                 fmt.format(*header), fmt.format(*("-" * w for w in widths)),
                 *(fmt.format(*r) for r in body)]
        if self.suppressed_groups:
            lines.append(f"{hidden}: withheld ({self.suppressed_groups} group(s)): under {self.k_min} "
                         "customers, or withheld so that such a group cannot be worked out from the total")
        return "\n".join(lines)


def k_anonymous_counts(rows: Sequence[Sequence[str]] | Iterable[tuple[str, ...]],
                       quasi_identifiers: Sequence[str], k_min: int,
                       name: str = "") -> KAnonymousRelease:
    """Count rows per quasi-identifier combination and withhold every group under ``k_min``.

    Only non-empty groups are released (an empty combination says nothing
    about anyone and listing all combinations would blow up). The total is
    published, so while the withheld groups' sum is > 0 and < ``k_min`` (with
    one withheld group: its exact count, by subtraction) the smallest shown
    group is withheld too (reason "complementary"); since a shown group has at
    least ``k_min`` customers one such step is enough. Cells are sorted by key.
    Values are compared as strings. An empty table gives ``smallest_group_before`` 0.
    """
    kk = _check_k_min(k_min)
    qis = tuple(str(q) for q in quasi_identifiers)
    if not qis or len(set(qis)) != len(qis):
        raise ValueError(f"quasi_identifiers must be non-empty and distinct, got {list(qis)}")
    counts: dict[tuple[str, ...], int] = {}
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not hasattr(row, "__len__"):
            raise ValueError(f"row {i} must be a sequence of {len(qis)} values, got {row!r}")
        if len(row) != len(qis):
            raise ValueError(f"row {i} has {len(row)} values, expected {len(qis)} ({', '.join(qis)})")
        key = tuple(str(v) for v in row)
        counts[key] = counts.get(key, 0) + 1
    shown = {k: n for k, n in counts.items() if n >= kk}
    reasons = {k: "below k" for k in counts if k not in shown}
    withheld = sum(counts[k] for k in reasons)
    while 0 < withheld < kk and shown:
        key = min(shown, key=lambda k: (shown[k], k))
        withheld += shown.pop(key)
        reasons[key] = "complementary"
    cells = tuple(ReleasedCell(k, shown.get(k), k in reasons, reasons.get(k, ""))
                  for k in sorted(counts))
    return KAnonymousRelease(name=name, quasi_identifiers=qis, k_min=kk, cells=cells,
                             total=sum(counts.values()),
                             smallest_group_before=min(counts.values(), default=0))


def release_check(counts: Mapping[tuple[str, ...] | str, int | None], k_min: int) -> dict[str, Any]:
    """Audit an artifact that is already out (A/B arm sizes, audience counts, per-silo counts).

    ``None`` marks a group the artifact already withheld; zero counts describe
    nobody, so neither counts as a group. Returns ``groups`` (shown non-empty
    groups), ``smallest_group``, ``below_k`` (keys, tuples joined with "/",
    of shown groups in (0, k_min)) and ``k_anonymous``. It cannot see a total
    the artifact may publish, so subtraction attacks are not checked here.
    """
    kk = _check_k_min(k_min)
    shown: dict[str, int] = {}
    for key, n in counts.items():
        label = "/".join(map(str, key)) if isinstance(key, tuple) else str(key)
        if n is None:
            continue
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"count of {label!r} must be a non-negative integer or None, got {n!r}")
        if n > 0:
            shown[label] = int(n)
    below = [k for k, n in shown.items() if n < kk]
    return {"groups": len(shown), "smallest_group": min(shown.values(), default=None),
            "below_k": below, "k_anonymous": not below}
