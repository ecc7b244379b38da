"""Vertical learning on the synthetic platform (SIMULATION ONLY).

Task (case-1-like): for customers shared by the lines, predict whether a
customer buys a data pack in the next horizon (label: the datapacks silo's
``y``), from the datapacks silo's own features plus the flights (and hotels)
silos' features, trained with :mod:`fedprofile.models.split_learning`.

Alignment here is SIMULATION-ONLY: rows are joined in one process on the
``phone_pn`` pseudonyms, which every line in one key domain shares. In the
real protocol this join is the PSI output (the aligned intersection in a
shared order) and no party sees another's keys; only the row order is shared.

Train/test are out-of-time exactly as :func:`fedprofile.client.features.load_silo_data`
builds them (train snapshot at end - 2*horizon, test at end - horizon), with
each snapshot aligned on its own eligible rows.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fedprofile.client.features import FeatureSet, SiloData, load_silo_data
from fedprofile.client.store import SiloStore
from fedprofile.models.metrics import roc_auc
from fedprofile.models.split_learning import VerticalConfig, predict_vertical, train_vertical

__all__ = ["AlignedSplit", "load_aligned", "compare_vertical", "format_table"]

LABEL_LINE = "datapacks"
DEFAULT_FEATURE_LINES: tuple[str, ...] = ("flights", "hotels")


@dataclasses.dataclass(frozen=True)
class AlignedSplit:
    """Blocks of one snapshot for the aligned rows: ``blocks[line]`` and the label."""

    blocks: dict[str, np.ndarray]
    y: np.ndarray
    phones: np.ndarray  # simulation-only join key, kept for inspection


def _phone_of(store: SiloStore) -> dict[str, str]:
    """customer_key -> phone_pn (SIMULATION-ONLY: the stand-in for PSI alignment)."""
    rows = store.execute("SELECT customer_key, phone_pn FROM customers WHERE phone_pn IS NOT NULL").fetchall()
    counts: dict[str, int] = {}
    for _key, phone in rows:
        counts[phone] = counts.get(phone, 0) + 1
    return {key: phone for key, phone in rows if counts[phone] == 1}  # ambiguous phones dropped


def _align(sets: dict[str, FeatureSet], phones: dict[str, dict[str, str]]) -> AlignedSplit:
    index: dict[str, dict[str, int]] = {}
    for line, fs in sets.items():
        mapping = phones[line]
        index[line] = {mapping[c]: i for i, c in enumerate(fs.customer_ids) if c in mapping}
    common = sorted(set.intersection(*(set(ix) for ix in index.values())))
    blocks = {line: sets[line].x[[index[line][p] for p in common]] for line in sets}
    label_rows = [index[LABEL_LINE][p] for p in common]
    return AlignedSplit(blocks, sets[LABEL_LINE].y[label_rows].astype(np.float32),
                        np.array(common, dtype=object))


def load_aligned(silos_dir: Path, feature_lines: Sequence[str] = DEFAULT_FEATURE_LINES,
                 horizon_days: int = 90, as_of: str = "") -> tuple[AlignedSplit, AlignedSplit]:
    """Train and test snapshots of datapacks ∩ feature lines, aligned on phone pseudonyms.

    ``as_of`` empty: each silo's own end of data (the lines of one platform end
    on the same day, so their snapshots coincide).
    """
    lines = (LABEL_LINE, *feature_lines)
    data: dict[str, SiloData] = {}
    phones: dict[str, dict[str, str]] = {}
    for line in lines:
        with SiloStore.open(Path(silos_dir) / line) as store:
            data[line] = load_silo_data(store, horizon_days, as_of)
            phones[line] = _phone_of(store)
    as_ofs = {(d.train.as_of, d.test.as_of) for d in data.values()}
    if len(as_ofs) != 1:
        raise ValueError(f"silos' snapshots differ ({sorted(as_ofs)}): pass as_of explicitly")
    train = _align({line: data[line].train for line in lines}, phones)
    test = _align({line: data[line].test for line in lines}, phones)
    return train, test


def _build_silos(platform_dir: Path, work: Path) -> Path:
    from fedprofile.demo import build_silos, demo_keys

    keyring, secret = demo_keys(work)  # a throwaway key domain in the temporary folder
    out = work / "silos"
    build_silos(platform_dir, out, keyring, secret, progress=lambda _m: None)
    return out


def compare_vertical(path: Path, feature_lines: Sequence[str] = DEFAULT_FEATURE_LINES,
                     horizon_days: int = 90, as_of: str = "",
                     noise_levels: Sequence[float] = (1.0, 4.0),
                     cfg: VerticalConfig = VerticalConfig(),
                     seeds: Sequence[int] = (0, 1, 2),
                     say: Callable[[str], None] = print) -> dict[str, object]:
    """Test AUC of: label silo alone, each feature silo alone, joint, joint+DP, pooled oracle.

    ``path``: a silos directory (one store per line) or a generated platform
    directory (holding ``silos/`` CSVs; ingested into a temporary silo set with a
    throwaway key domain). Each AUC is the mean over ``seeds`` (the std is kept
    too). For each noise level two DP rows: label DP only (gradients noised,
    embeddings clipped), and both directions noised with the same multiplier.
    Scores of the test rows are computed from released (noised) embeddings,
    as a deployment would.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="fedprofile-vertical-") as tmp:
        silos_dir = path
        if not (path / LABEL_LINE / "store.sqlite").exists():
            silos_dir = _build_silos(path, Path(tmp))
        train, test = load_aligned(silos_dir, feature_lines, horizon_days, as_of)
    feats = list(feature_lines)

    def run(lines: Sequence[str], label_block: int | None, noise: float = 0.0,
            pooled: bool = False, embedding_noise: float | None = None) -> tuple[float, float, dict[str, float]]:
        tr = [train.blocks[line] for line in lines]
        te = [test.blocks[line] for line in lines]
        if pooled:
            tr, te = [np.concatenate(tr, axis=1)], [np.concatenate(te, axis=1)]
        aucs, privacy = [], {}
        for seed in seeds:
            c = dataclasses.replace(cfg, seed=seed, label_block=label_block,
                                    noise_embedding=noise if embedding_noise is None
                                    else embedding_noise, noise_gradient=noise)
            result = train_vertical(tr, train.y, c)
            aucs.append(roc_auc(test.y, predict_vertical(result, te)))
            privacy = {"eps_embedding": result.privacy.embedding_epsilon,
                       "eps_gradient": result.privacy.gradient_epsilon}
        return float(np.mean(aucs)), float(np.std(aucs)), privacy

    rows: list[dict[str, object]] = []

    def add(name: str, *args: object, **kwargs: object) -> None:
        mean, std, privacy = run(*args, **kwargs)  # type: ignore[arg-type]
        rows.append({"model": name, "auc": mean, "auc_std": std, **privacy})

    add(f"label silo alone ({LABEL_LINE})", [LABEL_LINE], 0)
    for line in feats:
        add(f"feature silo alone ({line})", [line], None)
    add("joint (no noise)", [LABEL_LINE, *feats], 0)
    for sigma in noise_levels:
        add(f"joint + label DP sigma={sigma:g}", [LABEL_LINE, *feats], 0, noise=sigma,
            embedding_noise=0.0)
    for sigma in noise_levels:
        add(f"joint + DP both ways sigma={sigma:g}", [LABEL_LINE, *feats], 0, noise=sigma)
    add("pooled oracle", [LABEL_LINE, *feats], 0, pooled=True)

    out: dict[str, object] = {
        "feature_lines": feats, "n_train": int(len(train.y)), "n_test": int(len(test.y)),
        "positive_rate_train": float(train.y.mean()) if len(train.y) else 0.0,
        "positive_rate_test": float(test.y.mean()) if len(test.y) else 0.0,
        "delta": cfg.delta, "rounds": cfg.rounds, "neighbouring": cfg.neighbouring,
        "rows": rows,
    }
    say(format_table(out))
    return out


def format_table(out: dict[str, object]) -> str:
    lines = [f"vertical learning: label={LABEL_LINE}, features={'+'.join(out['feature_lines'])}; "  # type: ignore[arg-type]
             f"aligned rows train {out['n_train']:,} (pos {out['positive_rate_train']:.1%}), "
             f"test {out['n_test']:,} (pos {out['positive_rate_test']:.1%}); "
             f"{out['neighbouring']}, delta={out['delta']:g}, {out['rounds']} rounds",
             f"{'model':38s} {'test AUC':>14s} {'eps emb':>8s} {'eps grad':>8s}"]
    for row in out["rows"]:  # type: ignore[attr-defined]
        def eps(v: object) -> str:
            return "-" if v is None else ("inf" if v == float("inf") else f"{v:.2f}")
        lines.append(f"{row['model']:38s} {row['auc']:.3f} ± {row['auc_std']:.3f}   "
                     f"{eps(row.get('eps_embedding')):>8s} {eps(row.get('eps_gradient')):>8s}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import sys

    compare_vertical(Path(sys.argv[1]))
