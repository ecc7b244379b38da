"""Local training throughput with DP-SGD (Opacus) vs without, side by side.

Run: ``.venv/bin/python benchmarks/bench_dp.py [--rows N] [--epochs E] [--repeats R]``

For every model the project ships (today: the propensity MLP,
``fedprofile.models.propensity.build_model``), on random data of the real
feature width (``fedprofile.client.features.N_FEATURES``), it measures
samples/s of:

* non-DP: ``fedprofile.models.training.train_local``, the loop every silo runs
  today (Adam, BCE-with-logits, shuffled batches);
* DP: the same loop after ``PrivacyEngine().make_private(...)`` with Poisson
  sampling, noise multiplier 1.0 and clip norm 1.0, once for each of Opacus's
  per-sample-gradient modes: ``hooks`` (default), ``ew`` (expanded weights),
  ``functorch`` and ``ghost`` (ghost clipping, which needs the criterion
  passed to ``make_private`` and uses the wrapped criterion it returns).

at batch sizes 256 (the project's) and 1024. Each trial trains a fresh model
for ``--epochs`` epochs after a short unmeasured warm-up; trials of all
variants are interleaved and repeated, and the median is reported, so that
drift of the machine affects every variant alike. Samples are counted as the
rows actually processed (Poisson batches vary in size). The project target is
DP >= 0.5x non-DP throughput; it prints each ratio, whether the target is
met, and the fastest DP mode.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import opacus
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedprofile.client.features import N_FEATURES
from fedprofile.models.propensity import build_model
from fedprofile.models.training import TrainParams, train_local

MODES = ("hooks", "ew", "functorch", "ghost")
BATCH_SIZES = (256, 1024)
TARGET_RATIO = 0.5
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
LEARNING_RATE = 0.01

# What the project ships: name -> builder of a fresh model.
MODELS: dict[str, Callable[[], nn.Module]] = {
    "propensity MLP (hidden=32)": lambda: build_model(N_FEATURES, hidden=32),
}


@dataclass
class Trial:
    samples: int
    seconds: float

    @property
    def sps(self) -> float:
        return self.samples / self.seconds


def run_plain(make_model: Callable[[], nn.Module], x: np.ndarray, y: np.ndarray,
              batch_size: int, epochs: int, seed: int) -> Trial:
    """The project's own loop, unchanged."""
    stats = train_local(make_model(), x, y, TrainParams(epochs=epochs, batch_size=batch_size,
                                                        learning_rate=LEARNING_RATE, seed=seed))
    return Trial(stats.examples, stats.seconds)


def make_private(model: nn.Module, loader: DataLoader, mode: str):
    """``make_private`` as the ClientApp would call it; returns (model, optimiser, criterion, loader)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    criterion = nn.BCEWithLogitsLoss()
    engine = PrivacyEngine()
    kwargs = dict(module=model, optimizer=optimiser, data_loader=loader,
                  noise_multiplier=NOISE_MULTIPLIER, max_grad_norm=MAX_GRAD_NORM,
                  poisson_sampling=True, grad_sample_mode=mode)
    if mode == "ghost":
        # Ghost clipping needs the criterion: it returns a wrapper whose
        # backward() runs the two backward passes (norms, then clipped grads).
        model, optimiser, criterion, loader = engine.make_private(criterion=criterion, **kwargs)
    else:
        model, optimiser, loader = engine.make_private(**kwargs)
    return model, optimiser, criterion, loader


def run_dp(make_model: Callable[[], nn.Module], data: TensorDataset, batch_size: int,
           epochs: int, seed: int, mode: str, warmup_steps: int = 0) -> Trial:
    """The same loop as ``train_local``, DP-SGD'd by Opacus in ``mode``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)
    model, optimiser, criterion, loader = make_private(make_model(), loader, mode)
    model.train()

    def one_epoch(limit: int | None) -> tuple[int, float]:
        seen, total = 0, 0.0
        for i, (xb, yb) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            optimiser.zero_grad(set_to_none=True)
            loss = criterion(model(xb), yb)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(yb)
            seen += len(yb)
        return seen, total

    if warmup_steps:
        one_epoch(warmup_steps)
    start = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        seen += one_epoch(None)[0]
    return Trial(seen, time.perf_counter() - start)


