"""The ``fedprofile`` command line.

Sub-commands map one-to-one onto the Python API, so whatever a user does here
can be scripted, and the CLI only parses arguments, reports progress and turns
known failures into one clear line (no traceback) with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from fedprofile import __version__
from fedprofile.config import DEFAULT_K_MIN, ConfigError, TrainConfig, default_workspace

EXIT_INPUT = 2  # bad input or configuration: nothing was changed
EXIT_RUNTIME = 1  # something failed while running
EXIT_INTERRUPTED = 130
EXIT_AUDIT = 3  # an empirical privacy lower bound exceeds the accountant's epsilon (a bug)


def _progress(message: str) -> None:
    print(message, flush=True)


def _parse_settings(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip().strip("'\"")
    return out


def _train_config(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, object] = dict(_parse_settings(args.set or []))
    for name in ("rounds", "local_epochs", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            values["num-server-rounds" if name == "rounds" else name.replace("_", "-")] = value
    for name in ("workspace", "silos_dir", "run_dir", "model"):
        value = getattr(args, name, None)
        if value:
            values[name.replace("_", "-")] = str(value)
    return TrainConfig.from_mapping(values)


# -- commands --------------------------------------------------------------
def cmd_generate(args: argparse.Namespace) -> int:
    from fedprofile.simulations.platform import PlatformConfig, generate_platform

    out = Path(args.out) if args.out else default_workspace() / "platform"
    summary = generate_platform(PlatformConfig(n_customers=args.customers, seed=args.seed),
                                out, progress=lambda m: _progress(f"  {m}"),
                                overwrite=args.overwrite)
    _progress(f"platform written to {summary.out_dir}")
    for line in summary.customers_per_line:
        _progress(f"  {line}: {summary.customers_per_line[line]:,} customers, "
                  f"{summary.orders_per_line[line]:,} orders -> "
                  f"{summary.out_dir / 'silos' / line}")
    _progress(f"  ground truth (never loaded into a silo): {summary.out_dir / 'ground_truth'}")
    return 0


def _secret(args: argparse.Namespace):  # -> Secret
    """The keyring secret: --key-file, else the environment, else a passphrase prompt."""
    import getpass

    from fedprofile.privacy.keys import KeyringError, Secret

    if getattr(args, "key_file", None):
        return Secret.from_key_file(Path(args.key_file))
    try:
        return Secret.from_env()
    except KeyringError:
        if sys.stdin.isatty():
            return Secret.from_passphrase(getpass.getpass("keyring passphrase: "))
        raise


def _keyring_path(args: argparse.Namespace) -> Path:
    import os

    value = args.keyring or os.environ.get("FEDPROFILE_KEYRING")
    if not value:
        raise ConfigError("no keyring: pass --keyring PATH or set FEDPROFILE_KEYRING")
    return Path(value).expanduser()


def cmd_key_generate(args: argparse.Namespace) -> int:
    from fedprofile.privacy.keys import generate_key_file

    path = generate_key_file(Path(args.path))
    _progress(f"key file written to {path} (mode 0600); keep it on this silo's machine only")
    return 0


def cmd_key_init(args: argparse.Namespace) -> int:
    from fedprofile.privacy.keys import Keyring

    keyring = Keyring.create(_keyring_path(args), args.domain, _secret(args))
    _progress(f"keyring for key domain {keyring.domain!r} created at {keyring.path} "
              f"(version {keyring.active_version}, fingerprint {keyring.fingerprint()})")
    return 0


def cmd_key_rotate(args: argparse.Namespace) -> int:
    from fedprofile.privacy.keys import Keyring

    secret = _secret(args)
    keyring = Keyring.open(_keyring_path(args), secret)
    version = keyring.rotate(secret)
    _progress(f"key domain {keyring.domain!r}: version {version} is active, older versions "
              "are retired; re-key every silo of the domain with `fedprofile silo rekey`")
    return 0


def cmd_key_info(args: argparse.Namespace) -> int:
    from fedprofile.privacy.keys import Keyring

    keyring = Keyring.open(_keyring_path(args), _secret(args))
    info = {"domain": keyring.domain, "path": str(keyring.path),
            "active_version": keyring.active_version,
            "versions": [{"version": v.version, "status": v.status, "created": v.created,
                          "retired": v.retired,
                          "fingerprint": keyring.fingerprint(v.version)
                          if v.status == "active" else None}
                         for v in keyring.versions]}
    print(json.dumps(info, indent=2))
    return 0


def _silo_keys(args: argparse.Namespace, silo_dir: Path, secret=None):  # -> SiloKeys
    """The keys one silo job uses, from the key options (``secret`` when already unlocked).

    ``--drop-raw-ids``, where the command has it, makes the silo keep no raw identifiers.
    """
    from fedprofile.privacy.silo_keys import load_silo_keys

    return load_silo_keys(_keyring_path(args), secret if secret is not None else _secret(args),
                          silo_dir, keep_raw_ids=not getattr(args, "drop_raw_ids", False))


def cmd_silo_ingest(args: argparse.Namespace) -> int:
    from fedprofile.client.ingest import ingest

    keys = _silo_keys(args, Path(args.silo))
    report = ingest(Path(args.silo), customers=args.customers, orders=args.orders,
                    silo_name=args.name, keys=keys)
    _progress(f"silo {args.silo}: {report.customers_added:,} customers added, "
              f"{report.customers_updated:,} updated, {report.orders_added:,} orders added; "
              f"identifiers pseudonymised with key domain {report.key_domain!r} "
              f"v{report.key_version}; raw identifiers "
              + ("sealed in the silo store" if report.raw_ids_kept else "not kept"))
    for identifiers in report.identifiers:
        if identifiers.invalid:
            _progress(f"  note: {identifiers}")
    for path, cols in report.ignored_columns.items():
        _progress(f"  note: {path}: columns not in the schema were not stored: {', '.join(cols)}")
    return 0


def _report_interactions(silo_dir: Path, report) -> None:  # report: InteractionsReport
    """One ingestion's counts (never an id), then notes."""
    _progress(f"silo {silo_dir}: {report.interactions_added:,} interactions added "
              f"({report.rows_read:,} rows read from {Path(report.source).name}); "
              f"{report.users_added:,} users added, {report.users_updated:,} updated, "
              f"{report.users_opted_out:,} of the file's users opted out; identifiers "
              f"pseudonymised with key domain {report.key_domain!r} v{report.key_version}; "
              "raw identifiers "
              + ("sealed in the silo store" if report.raw_ids_kept else "not kept"))
    if report.ignored_columns:
        _progress(f"  note: columns not mapped were not stored: "
                  f"{', '.join(report.ignored_columns)}")


