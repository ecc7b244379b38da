"""Local training throughput with DP-SGD (Opacus) vs without, side by side.

Run: ``.venv/bin/python benchmarks/bench_dp.py [--rows N] [--epochs E] [--repeats R] [--threads T]``

For every model the project ships (today: the propensity MLP,
``fedprofile.models.propensity.build_model``), on random data of the real
feature width (``fedprofile.client.features.N_FEATURES``), it measures
samples/s of one training loop, the loop of
``fedprofile.models.training.train_local`` (Adam, BCE-with-logits, a
``DataLoader`` over a ``TensorDataset``, loss read back every step):

* non-DP: that loop as ``train_local`` runs it (shuffled batches);
* DP: the same loop after ``PrivacyEngine().make_private(...)`` with Poisson
  sampling, noise multiplier 1.0 and clip norm 1.0, once for each of Opacus's
  per-sample-gradient modes: ``hooks`` (default), ``ew`` (expanded weights),
  ``functorch`` and ``ghost`` (ghost clipping: it needs the criterion passed
  to ``make_private`` and the loop must use the wrapped criterion it returns);

at batch sizes 256 (the project's) and 1024. Each trial trains a fresh model
for ``--epochs`` epochs after a short unmeasured warm-up; trials of all
variants are interleaved and repeated, so that drift of the machine affects
every variant alike. Samples are the rows actually processed (Poisson batches
vary in size).

Throughput is samples per *CPU* second of this process (``time.process_time``),
with torch on one thread, and the figure compared is the *best* trial of each
variant (the least disturbed one, as ``timeit`` advises), with the median
beside it: on a small machine shared with other work (a test suite, other
silos) wall-clock time partly measures the neighbours, and even CPU time is
bimodal at batch 1024 (the 229 kB batch tensors straddle glibc's adaptive
mmap threshold, so some trials page-fault on every batch). Before timing, a
no-noise check confirms every mode computes the same clipped gradient.

The project target is DP >= 0.5x non-DP throughput; the table prints each
ratio and whether the target is met, and the script recommends the DP mode
that is fastest at the project's batch size (``TrainParams().batch_size``),
naming the fastest at the other batch size too.
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
from fedprofile.models.training import TrainParams

MODES = ("hooks", "ew", "functorch", "ghost")
PROJECT_BATCH = TrainParams().batch_size  # 256
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
    cpu: float
    wall: float

    @property
    def sps(self) -> float:  # per CPU second
        return self.samples / self.cpu

    @property
    def wall_sps(self) -> float:
        return self.samples / self.wall


def make_private(model: nn.Module, optimiser: torch.optim.Optimizer, criterion: nn.Module,
                 loader: DataLoader, mode: str, noise_multiplier: float = NOISE_MULTIPLIER,
                 max_grad_norm: float = MAX_GRAD_NORM, poisson_sampling: bool = True):
    """``make_private`` as a ClientApp would call it: returns (model, optimiser, criterion, loader)."""
    kwargs = dict(module=model, optimizer=optimiser, data_loader=loader,
                  noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                  poisson_sampling=poisson_sampling, grad_sample_mode=mode)
    if mode == "ghost":
        # Ghost clipping needs the criterion; its wrapper's backward() runs the
        # two backward passes (per-sample norms, then the clipped gradient).
        return PrivacyEngine().make_private(criterion=criterion, **kwargs)
    model, optimiser, loader = PrivacyEngine().make_private(**kwargs)
    return model, optimiser, criterion, loader


def setup(make_model: Callable[[], nn.Module], data: TensorDataset, batch_size: int, seed: int,
          mode: str | None):
    """Model, Adam, BCE-with-logits and a shuffled loader as in ``train_local``; DP-wrapped unless mode is None."""
    torch.manual_seed(seed)
    model = make_model()
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    criterion = nn.BCEWithLogitsLoss()
    loader = DataLoader(data, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    if mode is not None:
        model, optimiser, criterion, loader = make_private(model, optimiser, criterion, loader, mode)
    model.train()
    return model, optimiser, criterion, loader


def train_epoch(model, optimiser, criterion, loader, limit: int | None = None) -> int:
    """One epoch of ``train_local``'s loop body; returns the rows processed."""
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
    return seen