def bench_model(name: str, make_model: Callable[[], nn.Module], x: np.ndarray, y: np.ndarray,
                epochs: int, repeats: int) -> dict[tuple[int, str], list[Trial] | str]:
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    results: dict[tuple[int, str], list[Trial] | str] = {}
    variants = ["non-DP", *MODES]
    for bs in BATCH_SIZES:
        # Warm-up (not measured): first calls, allocator, and a mode that fails is found here.
        run_plain(make_model, x[: 8 * bs], y[: 8 * bs], bs, 1, 0)
        for mode in MODES:
            try:
                run_dp(make_model, TensorDataset(data.tensors[0][: 8 * bs], data.tensors[1][: 8 * bs]),
                       bs, 1, 0, mode)
                results[(bs, mode)] = []
            except Exception as exc:  # noqa: BLE001 - report, do not abort the benchmark
                results[(bs, mode)] = f"failed: {type(exc).__name__}: {exc}".splitlines()[0][:120]
        results[(bs, "non-DP")] = []
        for rep in range(repeats):
            for variant in variants:
                slot = results[(bs, variant)]
                if isinstance(slot, str):
                    continue
                if variant == "non-DP":
                    slot.append(run_plain(make_model, x, y, bs, epochs, rep))
                else:
                    slot.append(run_dp(make_model, data, bs, epochs, rep, variant, warmup_steps=5))
            print(f"    {name}: batch {bs}, repeat {rep + 1}/{repeats} done", flush=True)
    return results


def report(name: str, results: dict[tuple[int, str], list[Trial] | str], rows: int) -> dict[int, str | None]:
    best: dict[int, str | None] = {}
    print(f"\n{name}: {rows:,} rows x {N_FEATURES} features, noise {NOISE_MULTIPLIER}, "
          f"clip {MAX_GRAD_NORM}, Poisson sampling (median of repeats)")
    print(f"{'batch':>5}  {'variant':<10} {'samples/s':>11} {'min..max':>21} {'DP/non-DP':>9}  "
          f"target >= {TARGET_RATIO}x")
    for bs in BATCH_SIZES:
        base_trials = results[(bs, "non-DP")]
        base = statistics.median(t.sps for t in base_trials)
        spread = f"{min(t.sps for t in base_trials):,.0f}..{max(t.sps for t in base_trials):,.0f}"
        print(f"{bs:>5}  {'non-DP':<10} {base:>11,.0f} {spread:>21} {1.0:>9.2f}")
        ranked = []
        for mode in MODES:
            slot = results[(bs, mode)]
            if isinstance(slot, str):
                print(f"{bs:>5}  {mode:<10} {slot}")
                continue
            sps = statistics.median(t.sps for t in slot)
            spread = f"{min(t.sps for t in slot):,.0f}..{max(t.sps for t in slot):,.0f}"
            ratio = sps / base
            ranked.append((sps, mode))
            print(f"{bs:>5}  {mode:<10} {sps:>11,.0f} {spread:>21} {ratio:>9.2f}  "
                  f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}")
        best[bs] = max(ranked)[1] if ranked else None
        if ranked:
            sps, mode = max(ranked)
            print(f"{bs:>5}  fastest DP mode: {mode} ({sps / base:.2f}x non-DP: target "
                  f"{'met' if sps / base >= TARGET_RATIO else 'NOT met'})")
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=1, help="measured epochs per trial")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG turned off.*")
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.rows, N_FEATURES), dtype=np.float32)
    y = (rng.random(args.rows) < 0.2).astype(np.float32)

    print(f"torch {torch.__version__}, opacus {opacus.__version__}, {platform.python_implementation()} "
          f"{platform.python_version()}, {torch.get_num_threads()} torch threads, "
          f"{args.epochs} epoch(s) per trial, {args.repeats} repeats", flush=True)
    recommendation: dict[str, dict[int, str | None]] = {}
    for name, make_model in MODELS.items():
        t0 = time.perf_counter()
        results = bench_model(name, make_model, x, y, args.epochs, args.repeats)
        recommendation[name] = report(name, results, args.rows)
        print(f"({time.perf_counter() - t0:.0f}s)")
    print()
    for name, best in recommendation.items():
        print(f"Recommended grad_sample_mode for {name}: {best.get(256)} at batch 256 "
              f"(the project's), {best.get(1024)} at batch 1024")
    return 0


if __name__ == "__main__":
    sys.exit(main())