def cmd_silo_ingest_interactions(args: argparse.Namespace) -> int:
    from fedprofile.client.ingest_interactions import ColumnMapping, ingest_interactions

    mapping = ColumnMapping.parse(args.map or [])
    silo_dir = Path(args.silo_dir)
    report = ingest_interactions(silo_dir, Path(args.file), mapping,
                                 keys=_silo_keys(args, silo_dir), silo_name=args.name)
    _report_interactions(silo_dir, report)
    return 0


def cmd_retail_prepare(args: argparse.Namespace) -> int:
    from fedprofile.simulations.online_retail import DEFAULT_PATH, build_retail_silos

    data = Path(args.data).expanduser() if args.data else DEFAULT_PATH
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be a positive number of rows, got {args.limit}")
    _keyring_path(args)  # a missing keyring is reported before the work, not after it
    secret = _secret(args)
    silos_dir = Path(args.silos_dir).expanduser()
    build_retail_silos(silos_dir, lambda silo_dir: _silo_keys(args, silo_dir, secret), data,
                       args.limit, progress=_progress, on_report=_report_interactions)
    _progress(f"regional silos ready under {silos_dir}")
    return 0


def cmd_silo_rekey(args: argparse.Namespace) -> int:
    from fedprofile.client.rekey import rekey

    report = rekey(Path(args.silo), _silo_keys(args, Path(args.silo)))
    if report.from_version == report.to_version:
        _progress(f"silo {args.silo} already uses key version {report.to_version}")
    else:
        _progress(f"silo {args.silo}: {report.customers:,} customers (and "
                  f"{report.interactions:,} interactions) re-keyed from version "
                  f"{report.from_version} to {report.to_version}")
    return 0