def trial(make_model, data: TensorDataset, batch_size: int, epochs: int, seed: int,
          mode: str | None, warmup_steps: int = 5) -> Trial:
    parts = setup(make_model, data, batch_size, seed, mode)
    train_epoch(*parts, limit=warmup_steps)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    seen = sum(train_epoch(*parts) for _ in range(epochs))
    return Trial(seen, time.process_time() - cpu0, time.perf_counter() - wall0)


def same_clipped_gradient(make_model: Callable[[], nn.Module], x: np.ndarray, y: np.ndarray) -> dict[str, str]:
    """Sanity check: with no noise, every mode must produce the same clipped, averaged gradient."""
    xs, ys = torch.from_numpy(x[:512]) * 3, torch.from_numpy(y[:512])  # * 3: most rows get clipped
    grads: dict[str, torch.Tensor | str] = {}
    for mode in MODES:
        try:
            model = make_model()
            optimiser = torch.optim.SGD(model.parameters(), lr=0.0)
            loader = DataLoader(TensorDataset(xs, ys), batch_size=len(ys))
            model, optimiser, criterion, loader = make_private(
                model, optimiser, nn.BCEWithLogitsLoss(), loader, mode,
                noise_multiplier=0.0, max_grad_norm=0.1, poisson_sampling=False)
            xb, yb = next(iter(loader))
            optimiser.zero_grad(set_to_none=True)
            criterion(model(xb), yb).backward()
            optimiser.step()
            grads[mode] = torch.cat([p.grad.flatten() for p in model.parameters()])
        except Exception as exc:  # noqa: BLE001 - report, do not abort the benchmark
            grads[mode] = f"failed: {type(exc).__name__}"
    ref = grads.get("hooks")
    out = {}
    for mode, g in grads.items():
        if isinstance(g, str):
            out[mode] = g
        elif not isinstance(ref, torch.Tensor):
            out[mode] = "no reference"
        else:
            out[mode] = f"{float((g - ref).abs().max()):.1e}"
    return out


def bench_model(name: str, make_model: Callable[[], nn.Module], x: np.ndarray, y: np.ndarray,
                epochs: int, repeats: int) -> dict[tuple[int, str], list[Trial] | str]:
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    small = TensorDataset(*(t[:8192] for t in data.tensors))
    results: dict[tuple[int, str], list[Trial] | str] = {}
    variants: list[str | None] = [None, *MODES]
    for bs in BATCH_SIZES:
        # Warm-up (not measured): first calls, allocator; a mode that fails is found here.
        for mode in variants:
            key = (bs, mode or "non-DP")
            try:
                trial(make_model, small, bs, 1, 0, mode)
                results[key] = []
            except Exception as exc:  # noqa: BLE001 - report, do not abort the benchmark
                results[key] = f"failed: {type(exc).__name__}: {exc}".splitlines()[0][:120]
        for rep in range(repeats):
            for mode in variants:
                slot = results[(bs, mode or "non-DP")]
                if not isinstance(slot, str):
                    slot.append(trial(make_model, data, bs, epochs, rep, mode))
            print(f"    {name}: batch {bs}, repeat {rep + 1}/{repeats} done", flush=True)
    return results


