"""The main job: from nothing to a federated model compared with its alternatives.

Generate the synthetic travel platform, load each business line into its own
silo store, profile each silo's customers locally, train the propensity model
federatedly on Flower's Simulation Engine, segment the profiles with DP
k-means, find the case-1 audience by PSI, and print the federated model next
to the centralized oracle and each silo alone. Everything lands in one workspace directory that can be inspected.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from fedprofile.client.campaigns import save_audience_plan
from fedprofile.client.cases import cross_sell_campaign
from fedprofile.client.ingest import ingest
from fedprofile.client.profiles import profile_silo
from fedprofile.config import TrainConfig
from fedprofile.privacy.keys import Keyring, Secret, generate_key_file
from fedprofile.privacy.ledger import Ledger, ledger_key_from_file
from fedprofile.privacy.silo_keys import load_silo_keys
from fedprofile.simulations.platform import PlatformConfig, generate_platform
from fedprofile.privacy.leak_guard import Finding, Needles, scan_tree, silo_needles
from fedprofile.simulations.campaign_run import simulate_campaign
from fedprofile.simulations.joint_run import run_joint_job
from fedprofile.simulations.psi_run import run_psi_job
from fedprofile.simulations.segment_run import run_segment_job
from fedprofile.simulations.training import TrainingResult, run_training, summary_table

MARKER = ".fedprofile-demo"
DEMO_DOMAIN = "travel"


@dataclass(frozen=True)
class DemoResult:
    workspace: Path
    training: TrainingResult
    psi: dict[str, object]
    segments: dict[str, object]
    seconds: float
    leak_findings: list[Finding] | None = None  # None: the leak guard was off
    guarded_replies: int = 0


def demo_keys(workspace: Path) -> tuple[Path, Secret]:
    """The demo's key domain: a keyring unlocked by a key file, both under ``keys/``.

    In a real deployment each silo keeps its copy of the domain keyring and its
    secret on its own machine; the demo keeps them in one place because one
    machine plays every silo. The server never reads them.
    """
    keys_dir = workspace / "keys"
    key_file = keys_dir / "demo.key"
    keyring = keys_dir / f"{DEMO_DOMAIN}.keyring"
    if not key_file.exists():
        keys_dir.mkdir(parents=True, exist_ok=True)
        keyring.unlink(missing_ok=True)  # useless without the key file that sealed it
        generate_key_file(key_file)
    secret = Secret.from_key_file(key_file)
    if not keyring.exists():
        Keyring.create(keyring, DEMO_DOMAIN, secret)
    return keyring, secret


def build_silos(platform_dir: Path, silos_dir: Path, keyring: Path, secret: Secret,
                progress: Callable[[str], None] = print) -> list[Path]:
    """Ingest every generated line into a fresh silo store, replacing ``silos_dir`` at the end.

    The new stores are built next to the old ones and swapped in only when all
    of them loaded, so an interrupted demo never leaves a half-built silo set.
    """
    sources = sorted(p for p in (platform_dir / "silos").iterdir() if p.is_dir())
    staging = silos_dir.with_name(silos_dir.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    built = []
    for src in sources:
        keys = load_silo_keys(keyring, secret, staging / src.name)
        report = ingest(staging / src.name, customers=src / "customers.csv",
                        orders=src / "orders.csv", silo_name=src.name, keys=keys)
        invalid = sum(r.invalid for r in report.identifiers if r.kind != "account")
        progress(f"  silo {src.name}: {report.customers_added:,} customers, "
                 f"{report.orders_added:,} orders; identifiers pseudonymised with key "
                 f"{report.key_domain} v{report.key_version}"
                 + (f" ({invalid:,} unusable phone/e-mail values dropped)" if invalid else ""))
        built.append(silos_dir / src.name)
    old = silos_dir.with_name(silos_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if silos_dir.exists():
        silos_dir.rename(old)
    staging.rename(silos_dir)
    shutil.rmtree(old, ignore_errors=True)
    return built


def _claim_workspace(workspace: Path) -> None:
    """The demo rewrites its workspace; refuse to do that to someone else's directory."""
    if workspace.exists() and any(workspace.iterdir()) and not (workspace / MARKER).exists():
        raise FileExistsError(
            f"{workspace} exists and was not made by `fedprofile demo`; "
            "choose another --workspace"
        )
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / MARKER).write_text("This directory is rewritten by `fedprofile demo`.\n")


