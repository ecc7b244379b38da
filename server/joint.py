"""The joint (vertical) model job on the server: a relay by anonymous row order.

The label silo holds the labels and the top model; each feature silo a bottom
model over its own columns (:mod:`fedprofile.client.joint`). The server:

1. relays the alignment PSI (label silo as receiver, every feature silo as
   sender) and then each feature silo's row positions: it sees blinded values,
   positions in lists only their owners can read, and set and row counts;
2. reserves the spends in the privacy-budget ledger under purpose
   ``joint-model``: the label silo's label-DP gradients always, each feature
   silo's embeddings when they are noised;
3. runs ``joint-rounds`` rounds: embeddings from the feature silos (the
   gradient of the previous round rides along), to the label silo, gradients
   back; then one evaluation on the test rows;
4. writes ``joint.json``: the joint model's test AUC next to the label silo's
   own block alone (what that silo could do without the others), sizes, the
   loss per round and what each silo spent.

Every release is counted when its request is *sent*: a run that stops
half-way settles the releases that happened, and a request that failed is
charged too (a silo may have released before another one failed). The label silo never sees a feature row,
a feature silo never sees a label, and nobody sees an identifier.
"""

from __future__ import annotations

import secrets
import time
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedprofile.client.joint import EMBEDDING_MECHANISM, GRADIENT_MECHANISM
from fedprofile.config import ConfigError, TrainConfig
from fedprofile.files import atomic_write_json

from .budget import charged, gaussian_spent
from .psi import PsiJobError, ask_all, ask_one, describe_silos

JOINT_FILE = "joint.json"


def joint_config(cfg: TrainConfig, session: str, key_domain: str, key_version: int,
                 run_id: str = "") -> ConfigRecord:
    """What every party of a joint run needs; no paths, no secrets."""
    return ConfigRecord({
        "job": "joint", "session": session, "key-domain": key_domain, "key-version": key_version,
        "joint-label-silo": cfg.joint_label_silo,
        "joint-n-features": len(cfg.joint_features),
        "joint-horizon-days": cfg.joint_horizon_days, "joint-rounds": cfg.joint_rounds,
        "joint-clip": cfg.joint_clip, "joint-noise-gradient": cfg.joint_noise_gradient,
        "joint-noise-embedding": cfg.joint_noise_embedding, "as-of": cfg.as_of,
        "joint-audience": cfg.joint_audience, "joint-remote-head": bool(cfg.joint_audience),
        "dp-delta": cfg.dp_delta, "seed": cfg.seed, "joint-run": run_id,
        "joint-split": "train", "joint-round": 0,
    })


def _with(config: ConfigRecord, **values: Any) -> ConfigRecord:
    out = ConfigRecord(dict(config))
    for key, value in values.items():
        out[key.replace("_", "-")] = value
    return out


def _parties(grid: Grid, cfg: TrainConfig) -> tuple[int, list[int], tuple[str, int]]:
    silos = describe_silos(grid, cfg.round_timeout)
    names = (cfg.joint_label_silo, *cfg.joint_features)
    missing = [n for n in names if n not in silos]
    if missing:
        raise ConfigError(f"joint silo(s) {', '.join(missing)} not in the federation "
                          f"(silos: {', '.join(sorted(silos))})")
    domains = {(str(silos[n][1]["key-domain"]), int(silos[n][1]["key-version"])) for n in names}
    if len(domains) != 1:
        raise PsiJobError(f"the joint silos pseudonymise with different key domains or versions "
                          f"({sorted(domains)}): their customers cannot be aligned; re-key them "
                          "to one domain's active version")
    return silos[cfg.joint_label_silo][0], [silos[n][0] for n in cfg.joint_features], domains.pop()