def report(name: str, results: dict[tuple[int, str], list[Trial] | str],
           rows: int) -> dict[int, dict[str, float]]:
    """Print the table; return {batch size: {mode: DP/non-DP ratio}}."""
    ratios: dict[int, dict[str, float]] = {}
    print(f"\n{name}: {rows:,} rows x {N_FEATURES} features; DP = noise {NOISE_MULTIPLIER}, "
          f"clip {MAX_GRAD_NORM}, Poisson sampling; samples per CPU-second, best and median "
          f"of {min((len(v) for v in results.values() if not isinstance(v, str)), default=0)} trials")
    print(f"{'batch':>5}  {'variant':<10} {'best':>9} {'median':>9} {'wall (median)':>13} "
          f"{'DP/non-DP (best)':>16} {'(median)':>8}  target >= {TARGET_RATIO}x")
    for bs in BATCH_SIZES:
        base_slot = results[(bs, "non-DP")]
        if isinstance(base_slot, str):
            print(f"{bs:>5}  {'non-DP':<10} {base_slot}")
            continue
        base = max(t.sps for t in base_slot)
        base_med = statistics.median(t.sps for t in base_slot)
        ranked = []
        for variant in ("non-DP", *MODES):
            slot = results[(bs, variant)]
            if isinstance(slot, str):
                print(f"{bs:>5}  {variant:<10} {slot}")
                continue
            sps = max(t.sps for t in slot)
            med = statistics.median(t.sps for t in slot)
            wall = statistics.median(t.wall_sps for t in slot)
            ratio = sps / base
            verdict = "" if variant == "non-DP" else ("met" if ratio >= TARGET_RATIO else "NOT met")
            print(f"{bs:>5}  {variant:<10} {sps:>9,.0f} {med:>9,.0f} {wall:>13,.0f} {ratio:>16.2f} "
                  f"{med / base_med:>8.2f}  {verdict}")
            if variant != "non-DP":
                ranked.append((ratio, variant))
                ratios.setdefault(bs, {})[variant] = ratio
        if ranked:
            ratio, mode = max(ranked)
            print(f"{bs:>5}  fastest DP mode: {mode} ({ratio:.2f}x non-DP, target "
                  f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})")
    return ratios


def recommend(ratios: dict[int, dict[str, float]]) -> list[str]:
    """Lines recommending the fastest DP mode at the project's batch size, with the margins."""
    lines = []
    for bs in sorted(ratios, key=lambda b: (b != PROJECT_BATCH, b)):
        ranked = sorted(ratios[bs].items(), key=lambda kv: kv[1], reverse=True)
        order = ", ".join(f"{m} {r:.2f}x" for m, r in ranked)
        best, ratio = ranked[0]
        target = f"target {TARGET_RATIO}x {'met' if ratio >= TARGET_RATIO else 'NOT met'}"
        if bs == PROJECT_BATCH:
            lines.append(f"{best!r}: fastest at batch {bs} (the project's): {order}; {target}")
        else:
            lines.append(f"  at batch {bs} the fastest is {best!r}: {order}; {target}")
    return lines or ["none: no DP mode ran"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=1, help="measured epochs per trial")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1, as a simulated ClientApp gets "
                             "1 CPU; 0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        # One thread by default: on a small shared box OpenMP's threads spin
        # against other processes, and a step of this tiny MLP slows 10-50x.
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG turned off.*")
    # Opacus's hooks fire on module outputs since the inputs need no grad: expected, harmless.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")

    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.rows, N_FEATURES), dtype=np.float32)
    y = (rng.random(args.rows) < 0.2).astype(np.float32)

    print(f"torch {torch.__version__}, opacus {opacus.__version__}, {platform.python_implementation()} "
          f"{platform.python_version()}, {torch.get_num_threads()} torch thread(s), "
          f"{args.epochs} epoch(s) per trial, {args.repeats} repeats", flush=True)
    all_ratios: dict[str, dict[int, dict[str, float]]] = {}
    for name, make_model in MODELS.items():
        t0 = time.perf_counter()
        checks = same_clipped_gradient(make_model, x, y)
        print(f"  {name}: no-noise clipped gradient, max |diff| vs hooks: "
              + ", ".join(f"{m} {v}" for m, v in checks.items()), flush=True)
        results = bench_model(name, make_model, x, y, args.epochs, args.repeats)
        all_ratios[name] = report(name, results, args.rows)
        print(f"({time.perf_counter() - t0:.0f}s)")
    print()
    for name, ratios in all_ratios.items():
        first, *rest = recommend(ratios)
        print(f"Recommended grad_sample_mode for {name}: {first}")
        for line in rest:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
