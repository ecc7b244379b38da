"""``fedprofile simulate``: one scenario, one run directory, one report a compliance team can sign.

The stages, in order (each shows progress):

1. generate the synthetic platform and cut it into the scenario's silos, with
   a held-out population per line (:mod:`.shards`);
2. the privacy-utility sweep: every model at every privacy level and seed, a
   real federated run each (:mod:`.sweep`);
3. the membership-inference audit of every propensity model (:mod:`.membership`);
4. the re-identification check of what leaves the silos (:mod:`.reidentification`),
   the marketing cases' audiences and campaigns included (:mod:`.case_releases`);
5. ``results.json``, CSV tables, plots and ``report.html`` (:mod:`.simulation_report`).

``results.json`` holds only numbers that follow from the scenario (no times,
no absolute paths), so running the same scenario twice gives the same file;
the timings are in ``timing.json``. DP noise is reproducible only here: the
simulator sets :data:`~fedprofile.models.dp.SIMULATION_NOISE_SEED_ENV` for its
own synthetic silos.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedprofile.client.store import SiloStore
from fedprofile.client.features import load_silo_data
from fedprofile.config import DEFAULT_PURPOSE, TrainConfig
from fedprofile.files import atomic_write_json, atomic_write_text
from fedprofile.models.dp import SIMULATION_NOISE_SEED_ENV
from fedprofile.privacy.keys import Keyring, Secret, generate_key_file
from fedprofile.privacy.ledger import ledger_key_from_file
from fedprofile.server.app import METRICS_FILE, MODEL_FILE

from .case_releases import case_release_rows
from .membership import attack_model, audit_sets, check_bounds, control_verdict
from .platform import PlatformConfig, generate_platform
from .reidentification import breakdown_rows, evaluation_rows, segment_rows
from .scenario import AuditViolation, Scenario
from .segment_run import run_segment_job
from .shards import Federation, cut_platform
from .simulation_plots import plot_audit, plot_utility
from .simulation_report import write_report
from .sweep import (UTILITY, PointResult, level_name, point_config, point_ledger, run_point,
                    smallest_epsilon_within, summarize)

RESULTS_FILE = "results.json"
KEY_FILE = "simulation.key"
KEYRING_FILE = "simulation.keyring"


@dataclass(frozen=True)
class SimulationResult:
    out_dir: Path
    results: dict[str, Any]
    report: Path
    violations: list[str]


@contextmanager
def _reproducible_noise(seed: int) -> Iterator[None]:
    """Let the simulated silos (processes started from here) draw reproducible DP noise."""
    old = os.environ.get(SIMULATION_NOISE_SEED_ENV)
    os.environ[SIMULATION_NOISE_SEED_ENV] = f"fedprofile-simulate-{seed}"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(SIMULATION_NOISE_SEED_ENV, None)
        else:
            os.environ[SIMULATION_NOISE_SEED_ENV] = old


def _claim(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty: simulate writes a fresh run directory")
    out_dir.mkdir(parents=True, exist_ok=True)


def _build(scenario: Scenario, work: Path, progress: Callable[[str], None]
           ) -> tuple[Federation, str, Path]:
    """Platform, keys and silos; returns the federation, the as-of date and the ledger key file."""
    platform = PlatformConfig(n_customers=scenario.platform.customers, seed=scenario.platform.seed)
    progress(f"generating the platform: {platform.n_customers:,} people, lines "
             f"{', '.join(platform.lines)}")
    generate_platform(platform, work / "platform")
    key_file = generate_key_file(work / "keys" / KEY_FILE)
    secret = Secret.from_key_file(key_file)
    # Synthetic data only: the pseudonym key follows from the scenario, so the stores (sorted
    # by pseudonym) and hence the training order are the same every time it is run.
    Keyring.create(work / "keys" / KEYRING_FILE, "simulation", secret,
                   initial_key=hashlib.sha256(f"fedprofile-simulate-{scenario.platform.seed}"
                                              .encode()).digest())
    progress(f"cutting it into {scenario.silos.count} silos")
    as_of = platform.end + dt.timedelta(days=1)
    horizon = TrainConfig().horizon_days
    # the training snapshot the ClientApps use for data ending at as_of (features.snapshot_times)
    train_time = dt.datetime.combine(as_of, dt.time()) - dt.timedelta(days=2 * horizon)
    federation = cut_platform(work / "platform", work / "federation", scenario.silos.count,
                              work / "keys" / KEYRING_FILE, secret,
                              holdout=scenario.silos.holdout, seed=scenario.platform.seed,
                              canaries=scenario.audit.canaries if scenario.audit.enabled else 0,
                              train_time=train_time, horizon_days=horizon, progress=progress)
    return federation, as_of.isoformat(), generate_key_file(work / "keys" / "ledger.key")


def _load(stores: list[Path], horizon_days: int, as_of: str) -> list:
    out = []
    for path in stores:
        with SiloStore.open(path) as store:
            out.append(load_silo_data(store, horizon_days, as_of))
    return out


def run_scenario(scenario: Scenario, out_dir: Path, progress: Callable[[str], None] = print,
                 source: str = "") -> SimulationResult:
    """Run every stage of ``scenario`` into ``out_dir`` (which must be new or empty).

    ``source`` is the scenario file's text, kept next to the results. Raises
    :class:`AuditViolation` *after* writing everything when an empirical
    privacy lower bound exceeds an accountant's epsilon.
    """
    out_dir = Path(out_dir)
    _claim(out_dir)
    started = time.perf_counter()
    if source:
        atomic_write_text(out_dir / "scenario.toml", source)
    atomic_write_json(out_dir / "scenario.json", scenario.to_dict())
    work = out_dir / "work"
    federation, as_of, ledger_key_file = _build(scenario, work, progress)
    silo_names = [s.name for s in federation.silos]
    horizon = TrainConfig().horizon_days
    members = _load(list(federation.silos), horizon, as_of)
    timing: dict[str, Any] = {"build_seconds": time.perf_counter() - started, "points": {}}

    levels = scenario.privacy_levels
    plan = [(m, e, s) for m in scenario.training.models for e in levels for s in scenario.seeds]
    points: list[PointResult] = []
    ledger_key = ledger_key_from_file(ledger_key_file)
    with _reproducible_noise(scenario.platform.seed):
        for i, (model, epsilon, seed) in enumerate(plan, 1):
            where = out_dir / "points" / model / level_name(epsilon) / f"seed-{seed}"
            where.mkdir(parents=True)
            ledger = None
            if epsilon is not None:
                ledger = point_ledger(where / "ledger.sqlite", ledger_key, silo_names,
                                      DEFAULT_PURPOSE[model], epsilon, scenario.dp.delta)
            cfg = point_config(scenario, model, epsilon, seed, federation.silos_dir,
                               where / "run", as_of, ledger,
                               ledger_key_file if ledger is not None else None)
            progress(f"[{i}/{len(plan)}] {model}, {level_name(epsilon)}, seed {seed}")
            point = run_point(cfg, members, progress=lambda _m: None)
            points.append(point)
            timing["points"][f"{model}/{level_name(epsilon)}/seed-{seed}"] = point.seconds
            shown = ", ".join(f"{k} {v:.3f}" for k, v in point.utility.items())
            spent = (f", epsilon spent {point.spent_epsilon:.3f}"
                     if point.spent_epsilon is not None else "")
            progress(f"        {shown}{spent} ({point.seconds:.0f}s)")

        # the segmentation's noise too: the segment report is part of the results
        releases_started = time.perf_counter()
        releases = _releases(scenario, federation, points, as_of, ledger_key_file, out_dir,
                             progress)
        timing["releases_seconds"] = time.perf_counter() - releases_started
    audits = _audit(scenario, federation, points, members, horizon, as_of, progress)
    violations = check_bounds(audits)
    rows = summarize(points, scenario.sweep.confidence)
    kept = [smallest_epsilon_within(rows, model, UTILITY[model][0], scenario.sweep.tolerance)
            for model in scenario.training.models]
    results: dict[str, Any] = {
        "scenario": scenario.to_dict(),
        "silos": silo_names,
        "as_of": as_of,
        "points": [_relative(p.to_dict(), out_dir) for p in points],
        "sweep": rows,
        "smallest_epsilon": kept,
        "audit": {"models": audits, "control": control_verdict(audits),
                  "violations": violations} if audits else None,
        "releases": releases,
    }
    results["summary"] = plain_summary(results, scenario)
    _write_outputs(out_dir, results, scenario)
    timing["total_seconds"] = time.perf_counter() - started
    atomic_write_json(out_dir / "timing.json", timing)
    report = write_report(out_dir, results)
    progress(f"report: {report}")
    for line in results["summary"]:
        progress(f"  {line}")
    if violations:
        raise AuditViolation("the membership audit contradicts the privacy accounting:\n  "
                             + "\n  ".join(violations))
    return SimulationResult(out_dir=out_dir, results=results, report=report, violations=violations)


def _relative(point: dict[str, Any], root: Path) -> dict[str, Any]:
    point = dict(point)
    point["run_dir"] = str(Path(point["run_dir"]).relative_to(root.resolve()))
    return point


def _audit(scenario: Scenario, federation: Federation, points: list[PointResult],
           members: list, horizon: int, as_of: str,
           progress: Callable[[str], None]) -> list[dict[str, Any]]:
    if not scenario.audit.enabled:
        return []
    sets = audit_sets(members, _load(list(federation.holdout.values()), horizon, as_of))
    for kind, data in sets.items():
        progress(f"membership-inference audit ({kind}): {len(data.member_y):,} members, "
                 f"{len(data.non_member_y):,} non-members")
    audits = []
    for point in (p for p in points if p.model == "propensity"):
        for kind, data in sets.items():
            attack = attack_model(Path(point.run_dir) / MODEL_FILE, data, delta=scenario.dp.delta,
                                  confidence=scenario.audit.confidence,
                                  low_fprs=scenario.audit.low_fprs, seed=point.seed)
            row = {"attack": kind, "level": level_name(point.epsilon), "epsilon": point.epsilon,
                   "seed": point.seed, "claimed_epsilon": point.spent_epsilon, **attack.to_dict()}
            audits.append(row)
            progress(f"  {kind}, {row['level']}, seed {point.seed}: attack AUC {attack.auc:.3f}, "
                     f"empirical epsilon >= {attack.epsilon_lower_bound:.3f}"
                     + (f" (accountant: {point.spent_epsilon:.3f})" if point.spent_epsilon else ""))
    return audits


def _segment_report(scenario: Scenario, federation: Federation, as_of: str,
                    ledger_key_file: Path, out_dir: Path,
                    progress: Callable[[str], None]) -> dict[str, Any]:
    """A DP segmentation over the silos (its own capped ledger); returns its released report."""
    where = out_dir / "points" / "segmentation"
    where.mkdir(parents=True)
    eps = scenario.release.segment_epsilon
    ledger = point_ledger(where / "ledger.sqlite", ledger_key_from_file(ledger_key_file),
                          [s.name for s in federation.silos], "segmentation", eps,
                          scenario.dp.delta)
    cfg = TrainConfig(silos_dir=str(federation.silos_dir), workspace=str(where),
                      run_dir=str(where / "run"), as_of=as_of, seed=scenario.seeds[0],
                      min_silos=scenario.silos.count, dp=True, dp_target_epsilon=eps,
                      dp_delta=scenario.dp.delta, segment_k_min=scenario.release.k_min,
                      ledger=str(ledger), ledger_key_file=str(ledger_key_file))
    progress(f"  DP segmentation (epsilon {eps:g}) for its segment report")
    result = run_segment_job(cfg, progress=lambda _m: None, reference=False)
    return result["report"]


def _releases(scenario: Scenario, federation: Federation, points: list[PointResult], as_of: str,
              ledger_key_file: Path, out_dir: Path,
              progress: Callable[[str], None]) -> dict[str, Any]:
    k = scenario.release.k_min
    progress(f"re-identification check of released artifacts (k = {k})")
    rows, tables = breakdown_rows(list(federation.silos), scenario.release.quasi_identifiers, k,
                                  as_of)
    if scenario.release.segments:
        rows += segment_rows(_segment_report(scenario, federation, as_of, ledger_key_file, out_dir,
                                             progress), k)
    if scenario.release.campaigns:
        keys = out_dir / "work" / "keys"
        rows += case_release_rows(federation, out_dir / "work" / "platform", keys / KEYRING_FILE,
                                  keys / KEY_FILE, as_of, k, scenario.seeds[0],
                                  out_dir / "points" / "campaigns", progress)
    for point in points:
        if point.epsilon is None and point.seed == scenario.seeds[0]:
            metrics = json.loads((Path(point.run_dir) / METRICS_FILE).read_text())
            rows += evaluation_rows(metrics, k, f"{point.model}, no DP, seed {point.seed}")
    return {"k_min": k, "artifacts": rows, "breakdowns": tables}


def plain_summary(results: dict[str, Any], scenario: Scenario) -> list[str]:
    """Sentences a compliance officer can sign off on, built from the numbers only."""
    lines = []
    for kept in results["smallest_epsilon"]:
        label = f"{kept['model']} ({kept['metric']})"
        if kept["no_dp"] is None:
            lines.append(f"{label}: no non-private reference was trained.")
        elif kept["epsilon"] is None:
            lines.append(f"{label}: no epsilon in the grid keeps {1 - scenario.sweep.tolerance:.0%} "
                         f"of the non-private utility ({kept['no_dp']:.3f}).")
        else:
            lines.append(f"{label}: at epsilon = {kept['epsilon']:g} per customer per purpose "
                         f"(delta = {scenario.dp.delta:g}), utility is {kept['share']:.0%} of "
                         f"non-private ({kept['no_dp']:.3f}).")
    audit = results.get("audit")
    if audit:
        private = [a for a in audit["models"] if a["epsilon"] is not None]
        strongest = max(private, key=lambda a: a["auc"], default=None)
        control = audit["control"]
        if strongest is not None:
            lines.append(f"The strongest attack tried ({strongest['attack']} loss threshold) "
                         f"reaches AUC {strongest['auc']:.3f} against the private models (0.5 = "
                         f"guessing; at {strongest['level']}), and the {control['attack']} attack "
                         f"reaches AUC {control['best_auc']:.3f} against the non-private control.")
        lines.append(f"The {control['attack']} attack works against the non-private control, so "
                     "the audit is meaningful." if control["conclusive"] else
                     f"INCONCLUSIVE: the {control['attack']} attack did not beat guessing against "
                     "every non-private control, so a low score against the private models "
                     "proves little.")
        lines.append("No empirical lower bound exceeds the accountant's epsilon." if not
                     audit["violations"] else "FAILED: " + "; ".join(audit["violations"]))
    flagged = [a for a in results["releases"]["artifacts"] if a["status"].startswith("below k")]
    suppressed = sum(a["suppressed_groups"] for a in results["releases"]["artifacts"])
    lines.append(f"Released artifacts: {suppressed} small group(s) withheld from released "
                 f"tables (k = {results['releases']['k_min']}); "
                 + (f"{len(flagged)} artifact(s) publish a group under k: "
                    + "; ".join(a["artifact"] for a in flagged) if flagged
                    else "no published group under k."))
    return lines


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (";".join(map(str, v)) if isinstance(v, list | tuple) else v)
                         for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def _write_outputs(out_dir: Path, results: dict[str, Any], scenario: Scenario) -> None:
    atomic_write_json(out_dir / RESULTS_FILE, results)
    _write_csv(out_dir / "sweep.csv", results["sweep"])
    _write_csv(out_dir / "smallest_epsilon.csv", results["smallest_epsilon"])
    _write_csv(out_dir / "points.csv", [
        {"model": p["model"], "level": level_name(p["epsilon"]), "seed": p["seed"],
         **p["utility"], "spent_epsilon": p["spent_epsilon"]} for p in results["points"]])
    if results["audit"]:
        _write_csv(out_dir / "audit.csv", [
            {k: v for k, v in a.items() if k != "tpr_at_fpr"}
            | {f"tpr_at_fpr_{f}": t for f, t in a["tpr_at_fpr"].items()}
            for a in results["audit"]["models"]])
        plot_audit(results["audit"]["models"], out_dir / "audit.png")
    _write_csv(out_dir / "releases.csv", results["releases"]["artifacts"])
    for model in scenario.training.models:
        plot_utility(results["sweep"], model, out_dir / f"utility_{model}.png",
                     scenario.sweep.tolerance)


def clean_work(out_dir: Path) -> None:
    """Remove the synthetic platform and silos (large); keep results, points and the report."""
    shutil.rmtree(Path(out_dir) / "work", ignore_errors=True)