def align(grid: Grid, cfg: TrainConfig, config: ConfigRecord, label: int,
          features: list[int]) -> dict[str, int]:
    """The alignment PSI; every party ends with the same rows in the same (random) order."""
    timeout = cfg.round_timeout
    request = ask_one(grid, label, "joint_align_request", RecordDict({"config": config}), timeout)
    a = request.content["blinded"]["a"]
    answers = ask_all(grid, [(node, "joint_align_respond", RecordDict(
        {"config": config, "blinded": ArrayRecord({"a": a})})) for node in features], timeout)
    blinded: dict[str, Any] = {}
    for k, reply in enumerate(answers):
        blinded[f"b-{k}"] = reply.content["blinded"]["b"]
        blinded[f"ab-{k}"] = reply.content["blinded"]["ab"]
    finish = ask_one(grid, label, "joint_align_finish", RecordDict(
        {"config": config, "blinded": ArrayRecord(blinded)}), timeout)
    alignment = finish.content["alignment"]
    ask_all(grid, [(node, "joint_align_set", RecordDict({"config": config, "alignment": ArrayRecord(
        {"pos": alignment[f"pos-{k}"]})}))
        for k, node in enumerate(features)], timeout)
    sizes = {"label_silo_customers": int(a.shape[0]),
             **{f"feature_silo_{k}_customers": int(blinded[f"b-{k}"].shape[0])
                for k in range(len(features))},
             "aligned_rows": int(alignment["pos-0"].shape[0])}
    return sizes


def score_audience(grid: Grid, cfg: TrainConfig, config: ConfigRecord, label: int,
                   feature: int) -> int:
    """Case 1: the feature silo's sealed audience scored by the joint model; scores stay there.

    The feature silo releases its audience's embeddings (a fresh random
    order), the label silo scores them with its remote-only head (it does not
    know these people, so it has no block of its own for them; the head was
    trained on the same released embeddings), the feature silo seals the
    scores next to the audience. Returns how many were scored.
    """
    timeout = cfg.round_timeout
    embedded = ask_one(grid, feature, "joint_audience_embed", RecordDict(
        {"config": config}), timeout)
    z = embedded.content["embeddings"]["z"]
    scored = ask_one(grid, label, "joint_score", RecordDict(
        {"config": config, "embeddings": ArrayRecord({"z-0": z})}), timeout)
    kept = ask_one(grid, feature, "joint_audience_scores", RecordDict(
        {"config": config, "scores": scored.content["scores"]}), timeout)
    n = int(kept.content["status"]["scored"])
    log(INFO, "fedprofile: joint model: audience %s scored (%d customers); the scores are sealed "
        "in the feature silo", cfg.joint_audience, n)
    return n