def cmd_silo_info(args: argparse.Namespace) -> int:
    from fedprofile.client.store import SiloStore

    with SiloStore.open(Path(args.silo)) as store:
        info = {**store.meta(), "path": str(store.path), **store.counts(),
                "ingestions": store.ingestions()}
    print(json.dumps(info, indent=2))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedprofile.simulations.scenario import load_scenario, packaged_scenario
    from fedprofile.simulations.simulate import clean_work, run_scenario
    from fedprofile.simulations.training import new_run_id

    path = packaged_scenario(args.scenario)
    if args.print:
        print(path.read_text(encoding="utf-8"), end="")
        return 0
    scenario = load_scenario(path)
    out = Path(args.out).expanduser() if args.out else (
        default_workspace() / "simulations" / f"{scenario.name}-{new_run_id()}")
    _progress(f"simulation {scenario.name!r} from {path}; results in {out}")
    result = run_scenario(scenario, out, progress=_progress, source=path.read_text(encoding="utf-8"))
    if not args.keep_work:
        clean_work(out)
    _progress(f"done: {result.report}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fedprofile.simulations.training import run_training, summary_table

    deployment = bool(getattr(args, "deployment", False))
    result = run_training(_train_config(args), progress=_progress, oracle=not args.no_oracle,
                          deployment=deployment,
                          warm_clientapps=not getattr(args, "cold_clientapps", False))
    _progress(summary_table(result.metrics))
    _progress(f"done in {result.seconds:.0f}s; run directory: {result.run_dir}"
              + (f" (deployment logs and credentials in {result.run_dir / 'flower' / 'deployment'})"
                 if deployment else ""))
    return 0


def cmd_deploy_credentials(args: argparse.Namespace) -> int:
    from fedprofile.privacy.credentials import make_supernode_key, make_tls

    out = Path(args.out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: credentials are never overwritten")
    if not args.keys_only:
        tls = make_tls(out, tuple(args.host or ("localhost", "127.0.0.1")))
        _progress(f"SuperLink: {tls.cert} and {tls.key} (keep on the SuperLink host); CA: "
                  f"{tls.ca_cert} (give to every SuperNode and flwr CLI host; keep "
                  f"{tls.ca_key} offline)")
    elif not args.silo:
        raise ValueError("--keys-only writes SuperNode keys: name at least one --silo")
    for name in args.silo:
        private, public = make_supernode_key(out, name)
        _progress(f"SuperNode {name}: {private} (stays on that silo's host), {public} (register "
                  f"it: flwr supernode register {public} <connection>)")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from fedprofile.client.profiles import ProfileConfig, format_summary, profile_silo
    from fedprofile.client.tags import load_tag_rules

    silo_dir = Path(args.silo_dir).expanduser()
    rules = tuple(load_tag_rules(Path(args.tags).expanduser() if args.tags else None))
    profiles = profile_silo(silo_dir, args.as_of or "", ProfileConfig(tag_rules=rules))
    out = Path(args.out).expanduser() if args.out else silo_dir / "profiles.csv"
    profiles.write_csv(out)
    summary = profiles.summary()
    _progress(format_summary(summary))
    if args.json:
        print(json.dumps(summary, indent=2))
    _progress(f"profiles of {profiles.n_users:,} customers written to {out} "
              "(pseudonymous keys: keep the file inside the silo)")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from fedprofile.simulations.segment_run import run_segment_job

    args.set = ["job=segment", "dp=true", *(args.set or [])]  # DP only; the user may tune it
    result = run_segment_job(_train_config(args), progress=_progress)
    _progress(Path(result["run_dir"], "segments.txt").read_text().rstrip())
    ref = result.get("noise_free_reference")
    if ref:
        _progress(f"noise cost: private centroids lie {ref['mean_centroid_gap']:.3f} from the "
                  "noise-free ones on average (feature box [0, 1]^d; simulation only)")
    _progress(f"run directory: {result['run_dir']}")
    return 0


def cmd_joint(args: argparse.Namespace) -> int:
    from fedprofile.simulations.joint_run import run_joint_job

    args.set = ["job=joint", *(args.set or [])]
    if args.rounds is not None:  # a joint run's rounds are its releases each way
        args.set.append(f"joint-rounds={args.rounds}")
        args.rounds = None
    for option, key in (("label", "joint-label-silo"), ("features", "joint-feature-silos")):
        if getattr(args, option, None):
            args.set.append(f"{key}={getattr(args, option)}")
    result = run_joint_job(_train_config(args), progress=_progress,
                           reference=not args.no_reference)
    _progress(f"run directory: {result['run_dir']}")
    return 0


def cmd_regional(args: argparse.Namespace) -> int:
    from fedprofile.simulations.regional_run import run_regional_job

    args.set = ["job=regional", "dp=true", *(args.set or [])]  # DP only; the user may tune it
    result = run_regional_job(_train_config(args), progress=_progress)
    _progress(Path(result["run_dir"], "regional.txt").read_text().rstrip())
    ref = result.get("noise_free_reference")
    if ref and ref["mean_top_overlap"] is not None:
        _progress(f"noise cost: {ref['mean_top_overlap']:.0%} of the shown lists' items are in the "
                  "noise-free top lists (simulation only)")
    _progress(f"run directory: {result['run_dir']}")
    return 0


def cmd_regional_serve(args: argparse.Namespace) -> int:
    from fedprofile.client.regional import regional_recommendations

    summary = regional_recommendations(Path(args.silo_dir).expanduser(),
                                       Path(args.report).expanduser(),
                                       exclude_bought=args.exclude_bought)
    _progress(str(summary))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from fedprofile.client.serving import serve_silo

    summary = serve_silo(Path(args.silo_dir).expanduser(), Path(args.model).expanduser(),
                         k=args.k, diversity=args.diversity, explore=args.explore, seed=args.seed)
    _progress(str(summary))
    return 0


def _print_plan(plan) -> None:  # plan: CampaignPlan
    _progress(f"campaign {plan.campaign_id} ({plan.case}) in silo {plan.silo}, as of "
              f"{plan.created}: {plan.audience_size:,} customers, {plan.treated:,} treated (A), "
              f"{plan.control:,} control (B); {plan.excluded_opted_out:,} opted out, left out")
    for offer, count in sorted(plan.offers.items()):
        _progress(f"  offer {offer!r}: {count:,} treated customers")
    if plan.send_schedule:
        days = sorted(plan.send_schedule)
        _progress(f"  sends from {days[0]} to {days[-1]} ({len(days)} days)")
    for note in plan.notes:
        _progress(f"  note: {note}")


def cmd_campaign(args: argparse.Namespace) -> int:
    from fedprofile.client.campaigns import save_audience_plan
    from fedprofile.client.cases import (cross_sell_campaign, repurchase_campaign,
                                         retention_campaign)
    from fedprofile.privacy.silo_keys import read_identity_key

    silo_dir = Path(args.silo_dir).expanduser()
    key = read_identity_key(silo_dir, _secret(args))  # before the work: the audience is sealed
    if args.case == "cross-sell":
        plan, audience = cross_sell_campaign(silo_dir, args.id, key, audience=args.audience,
                                             as_of=args.as_of or "",
                                             treated_share=args.treated_share,
                                             window_days=args.window_days)
    elif args.case == "retention":
        plan, audience = retention_campaign(
            silo_dir, args.id, tiers_file=Path(args.tiers).expanduser() if args.tiers else None,
            as_of=args.as_of or "", treated_share=args.treated_share,
            window_days=args.window_days)
    else:
        plan, audience = repurchase_campaign(
            silo_dir, args.id, as_of=args.as_of or "", due_within_days=args.due_within_days,
            lead_days=args.lead_days, treated_share=args.treated_share)
    plan_path, sealed = save_audience_plan(silo_dir, plan, audience, key)
    _print_plan(plan)
    _progress(f"plan (counts only): {plan_path}\naudience (sealed, stays in the silo): {sealed}")
    return 0


def cmd_campaign_simulate(args: argparse.Namespace) -> int:
    from fedprofile.simulations.campaign_run import simulate_campaign

    silo_dir = Path(args.silo_dir).expanduser()
    out = Path(args.out).expanduser() if args.out else silo_dir.parent.parent / "campaigns" / args.id
    result = simulate_campaign(Path(args.platform).expanduser(), _silo_keys(args, silo_dir),
                               args.id, out, line=args.line, seed=args.seed,
                               k_min=args.k_min)
    _progress((out / "campaign-report.txt").read_text().rstrip())
    truth = result["ground_truth"]
    _progress(f"ground truth (simulation only): true lift {truth['true_lift']:+.4f}; the "
              f"measured interval {'covers' if truth['interval_covers_true_lift'] else 'MISSES'} it")
    if "targeting" in result:
        t = result["targeting"]
        _progress(f"targeting by score vs random: Qini {t['qini_by_score']:+.4f} vs "
                  f"{t['qini_random']:+.4f}; uplift in the top 30% {t['uplift_at_30pct_by_score']:+.4f}"
                  f" vs {t['uplift_at_30pct_random']:+.4f}")
        _progress(f"true uplift (simulation only) of the top 30% by score "
                  f"{t['true_uplift_top_30pct_by_score']:+.4f} vs {t['true_uplift_random']:+.4f} "
                  "for random targeting")
    _progress(f"report and plots: {out}")
    return 0


def cmd_psi(args: argparse.Namespace) -> int:
    import os

    from fedprofile.simulations.psi_run import run_psi_job

    values: dict[str, object] = dict(_parse_settings(args.set or []))
    for name in ("workspace", "silos_dir", "run_dir"):
        if getattr(args, name, None):
            values[name.replace("_", "-")] = str(getattr(args, name))
    values.update({"psi-receiver": args.receiver, "psi-sender": args.sender,
                   "psi-selection": args.selection, "psi-audience": args.audience,
                   "psi-mode": "cardinality" if args.cardinality else "intersection",
                   "min-silos": 2})
    key_file = args.key_file or os.environ.get("FEDPROFILE_KEY_FILE", "")
    if not key_file:
        raise ConfigError("the receiving silo seals its result: pass --key-file (or set "
                          "FEDPROFILE_KEY_FILE) with the silos' key file")
    values["key-file"] = str(Path(key_file).expanduser().resolve())
    result = run_psi_job(TrainConfig.from_mapping(values), progress=_progress)
    server, receiver = result["server"], result["receiver"]
    _progress(f"server (relay) saw: {server['receiver_size']:,} blinded values from "
              f"{server['receiver']} and {server['sender_size']:,} from {server['sender']}; "
              "nothing else")
    _progress(f"{server['receiver']} learned: {receiver['matched_elsewhere']:,} of its "
              f"{receiver['selected']:,} selected customers are also {server['sender']} "
              "customers")
    if server["mode"] == "intersection":
        _progress(f"audience {receiver['name']!r}: {receiver['audience']:,} customers "
                  f"({receiver['opted_out']:,} opted out of marketing and "
                  f"{receiver['no_phone']:,} without a usable phone left out), sealed at "
                  f"{receiver['path']}")
    _progress(f"run directory: {result['run_dir']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fedprofile.demo import run_demo
    from fedprofile.simulations.platform import PlatformConfig

    workspace = Path(args.workspace) if args.workspace else default_workspace() / "demo"
    args.workspace = None  # the demo sets workspace/silos itself
    if args.leak_guard:
        args.set = [*(args.set or []), "leak-guard=true"]
    cfg = _train_config(args)
    result = run_demo(workspace.expanduser(), PlatformConfig(n_customers=args.customers,
                                                             seed=args.platform_seed),
                      cfg, progress=_progress)
    run_dir = result.training.run_dir
    _progress(f"\ndemo finished in {result.seconds:.0f}s")
    _progress(f"  run directory: {run_dir}")
    _progress(f"  metrics:       {run_dir / 'metrics.json'}")
    _progress(f"  plot:          {run_dir / 'auc_by_round.png'}")
    _progress(f"  model:         {run_dir / 'model.pt'}")
    if result.leak_findings:
        print(f"fedprofile: the leak guard found {len(result.leak_findings)} leak(s)",
              file=sys.stderr)
        return EXIT_RUNTIME
    return 0


def _ledger_key(args: argparse.Namespace) -> tuple[Path, bytes]:
    """The ledger path and its key (from --key-file, or ledger.key beside the ledger)."""
    from fedprofile.privacy.ledger import default_key_file, ledger_key_from_file

    path = Path(args.ledger).expanduser()
    key_file = Path(args.key_file).expanduser() if args.key_file else default_key_file(path)
    return path, ledger_key_from_file(key_file)


def _ledger(args: argparse.Namespace, create: bool = False):  # -> Ledger
    from fedprofile.privacy.ledger import Ledger

    path, key = _ledger_key(args)
    return Ledger.create(path, key) if create else Ledger.open(path, key)


def cmd_ledger_init(args: argparse.Namespace) -> int:
    with _ledger(args, create=True) as ledger:
        _progress(f"privacy-budget ledger created at {ledger.path}")
    return 0


def cmd_ledger_cap(args: argparse.Namespace) -> int:
    with _ledger(args) as ledger:
        ledger.set_cap(args.silo, args.purpose, args.epsilon, args.delta, reason=args.reason)
        _progress(f"cap for {args.silo} / {args.purpose}: epsilon {args.epsilon:g}, delta "
                  f"{args.delta:g} (spent so far {ledger.spent(args.silo, args.purpose):.3f})")
    return 0


def cmd_ledger_show(args: argparse.Namespace) -> int:
    with _ledger(args) as ledger:
        rows = ledger.summary()
        print(f"{'silo':<14} {'purpose':<24} {'cap eps':>8} {'cap delta':>10} {'spent':>8} "
              f"{'reserved':>9} {'remaining':>10} {'runs':>5}")
        for r in rows:
            print(f"{r['silo']:<14} {r['purpose']:<24} {r['cap_epsilon'] or 0:>8.3f} "
                  f"{r['cap_delta'] or 0:>10.1e} {r['spent']:>8.3f} {r['reserved']:>9.3f} "
                  f"{(r['remaining'] if r['remaining'] is not None else float('nan')):>10.3f} "
                  f"{r['runs']:>5}")
        print(f"worst case for one customer present in every silo (all purposes, basic "
              f"composition): epsilon {ledger.worst_case_per_customer():.3f}")
    return 0


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    from fedprofile.privacy.ledger import LedgerTamperError

    path = Path(args.ledger).expanduser()
    try:
        with _ledger(args) as ledger:
            report = ledger.verify()
    except LedgerTamperError as err:  # opening verifies; report every problem it found
        report = err.report
    if report.ok:
        _progress(f"ledger {path}: OK, {report.entries} entries, {report.caps} cap changes; "
                  f"head seq {report.head.seq} hash {report.head.hash}")
        return 0
    print(f"fedprofile: ledger {path} FAILED verification:", file=sys.stderr)
    for problem in report.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_RUNTIME


def cmd_audit_report(args: argparse.Namespace) -> int:
    from fedprofile.privacy.audit import write_report

    path, key = _ledger_key(args)
    silos = Path(args.silos_dir).expanduser() if args.silos_dir else default_workspace() / "silos"
    html_path, json_path = write_report(path, key, Path(args.out).expanduser(), silos)
    _progress(f"audit report: {html_path} (self-contained HTML) and {json_path} (JSON twin)")
    return 0


def cmd_superlink_stop(args: argparse.Namespace) -> int:
    from fedprofile.server.local_superlink import stop_managed_superlink

    stopped = stop_managed_superlink(args.port)
    if stopped:
        _progress(f"stopped Flower's local SuperLink and the processes it started "
                  f"(pids {', '.join(map(str, stopped))})")
    else:
        _progress("no Flower-managed local SuperLink is running"
                  + (f" on port {args.port}" if args.port else ""))
    return 0


# -- parser ------------------------------------------------------------------
def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, help="federated rounds (num-server-rounds)")
    p.add_argument("--local-epochs", type=int, help="epochs each silo trains per round")
    p.add_argument("--seed", type=int, help="model initialisation and shuffling seed")
    keys = ", ".join(f.name.replace("_", "-") for f in fields(TrainConfig))
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help=f"any training setting ({keys})")


def _add_run_location(p: argparse.ArgumentParser) -> None:
    """Where a Flower job finds its silos and writes its run directory."""
    p.add_argument("--workspace", help="workspace (default: $FEDPROFILE_HOME or ~/.fedprofile)")
    p.add_argument("--silos-dir", help="directory holding one sub-directory per silo "
                   "(default: <workspace>/silos)")
    p.add_argument("--run-dir", help="where results go (default: <workspace>/runs/<run id>)")


def _add_key_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keyring", help="the key domain's keyring (default: $FEDPROFILE_KEYRING)")
    p.add_argument("--key-file", help="the key file that unlocks it (default: "
                   "$FEDPROFILE_KEY_FILE, else $FEDPROFILE_KEY_PASSPHRASE, else a prompt)")


def _add_ingest_key_options(p: argparse.ArgumentParser) -> None:
    """Key options of every command that writes a silo: the keyring, and the raw-id policy."""
    _add_key_options(p)
    p.add_argument("--drop-raw-ids", action="store_true",
                   help="keep no raw identifiers at all (default: sealed in the silo store)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedprofile",
        description="Privacy-preserving federated customer profiling across business-line silos.",
    )
    parser.add_argument("--version", action="version", version=f"fedprofile {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="generate a platform, build silos, train federatedly, compare")
    p.add_argument("--workspace", help="directory for the demo (default: $FEDPROFILE_HOME/demo "
                   "or ~/.fedprofile/demo); rewritten on every run")
    p.add_argument("--customers", type=int, default=20_000, help="people on the platform")
    p.add_argument("--platform-seed", type=int, default=7, help="generator seed")
    p.add_argument("--leak-guard", action="store_true", help="inspect every ClientApp reply "
                   "and every file written outside the silos for raw identifiers and rows")
    _add_train_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="write the synthetic travel platform (one folder per line)")
    p.add_argument("--out", help="platform directory (default: <workspace>/platform)")
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--overwrite", action="store_true", help="replace an existing platform")
    p.set_defaults(func=cmd_generate)

    key = sub.add_parser("key", help="pseudonymisation keys of a key domain (never on the server)")
    key_sub = key.add_subparsers(dest="key_command", required=True)
    p = key_sub.add_parser("generate", help="write a new random key file (mode 0600)")
    p.add_argument("path")
    p.set_defaults(func=cmd_key_generate)
    p = key_sub.add_parser("init", help="create a key domain's keyring (version 1)")
    p.add_argument("--domain", required=True, help="key domain name, e.g. the company")
    _add_key_options(p)
    p.set_defaults(func=cmd_key_init)
    p = key_sub.add_parser("rotate", help="new active key version; older versions retired")
    _add_key_options(p)
    p.set_defaults(func=cmd_key_rotate)
    p = key_sub.add_parser("info", help="versions, status and fingerprints (no key material)")
    _add_key_options(p)
    p.set_defaults(func=cmd_key_info)

    silo = sub.add_parser("silo", help="manage a business line's local store")
    silo_sub = silo.add_subparsers(dest="silo_command", required=True)
    p = silo_sub.add_parser("ingest", help="load customers and/or orders (CSV or Parquet), "
                            "all or nothing")
    p.add_argument("--silo", required=True, help="the silo's directory (created if missing)")
    p.add_argument("--customers", type=Path, help="customers file (.csv or .parquet)")
    p.add_argument("--orders", type=Path, help="orders file (.csv or .parquet)")
    p.add_argument("--name", help="silo name (default: the directory's name)")
    _add_ingest_key_options(p)
    p.set_defaults(func=cmd_silo_ingest)
    p = silo_sub.add_parser("ingest-interactions", help="load any user-item interactions file "
                            "(CSV or Parquet) through a column mapping, all or nothing")
    p.add_argument("silo_dir", metavar="SILO_DIR", help="the silo's directory (created if missing)")
    p.add_argument("file", metavar="FILE", help="interactions file (.csv or .parquet)")
    p.add_argument("--map", action="append", metavar="TARGET=COLUMN",
                   help="which file column is which field: user, item and timestamp are "
                   "required; value, region and opt_out optional (repeat the option)")
    p.add_argument("--name", help="silo name (default: the directory's name)")
    _add_ingest_key_options(p)
    p.set_defaults(func=cmd_silo_ingest_interactions)
    p = silo_sub.add_parser("rekey", help="move the silo's pseudonyms to the keyring's active "
                            "version after a rotation")
    p.add_argument("--silo", required=True)
    _add_key_options(p)
    p.set_defaults(func=cmd_silo_rekey)
    p = silo_sub.add_parser("info", help="counts and ingestion history (no customer rows)")
    p.add_argument("--silo", required=True)
    p.set_defaults(func=cmd_silo_info)

    retail = sub.add_parser("retail", help="the real UCI Online Retail data set as regional "
                            "silos")
    retail_sub = retail.add_subparsers(dest="retail_command", required=True)
    p = retail_sub.add_parser("prepare", help="clean the data set, write one interactions file "
                              "per region and ingest each into its silo (uk, eu, rest)")
    p.add_argument("--silos-dir", required=True, help="new directory for the regional silos")
    p.add_argument("--data", help="online_retail.csv.gz (default: "
                   "../shared/data/online_retail/ beside this checkout)")
    p.add_argument("--limit", type=int, help="read only the first N rows (quick trials)")
    _add_ingest_key_options(p)
    p.set_defaults(func=cmd_retail_prepare)

    p = sub.add_parser("train", help="federated training on Flower's Simulation Engine, "
                       "with the centralized oracle and silo-alone baselines")
    _add_run_location(p)
    p.add_argument("--no-oracle", action="store_true", help="skip the centralized oracle "
                   "(and, for the recommender, the most-popular baseline)")
    p.add_argument("--model", choices=("propensity", "recommender"),
                   help="what to train (default: propensity; same as --set model=...)")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)

    deploy = sub.add_parser("deploy", help="Flower's Deployment Engine: credentials, and a "
                            "loopback federation (TLS, SuperNode authentication) to run on")
    deploy_sub = deploy.add_subparsers(dest="deploy_action", required=True)
    p = deploy_sub.add_parser("run", help="federated training on a loopback deployment: a TLS "
                              "SuperLink with SuperNode authentication and one SuperNode process "
                              "per silo, then `flwr run` of the same app as the simulation")
    _add_run_location(p)
    p.add_argument("--no-oracle", action="store_true", help="skip the centralized oracle")
    p.add_argument("--model", choices=("propensity", "recommender"), help="what to train")
    _add_train_options(p)
    p.add_argument("--cold-clientapps", action="store_true",
                   help="start every ClientApp task from a bare interpreter, as Flower's own "
                        "SuperExec does, instead of forking it from one that has imported "
                        "torch and opacus (slower; for comparison or troubleshooting)")
    p.set_defaults(func=cmd_train, deployment=True)
    p = deploy_sub.add_parser("credentials", help="write a CA, the SuperLink's TLS certificate "
                              "and one SuperNode key pair per silo, for real hosts")
    p.add_argument("--out", required=True, help="an empty directory")
    p.add_argument("--host", action="append", help="a host name or IP the SuperLink is reached "
                   "at (repeatable; default localhost and 127.0.0.1)")
    p.add_argument("--silo", action="append", default=[], help="a silo name (repeatable)")
    p.add_argument("--keys-only", action="store_true", help="only SuperNode key pairs (a silo "
                   "making its own on its own host)")
    p.set_defaults(func=cmd_deploy_credentials)

    p = sub.add_parser("profile", help="profile a silo's customers locally: RFM, intervals, "
                       "next purchase, churn risk, CLV and tags")
    p.add_argument("silo_dir")
    p.add_argument("--as-of", help="profile as of this date, YYYY-MM-DD (default: the day "
                   "after the silo's last interaction)")
    p.add_argument("--tags", help="tag rules TOML (default: the packaged default_tags.toml)")
    p.add_argument("--out", help="profiles CSV (default: <silo_dir>/profiles.csv)")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("segment", help="federated customer segmentation (DP k-means over "
                       "profiles) on Flower's Simulation Engine, with a k-suppressed report")
    _add_run_location(p)
    _add_train_options(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("joint", help="cross-line joint (vertical) model on Flower's Simulation "
                       "Engine: PSI-aligned customers, features in some silos, labels in another, "
                       "label-DP gradients; charged to the ledger under joint-model")
    _add_run_location(p)
    p.add_argument("--label", help="the silo whose labels are learned (joint-label-silo, "
                   "default datapacks)")
    p.add_argument("--features", help="comma-separated feature silos (joint-feature-silos, "
                   "default flights)")
    p.add_argument("--no-reference", action="store_true", help="skip the simulation-only "
                   "comparisons (feature silo alone, pooled oracle)")
    _add_train_options(p)
    p.set_defaults(func=cmd_joint)

    p = sub.add_parser("regional", help="regional recommendation: per-region top products "
                       "from one DP release per silo on Flower's Simulation Engine; `regional "
                       "serve` writes each customer's regional list inside a silo")
    _add_run_location(p)
    _add_train_options(p)
    p.set_defaults(func=cmd_regional)
    regional_sub = p.add_subparsers(dest="regional_action")
    p = regional_sub.add_parser("serve", help="write every customer's region top-K into the "
                                "silo (opted-out customers: the overall list)")
    p.add_argument("silo_dir")
    p.add_argument("--report", required=True, help="the run's regional.json")
    p.add_argument("--exclude-bought", action="store_true",
                   help="leave out items the customer already bought (filled up from the "
                   "overall list)")
    p.set_defaults(func=cmd_regional_serve)

    p = sub.add_parser("recommend", help="top-K recommendations for a silo's customers from "
                       "a trained federated recommender (opted-out customers: non-personalised)")
    p.add_argument("silo_dir")
    p.add_argument("--model", required=True, help="the run's model.pt")
    p.add_argument("--k", type=int, default=10, help="list length")
    p.add_argument("--diversity", type=float, default=0.0, help="0..1: MMR re-ranking weight "
                   "against near-duplicate items")
    p.add_argument("--explore", type=float, default=0.0, help="0..1: share of the list given "
                   "to items outside the customer's history")
    p.add_argument("--seed", type=int, default=0, help="exploration draws")
    p.set_defaults(func=cmd_recommend)

    campaign = sub.add_parser("campaign", help="marketing campaigns a silo plans on its own "
                              "customers (A/B split by pseudonym, opted-out customers left out)")
    campaign_sub = campaign.add_subparsers(dest="case", required=True)
    for case, help_text in (
            ("cross-sell", "case 1: the sealed PSI audience (flyers abroad without our data "
             "pack), each offered their destination's pack"),
            ("retention", "case 2: membership tiers from frequency and spend, a coupon per tier"),
            ("repurchase", "case 3: remind customers due to buy again (own rhythm), A only")):
        p = campaign_sub.add_parser(case, help=help_text)
        p.add_argument("silo_dir")
        p.add_argument("--id", required=True, help="campaign id (letters, digits, . _ -)")
        p.add_argument("--as-of", help="plan as of this date, YYYY-MM-DD (default: the day "
                       "after the silo's last interaction)")
        p.add_argument("--treated-share", type=float, default=0.5, help="share in group A")
        if case == "cross-sell":
            p.add_argument("--audience", default="cross-sell-datapack",
                           help="the sealed PSI audience's name (`fedprofile psi --audience`)")
        if case == "retention":
            p.add_argument("--tiers", help="tiers TOML (default: the packaged default_tiers.toml)")
        if case in ("cross-sell", "retention"):
            p.add_argument("--window-days", type=int, default=3,
                           help="days over which conversion is measured")
        else:
            p.add_argument("--due-within-days", type=int, default=14)
            p.add_argument("--lead-days", type=int, default=2,
                           help="send the reminder this many days before the predicted date")
        _add_key_options(p)
        p.set_defaults(func=cmd_campaign)
    p = campaign_sub.add_parser("simulate", help="simulation only: play a planned campaign out "
                                "against the synthetic platform's ground truth; A/B report")
    p.add_argument("silo_dir")
    p.add_argument("--id", required=True, help="the campaign's id")
    p.add_argument("--platform", required=True, help="the generated platform directory")
    p.add_argument("--line", help="line whose orders count as conversions (default: the silo's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k-min", type=int, default=DEFAULT_K_MIN,
                   help="the report by offer withholds groups under this many customers "
                        f"(default {DEFAULT_K_MIN})")
    p.add_argument("--out", help="report directory (default: <workspace>/campaigns/<id>)")
    _add_key_options(p)
    p.set_defaults(func=cmd_campaign_simulate)

    p = sub.add_parser("simulate", help="GDPR/PIPL evaluation from a scenario file: privacy-"
                       "utility sweep, membership-inference audit, re-identification check, "
                       "HTML report")
    p.add_argument("scenario", help="a scenario TOML file, or a packaged one: default, scale")
    p.add_argument("--out", help="run directory (new or empty; default: "
                   "<workspace>/simulations/<name>-<time>)")
    p.add_argument("--keep-work", action="store_true", help="keep the synthetic platform and "
                   "silo stores (work/) after the run")
    p.add_argument("--print", action="store_true", help="print the scenario file and exit "
                   "(start your own from `fedprofile simulate default --print`)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("psi", help="private set intersection between two silos over Flower "
                       "(first marketing case: international flyers without a data pack)")
    _add_run_location(p)
    p.add_argument("--receiver", default="flights", help="silo that learns the result")
    p.add_argument("--sender", default="datapacks", help="silo that learns only the receiver's "
                   "set size")
    p.add_argument("--selection", default="international-flyers",
                   choices=["all", "international-flyers"],
                   help="which of the receiver's customers take part")
    p.add_argument("--cardinality", action="store_true",
                   help="the receiver learns only how many customers are shared")
    p.add_argument("--audience", default="cross-sell-datapack", help="audience name")
    p.add_argument("--key-file", help="the silos' key file (default: $FEDPROFILE_KEY_FILE)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any run setting")
    p.set_defaults(func=cmd_psi)

    ledger = sub.add_parser("ledger", help="the privacy-budget ledger (caps, spends, verification)")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)

    def _ledger_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ledger", required=True, help="the ledger file")
        p.add_argument("--key-file", help="the ledger's key file (default: ledger.key beside it)")

    p = ledger_sub.add_parser("init", help="create an empty ledger")
    _ledger_opts(p)
    p.set_defaults(func=cmd_ledger_init)
    p = ledger_sub.add_parser("cap", help="set the epsilon/delta cap of a silo and purpose")
    _ledger_opts(p)
    p.add_argument("--silo", required=True)
    p.add_argument("--purpose", required=True)
    p.add_argument("--epsilon", type=float, required=True)
    p.add_argument("--delta", type=float, required=True)
    p.add_argument("--reason", help="why (recorded with the change)")
    p.set_defaults(func=cmd_ledger_cap)
    p = ledger_sub.add_parser("show", help="budget spent vs cap per silo and purpose")
    _ledger_opts(p)
    p.set_defaults(func=cmd_ledger_show)
    p = ledger_sub.add_parser("verify", help="check the hash chain and signatures")
    _ledger_opts(p)
    p.set_defaults(func=cmd_ledger_verify)

    audit = sub.add_parser("audit", help="compliance audit of privacy spends and controls")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    p = audit_sub.add_parser("report", help="write audit-report.html (self-contained) and .json")
    _ledger_opts(p)
    p.add_argument("--silos-dir", help="silos whose key versions to list "
                   "(default: <workspace>/silos)")
    p.add_argument("--out", default=".", help="output directory (default: here)")
    p.set_defaults(func=cmd_audit_report)

    link = sub.add_parser("superlink", help="Flower's managed local SuperLink (used by `flwr run .`)")
    link_sub = link.add_subparsers(dest="superlink_command", required=True)
    p = link_sub.add_parser("stop", help="stop the local SuperLink `flwr run .` left running, "
                            "and every process it started")
    p.add_argument("--port", help="its port (default: $FLWR_LOCAL_SUPERLINK_HTTP_API_PORT "
                   "or 39091, Flower's default)")
    p.set_defaults(func=cmd_superlink_stop)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from fedprofile.client.ingest import IngestError
    from fedprofile.client.store import StoreError
    from fedprofile.privacy.keys import KeyringError
    from fedprofile.privacy.ledger import LedgerError
    from fedprofile.privacy.sealed import TamperError
    from fedprofile.server.local_superlink import SimulationError
    from fedprofile.simulations.scenario import AuditViolation

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except IngestError as err:
        print(f"fedprofile: {err}", file=sys.stderr)
        return EXIT_INPUT
    except (ConfigError, StoreError, KeyringError, TamperError, LedgerError, OSError,
            ValueError) as err:
        print(f"fedprofile: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except SimulationError as err:
        print(f"fedprofile: training failed: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    except AuditViolation as err:
        print(f"fedprofile: PRIVACY AUDIT FAILED: {err}", file=sys.stderr)
        return EXIT_AUDIT
    except KeyboardInterrupt:
        print("fedprofile: interrupted; no process was left running", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