def run_demo(workspace: Path, platform: PlatformConfig, train: TrainConfig,
             progress: Callable[[str], None] = print) -> DemoResult:
    """Run the whole demo in ``workspace``; returns where everything is."""
    started = time.perf_counter()
    _claim_workspace(workspace)
    platform_dir = workspace / "platform"

    progress(f"[1/7] generating the synthetic travel platform "
             f"({platform.n_customers:,} people, seed {platform.seed})")
    t0 = time.perf_counter()
    summary = generate_platform(platform, platform_dir, overwrite=True)
    lines = ", ".join(f"{line} {n:,}" for line, n in summary.customers_per_line.items())
    progress(f"  customers per line: {lines} ({time.perf_counter() - t0:.1f}s); "
             f"ground truth kept apart in {platform_dir / 'ground_truth'}")

    progress("[2/7] loading each business line into its own silo store "
             "(identifiers pseudonymised, raw ids sealed)")
    silos_dir = workspace / "silos"
    keyring, secret = demo_keys(workspace)
    silos = build_silos(platform_dir, silos_dir, keyring, secret, progress)
    key_file = str(secret.path)

    progress("[3/7] customer profiles, computed inside each silo (RFM, intervals, next "
             "purchase, churn risk, CLV, tags)")
    for silo in silos:
        progress(f"  {profile_line(silo)}")

    progress("[4/7] federated training")
    cfg = replace(train, workspace=str(workspace), silos_dir=str(silos_dir), key_file=key_file)
    result = run_training(cfg, progress=progress, oracle=True)

    progress(f"[5/7] federated segmentation of the profiles (k-means with DP, epsilon "
             f"{SEGMENT_EPSILON:g} per customer, charged to the privacy-budget ledger)")
    cfg = replace(cfg, ledger=_demo_ledger(workspace, silos))
    segments = run_segment_job(_segment_config(cfg), progress=progress)
    for line in Path(segments["run_dir"], "segments.txt").read_text().splitlines():
        progress(f"  {line}")

    progress("[6/7] marketing case 1: international flyers who are not data-pack customers "
             "(private set intersection)")
    psi = run_psi_job(replace(cfg, run_dir="", min_silos=2), progress=progress)
    receiver = psi["receiver"]
    progress(f"  the server saw only set sizes ({psi['server']['receiver_size']:,} and "
             f"{psi['server']['sender_size']:,} blinded values)")
    progress(f"  flights learned that {receiver['matched_elsewhere']:,} of its "
             f"{receiver['selected']:,} international flyers buy data packs from us; audience "
             f"of {receiver['audience']:,} ({receiver['opted_out']:,} opted out, left out) "
             f"sealed in {receiver['path']}")

    progress(f"  joint model across lines (vertical learning on Flower): datapacks labels x "
             f"flights features on the customers both have, label DP on the gradients; its "
             f"extra head scores the audience ({JOINT_HORIZON_DAYS}-day label: a flyer's need "
             f"for packs abroad)")
    run_joint_job(replace(cfg, job="joint", run_dir="", joint_audience=cfg.psi_audience,
                          joint_horizon_days=JOINT_HORIZON_DAYS),
                  progress=progress, reference=False)
    progress("  case 1 campaign: the audience ranked by the joint model's score, split A/B by "
             "pseudonym, the destination's pack coupon to A; played out against the ground "
             "truth (simulation only)")
    campaign = _case_1_campaign(workspace, silos_dir / "flights", keyring, secret, platform_dir)
    for line in campaign["text"].splitlines():
        progress(f"    {line}")
    truth = campaign["result"]["ground_truth"]
    progress(f"    true lift (simulation only) {truth['true_lift']:+.4f}: the measured interval "
             f"{'covers' if truth['interval_covers_true_lift'] else 'misses'} it; report and "
             f"plots in {campaign['out']}")
    targeting = campaign["result"].get("targeting")
    if targeting:
        progress(f"    targeting by the joint model (simulation only): the top 30% by score have "
                 f"a true uplift of {targeting['true_uplift_top_30pct_by_score']:+.4f} per "
                 f"customer, random targeting {targeting['true_uplift_random']:+.4f}")

    findings: list[Finding] | None = None
    guarded = 0
    if cfg.leak_guard:
        findings, guarded = _check_leaks(workspace, silos, key_file, cfg, platform_dir)
        progress(f"  leak guard: {guarded:,} ClientApp replies and every file outside the "
                 f"silos checked, {len(findings)} leak(s)")
        for finding in findings[:10]:
            progress(f"    {finding}")

    progress("[7/7] results")
    progress(summary_table(result.metrics))
    return DemoResult(workspace=workspace, training=result, psi=psi, segments=segments,
                      seconds=time.perf_counter() - started, leak_findings=findings,
                      guarded_replies=guarded)