def run_joint(grid: Grid, run_id: str, cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """Align, reserve, train, evaluate, settle; returns what ``joint.json`` holds."""
    started = time.perf_counter()
    label, features, (domain, version) = _parties(grid, cfg)
    session = secrets.token_hex(16)
    config = joint_config(cfg, session, domain, version, run_dir.name)
    everyone = [label, *features]
    log(INFO, "fedprofile: joint model: labels in %s, features from %s; aligning customers (PSI)",
        cfg.joint_label_silo, ", ".join(cfg.joint_features))
    try:
        sizes = align(grid, cfg, config, label, features)
        log(INFO, "fedprofile: joint model: %d aligned rows (customers every joint silo has, "
            "among the label silo's by the training snapshot)", sizes["aligned_rows"])
        if sizes["aligned_rows"] == 0:
            raise PsiJobError("no customer is shared by all the joint silos (by the training "
                              "snapshot): nothing to train or test on")
        result = _train(grid, cfg, config, run_id, run_dir, label, features)
    finally:
        try:
            ask_all(grid, [(n, "joint_forget", RecordDict({"config": config})) for n in everyone],
                     cfg.round_timeout)
        except PsiJobError as err:  # the run's own error matters more
            log(INFO, "fedprofile: joint model: a silo could not drop the session: %s", err)
    out = {"label_silo": cfg.joint_label_silo, "feature_silos": list(cfg.joint_features),
           "horizon_days": cfg.joint_horizon_days, "sizes": sizes, **result,
           "server_learned": "blinded values, row positions, set and row counts, clipped "
                             "embeddings, noised gradients, the label silo's mean training loss "
                             "per round, test AUCs and positive rate, audience scores",
           "seconds": time.perf_counter() - started}
    atomic_write_json(run_dir / JOINT_FILE, out)
    log(INFO, "fedprofile: joint model: test AUC %.3f (label silo alone %.3f); written to %s",
        out["evaluation"]["auc"], out["evaluation"]["label_alone_auc"], run_dir / JOINT_FILE)
    return out


def _train(grid: Grid, cfg: TrainConfig, config: ConfigRecord, run_id: str, run_dir: Path,
           label: int, features: list[int]) -> dict[str, Any]:
    noisy_embeddings = cfg.joint_noise_embedding > 0
    charged_nodes = [label, *(features if noisy_embeddings else [])]
    sent = {"gradients": 0, "embeddings": 0}
    history: list[dict[str, float]] = []
    gradients: dict[int, Any] = {}
    scored = 0
    timeout = cfg.round_timeout
    with charged(grid, cfg, config, run_id, run_dir.name, nodes=charged_nodes) as budget:
        try:
            for round_ in range(1, cfg.joint_rounds + 2):
                split = "train" if round_ <= cfg.joint_rounds else "test"
                step = _with(config, joint_split=split, joint_round=round_)
                requests = []
                for k, node in enumerate(features):
                    content = RecordDict({"config": step})
                    if k in gradients:
                        content["gradient"] = ArrayRecord({"g": gradients[k]})
                    requests.append((node, "joint_embed", content))
                sent["embeddings"] += 1
                replies = ask_all(grid, requests, timeout)
                embeddings = {f"z-{k}": r.content["embeddings"]["z"] for k, r in enumerate(replies)}
                if split == "train":
                    sent["gradients"] += 1
                top = ask_one(grid, label, "joint_top", RecordDict(
                    {"config": step, "embeddings": ArrayRecord(embeddings)}), timeout)
                metrics = top.content["metrics"]
                if split == "test":
                    evaluation = {"auc": float(metrics["auc"]),
                                  "label_alone_auc": float(metrics["label-alone-auc"]),
                                  "test_positive_rate": float(metrics["test-positive-rate"])}
                    break
                gradients = {k: top.content["gradients"][f"g-{k}"] for k in range(len(features))}
                history.append({"round": round_, "train_loss": float(metrics["train-loss"])})
                log(INFO, "fedprofile: joint model round %d/%d: label-silo train loss %.4f",
                    round_, cfg.joint_rounds, float(metrics["train-loss"]))
            if cfg.joint_audience:
                sent["embeddings"] += 1  # charged as one more release (conservative)
                scored = score_audience(grid, cfg, config, label, features[0])
        finally:
            spends: dict[str, dict[str, float]] = {}
            for silo, reservation in budget.reservations.items():
                sigma = float(reservation.params["noise_multiplier"])
                releases = sent["gradients"] if silo == cfg.joint_label_silo else sent["embeddings"]
                if releases:
                    spends[silo] = gaussian_spent(sigma, cfg.dp_delta, releases, cfg.joint_clip)
            budget.spent = spends
    privacy = {
        "purpose": cfg.effective_purpose, "delta": cfg.dp_delta, "neighbouring": "replace_one",
        "privacy_unit": "customer",
        "gradients": {"mechanism": GRADIENT_MECHANISM, "silo": cfg.joint_label_silo,
                      "noise_multiplier": cfg.joint_noise_gradient, "clip": cfg.joint_clip,
                      "releases": sent["gradients"],
                      "epsilon": spends.get(cfg.joint_label_silo, {}).get("epsilon-rdp")},
        "embeddings": ({"mechanism": EMBEDDING_MECHANISM, "noise_multiplier": cfg.joint_noise_embedding,
                        "clip": cfg.joint_clip, "releases": sent["embeddings"],
                        "epsilon": {s: spends.get(s, {}).get("epsilon-rdp")
                                    for s in cfg.joint_features}}
                       if noisy_embeddings else
                       {"mechanism": "clipped, not noised", "clip": cfg.joint_clip,
                        "releases": sent["embeddings"], "epsilon": None,
                        "note": "no DP claim for the feature silos' embeddings: set "
                                "joint-noise-embedding > 0 to make one (at a utility cost)"}),
        "ledger": budget.spent,
    }
    return {"rounds": history, "evaluation": evaluation, "privacy": privacy,
            "audience": ({"name": cfg.joint_audience, "scored": scored}
                         if cfg.joint_audience else None)}
