"""Segment reports for marketers, with small-group suppression, and local segment labels.

The numbers in a report are the federated k-means releases
(:mod:`fedprofile.models.kmeans`): centroids and noisy counts are already
differentially private, so nothing here costs privacy budget. Suppression is
a policy on top: a segment or a per-silo cell with fewer than ``k_min``
customers is not shown, because a group that small is close to describing
individuals (and its noisy mean and size are mostly noise anyway). It is not a
formal guarantee and is not counted in the ledger.

What is withheld
    * A segment whose rounded size is below ``k_min``: its size is shown as
      ``"<k_min"``, its centroid and all its per-silo cells are withheld (the
      cells would add up to the size).
    * A per-silo cell below ``k_min`` in a shown segment. The segment's noisy
      size is the sum of the silos' noisy counts, so the hidden cells' total
      can be recovered by subtraction; while that total is itself below
      ``k_min``, the smallest shown cell of the row is withheld too
      (complementary suppression).
      All withheld cells look the same (``"n/s"``) so that the small one is
      not singled out.

Counts are rounded to integers and never shown negative (noise can make a
small count negative); suppression is decided on the rounded count, i.e. on
what would have been shown.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedprofile.models.kmeans import assign

__all__ = ["WITHHELD_CELL", "SegmentReport", "SegmentRow", "assign_segments", "segment_report"]

#: How a withheld per-silo cell is shown (the same for every reason it is withheld).
WITHHELD_CELL = "n/s"

Decoder = Callable[[np.ndarray], Mapping[str, float]]


@dataclass(frozen=True)
class SegmentRow:
    """One segment as shown: ``None`` marks a withheld value."""

    segment: int
    size: int | None
    centroid: dict[str, float] | None
    per_silo: dict[str, int | None]

    @property
    def suppressed(self) -> bool:
        return self.size is None


@dataclass(frozen=True)
class SegmentReport:
    """Segments with their sizes, per-silo sizes and profiles, small groups withheld."""

    rows: tuple[SegmentRow, ...]
    k_min: int
    silos: tuple[str, ...]
    suppressed_segments: int
    suppressed_cells: int
    complementary_cells: int

    def size_text(self, value: int | None) -> str:
        """A segment size as shown: the number, or ``"<k_min"`` when withheld."""
        return f"<{self.k_min}" if value is None else f"{value:,}"

    @staticmethod
    def cell_text(value: int | None) -> str:
        """A per-silo size as shown: the number, or ``"n/s"`` (not shown) when withheld.

        One marker for every withheld cell, not ``"<k_min"``: a complementary
        cell is not small, and marking which cell is the small one would hand
        back what the complement hides.
        """
        return WITHHELD_CELL if value is None else f"{value:,}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; withheld values are ``None``."""
        return {
            "k_min": self.k_min,
            "silos": list(self.silos),
            "suppressed_segments": self.suppressed_segments,
            "suppressed_cells": self.suppressed_cells,
            "complementary_cells": self.complementary_cells,
            "segments": [
                {"segment": r.segment, "size": r.size, "suppressed": r.suppressed,
                 "centroid": None if r.centroid is None else dict(r.centroid),
                 "per_silo": dict(r.per_silo)}
                for r in self.rows
            ],
        }

    def to_text(self) -> str:
        """Two plain-text tables: segment sizes (overall and per silo), then segment profiles."""
        lines = [
            f"Customer segments: {len(self.rows)} (sizes carry privacy noise; "
            f"groups under {self.k_min} customers are not shown)",
            f"Withheld: {self.suppressed_segments} segment(s), "
            f"{self.suppressed_cells} silo cell(s) ({self.complementary_cells} of them only "
            "so that another cannot be worked out)",
            "",
        ]
        header = ["Segment", "Size", *self.silos]
        body = [[str(r.segment), self.size_text(r.size),
                 *(self.cell_text(r.per_silo.get(s)) for s in self.silos)] for r in self.rows]
        lines += _table(header, body)
        if self.suppressed_cells:
            lines.append(f"{WITHHELD_CELL}: not shown (under {self.k_min} customers, "
                         "or it would let such a cell be worked out)")
        shown = [r for r in self.rows if r.centroid is not None]
        lines.append("")
        if not shown:
            lines.append("No segment profile can be shown.")
            return "\n".join(lines)
        features = list(shown[0].centroid or {})
        lines.append("Segment profiles (typical customer of each segment"
                     + ("; withheld segments omitted)" if len(shown) < len(self.rows) else ")"))
        header = ["Feature", *(f"Segment {r.segment}" for r in shown)]
        body = [[f, *(_number((r.centroid or {})[f]) for r in shown)] for f in features]
        lines += _table(header, body)
        return "\n".join(lines)