def _case_1_campaign(workspace: Path, flights: Path, keyring: Path, secret: Secret,
                     platform_dir: Path) -> dict[str, object]:
    """Plan case 1 from the sealed PSI audience in the flights silo; simulate its A/B test."""
    keys = load_silo_keys(keyring, secret, flights)
    assert keys.identity_key is not None  # the demo keeps sealed raw ids
    plan, audience = cross_sell_campaign(flights, "demo-case-1", keys.identity_key)
    save_audience_plan(flights, plan, audience, keys.identity_key)
    out = workspace / "campaigns" / "demo-case-1"
    result = simulate_campaign(platform_dir, keys, "demo-case-1", out, line="datapacks")
    return {"result": result, "out": out,
            "text": (out / "campaign-report.txt").read_text().rstrip()}


SEGMENT_EPSILON = 2.0
"""The demo's segmentation budget per customer and silo (its cap is set to exactly this)."""
JOINT_EPSILON_CAP = 10.0
"""The demo's joint-model cap per silo (one default run spends 5.98 in the label silo)."""
JOINT_HORIZON_DAYS = 180
"""Case 1's ranking label: a data-pack order within 180 days (see the README's joint model)."""



def profile_line(silo_dir: Path) -> str:
    """One line about a silo's profiles: counts, CLV method and the largest tags."""
    summary = profile_silo(silo_dir).summary()
    tags = sorted(summary["tags"].items(), key=lambda kv: -kv[1])[:4]
    return (f"{summary['silo']}: {summary['customers']:,} customers profiled; CLV by "
            f"{summary['clv_method']} (median {summary['medians']['clv'] or 0:,.0f}); tags: "
            + ", ".join(f"{name} {count:,}" for name, count in tags))


def _demo_ledger(workspace: Path, silos: list[Path]) -> str:
    """A fresh demo ledger: every silo capped at SEGMENT_EPSILON for segmentation and
    JOINT_EPSILON_CAP for the joint model. Returns its path."""
    ledger_dir = workspace / "ledger"
    shutil.rmtree(ledger_dir, ignore_errors=True)  # the demo's workspace starts over each run
    ledger_dir.mkdir(parents=True)
    key = ledger_key_from_file(generate_key_file(ledger_dir / "ledger.key"))
    path = ledger_dir / "privacy-ledger.sqlite"
    with Ledger.create(path, key) as ledger:
        for silo in silos:
            ledger.set_cap(silo.name, "segmentation", SEGMENT_EPSILON, 1e-4,
                           reason="fedprofile demo")
            ledger.set_cap(silo.name, "joint-model", JOINT_EPSILON_CAP, 1e-4,
                           reason="fedprofile demo")
    return str(path)


def _segment_config(cfg: TrainConfig) -> TrainConfig:
    """DP segmentation at the demo's budget (its cap is set to exactly that)."""
    return replace(cfg, job="segment", dp=True, dp_target_epsilon=SEGMENT_EPSILON,
                   dp_delta=1e-5, segments=5, segment_iterations=6, run_dir="")


def _check_leaks(workspace: Path, silos: list[Path], key_file: str, cfg: TrainConfig,
                 platform_dir: Path) -> tuple[list[Finding], int]:
    """Files outside the silos (and outside the generator's per-line exports and
    ground truth, which stand for the lines' own systems) must hold no raw id or row."""
    needles = Needles()
    replies = 0
    for silo in silos:
        needles.merge(silo_needles(silo, key_file, cfg.horizon_days, cfg.as_of))
        log = silo / "leak-guard.log"
        replies += len(log.read_text().splitlines()) if log.exists() else 0
    exclude = [workspace / "silos", platform_dir]
    return scan_tree(workspace, needles, exclude=exclude), replies