def _number(value: float) -> str:
    """Readable in feature units: thousands separators for large values, 3 decimals for fractions."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths)),
            *(fmt.format(*row) for row in body)]


def _check_k_min(k_min: int) -> int:
    if isinstance(k_min, bool) or not isinstance(k_min, (int, np.integer)) or k_min < 1:
        raise ValueError(f"k_min must be an integer >= 1, got {k_min!r}")
    return int(k_min)


def _rounded(name: str, counts: np.ndarray, k: int) -> np.ndarray:
    a = np.asarray(counts, dtype=np.float64)
    if a.shape != (k,):
        raise ValueError(f"{name} must have shape ({k},), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.maximum(np.rint(a), 0.0).astype(np.int64)


def _profile(centroid: np.ndarray, names: Sequence[str], decode: Decoder | None) -> dict[str, float]:
    if decode is None:
        return {n: float(v) for n, v in zip(names, centroid)}
    out = {str(n): float(v) for n, v in decode(centroid.copy()).items()}
    if not all(math.isfinite(v) for v in out.values()):
        raise ValueError("decode returned a non-finite value")
    return out


def segment_report(centroids: np.ndarray, noisy_counts: np.ndarray,
                   per_silo_counts: Mapping[str, np.ndarray] | None,
                   feature_names: Sequence[str], decode: Decoder | None = None,
                   k_min: int = 10) -> SegmentReport:
    """Build the report for ``k`` segments (see the module docstring for what is withheld).

    ``centroids`` is ``(k, d)`` in [0, 1] feature space, ``noisy_counts`` the
    merged noisy sizes, ``per_silo_counts`` each silo's noisy sizes (as
    released), ``feature_names`` the ``d`` profile features; ``decode`` maps a
    centroid to feature units (e.g. days, yuan), otherwise the [0, 1] values
    are shown under ``feature_names``.
    """
    kk_min = _check_k_min(k_min)
    cents = np.asarray(centroids, dtype=np.float64)
    if cents.ndim != 2 or not np.isfinite(cents).all():
        raise ValueError("centroids must be a finite (k, d) array")
    k, d = cents.shape
    names = [str(n) for n in feature_names]
    if len(names) != d or len(set(names)) != d:
        raise ValueError(f"feature_names must name each of the {d} features once")
    sizes = _rounded("noisy_counts", noisy_counts, k)
    cells = {str(s): _rounded(f"per_silo_counts[{s!r}]", c, k) for s, c in (per_silo_counts or {}).items()}
    silos = tuple(cells)

    rows: list[SegmentRow] = []
    suppressed_segments = suppressed_cells = complementary = 0
    for j in range(k):
        if sizes[j] < kk_min:
            suppressed_segments += 1
            suppressed_cells += len(silos)
            rows.append(SegmentRow(j, None, None, {s: None for s in silos}))
            continue
        shown: dict[str, int | None] = {s: int(cells[s][j]) for s in silos}
        hidden = [s for s in silos if cells[s][j] < kk_min]
        for s in hidden:
            shown[s] = None
        # The shown size minus the shown cells gives the hidden cells' total: hide
        # more cells (smallest first) until that total is itself not a small group.
        while hidden and sum(int(cells[h][j]) for h in hidden) < kk_min:
            rest = [s for s in silos if shown[s] is not None]
            if not rest:
                break
            smallest = min(rest, key=lambda s: (cells[s][j], silos.index(s)))
            shown[smallest] = None
            hidden.append(smallest)
            complementary += 1
        suppressed_cells += sum(v is None for v in shown.values())
        rows.append(SegmentRow(j, int(sizes[j]), _profile(cents[j], names, decode), shown))
    return SegmentReport(rows=tuple(rows), k_min=kk_min, silos=silos,
                         suppressed_segments=suppressed_segments,
                         suppressed_cells=suppressed_cells, complementary_cells=complementary)


def assign_segments(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Segment index of each of a silo's own customers (nearest centroid).

    Runs inside the silo on its own profile vectors with the published
    centroids; the labels name individual customers, so they stay in the silo
    (e.g. to build an audience) and are never sent to the server.
    """
    return assign(x, centroids)
