"""Vertical (split) learning: the release functions, accounting, and that joint beats single blocks."""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import fedprofile.models.split_learning as sl
from fedprofile.models.metrics import roc_auc
from fedprofile.models.split_learning import (
    VerticalConfig,
    predict_vertical,
    release_embeddings,
    release_gradients,
    train_vertical,
    vertical_privacy,
)
from fedprofile.privacy.accounting import MechanismStep, epsilon


def two_block_problem(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Label depends on both blocks jointly (additively); each block alone sees half the signal."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 5)).astype(np.float32)
    b = rng.normal(size=(n, 7)).astype(np.float32)
    score = a[:, 0] + a[:, 1] + b[:, 0] - b[:, 2]
    y = (score + 0.3 * rng.normal(size=n) > 0).astype(np.float32)
    return [a, b], y


FAST = VerticalConfig(rounds=8, batch_size=128, lr=1e-2, embed_dim=4, seed=3)


# --------------------------------------------------------------------------- releases


def test_release_embeddings_clips_each_row() -> None:
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    out = release_embeddings(rows, clip=1.0, noise_multiplier=0.0)
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))
    assert not out.requires_grad


@pytest.mark.parametrize("sigma,clip", [(0.5, 2.0), (3.0, 0.5)])
def test_release_embeddings_noise_has_calibrated_std(sigma: float, clip: float) -> None:
    gen = torch.Generator().manual_seed(1)
    out = release_embeddings(torch.zeros(20000, 4), clip, sigma, gen)
    std = float(out.std())
    assert abs(std - sigma * clip) < 0.03 * sigma * clip
    assert abs(float(out.mean())) < 0.05 * sigma * clip


def test_release_gradients_clips_rows_jointly_across_blocks_and_adds_calibrated_noise() -> None:
    g1 = torch.full((5, 3), 2.0)
    g2 = torch.full((5, 2), -2.0)
    out = release_gradients([g1, g2], clip=1.5, noise_multiplier=0.0)
    assert [t.shape for t in out] == [(5, 3), (5, 2)]
    joint = torch.cat(out, dim=1).norm(dim=1)
    assert torch.allclose(joint, torch.full((5,), 1.5))
    # direction kept
    assert torch.allclose(out[0] / out[0].norm(dim=1, keepdim=True),
                          g1 / g1.norm(dim=1, keepdim=True))
    gen = torch.Generator().manual_seed(2)
    noisy = release_gradients([torch.zeros(20000, 3), torch.zeros(20000, 2)], 0.8, 2.0, gen)
    std = float(torch.cat(noisy, dim=1).std())
    assert abs(std - 1.6) < 0.03 * 1.6


def test_release_functions_take_no_labels_or_features_by_signature() -> None:
    assert list(inspect.signature(release_embeddings).parameters) == [
        "embeddings", "clip", "noise_multiplier", "generator"]
    assert list(inspect.signature(release_gradients).parameters) == [
        "gradients", "clip", "noise_multiplier", "generator"]


def test_training_passes_only_embeddings_and_embedding_gradients_across(
        monkeypatch: pytest.MonkeyPatch) -> None:
    blocks, y = two_block_problem(300, 0)
    label_own = np.random.default_rng(9).normal(size=(300, 6)).astype(np.float32)
    calls: dict[str, list] = {"emb": [], "grad": []}
    real_emb, real_grad = sl.release_embeddings, sl.release_gradients

    def spy_emb(embeddings, clip, noise_multiplier, generator=None):  # type: ignore[no-untyped-def]
        calls["emb"].append(embeddings)
        return real_emb(embeddings, clip, noise_multiplier, generator)

    def spy_grad(gradients, clip, noise_multiplier, generator=None):  # type: ignore[no-untyped-def]
        calls["grad"].append(list(gradients))
        return real_grad(gradients, clip, noise_multiplier, generator)

    monkeypatch.setattr(sl, "release_embeddings", spy_emb)
    monkeypatch.setattr(sl, "release_gradients", spy_grad)
    cfg = dataclasses.replace(FAST, rounds=2, batch_size=100, embed_dim=3, label_block=0,
                              noise_embedding=0.5, noise_gradient=0.5)
    train_vertical([label_own, *blocks], y, cfg)
    # Feature side: one release per remote block per round, of every row at once (the label
    # silo's own block never crosses), each an embedding [rows, embed_dim] (embed_dim 3 is not
    # any raw width: 6, 5, 7).
    assert len(calls["emb"]) == 2 * 2
    for e in calls["emb"]:
        assert e.shape == (300, 3)
    # Label side: one call per round with one gradient per remote block, same shape as the
    # embeddings; nothing with the labels' shape or a raw feature width crosses.
    assert len(calls["grad"]) == 2
    for grads in calls["grad"]:
        assert [g.shape for g in grads] == [(300, 3), (300, 3)]


# --------------------------------------------------------------------------- training


def test_deterministic_without_noise_and_entropy_noise_with_it() -> None:
    blocks, y = two_block_problem(400, 1)
    cfg = dataclasses.replace(FAST, rounds=3)
    r1, r2 = train_vertical(blocks, y, cfg), train_vertical(blocks, y, cfg)
    assert r1.loss_history == r2.loss_history
    assert np.array_equal(predict_vertical(r1, blocks), predict_vertical(r2, blocks))
    # Scores go through a release; with embedding noise configured it is noised there too.
    noisy_scores = dataclasses.replace(r1, config=dataclasses.replace(cfg, noise_embedding=2.0))
    assert not np.array_equal(predict_vertical(noisy_scores, blocks), predict_vertical(r1, blocks))
    assert np.array_equal(predict_vertical(noisy_scores, blocks, release_noise=False),
                          predict_vertical(r1, blocks))
    noisy = dataclasses.replace(cfg, noise_embedding=1.0, noise_gradient=1.0)
    n1, n2 = train_vertical(blocks, y, noisy), train_vertical(blocks, y, noisy)
    assert n1.loss_history != n2.loss_history  # noise is not drawn from the (server-known) seed


def test_joint_beats_each_single_block() -> None:
    blocks, y = two_block_problem(3000, 2)
    test_blocks, y_test = two_block_problem(2000, 5)
    joint = train_vertical(blocks, y, FAST)
    auc_joint = roc_auc(y_test, predict_vertical(joint, test_blocks))
    singles = []
    for k in range(2):
        r = train_vertical([blocks[k]], y, FAST)
        singles.append(roc_auc(y_test, predict_vertical(r, [test_blocks[k]])))
    assert auc_joint > 0.85
    assert auc_joint > max(singles) + 0.08, (auc_joint, singles)
    assert joint.loss_history[-1] < joint.loss_history[0]


def test_joint_with_label_block_and_dp_still_learns() -> None:
    blocks, y = two_block_problem(3000, 2)
    test_blocks, y_test = two_block_problem(2000, 5)
    cfg = dataclasses.replace(FAST, label_block=0, noise_embedding=1.0, noise_gradient=1.0)
    r = train_vertical(blocks, y, cfg)
    assert roc_auc(y_test, predict_vertical(r, test_blocks)) > 0.8


def test_rejects_misaligned_blocks() -> None:
    blocks, y = two_block_problem(100, 0)
    with pytest.raises(ValueError, match="aligned"):
        train_vertical([blocks[0], blocks[1][:50]], y, FAST)


# --------------------------------------------------------------------------- accounting


@pytest.mark.parametrize("neighbouring,factor", [("replace_one", 2.0), ("add_remove", 1.0)])
def test_privacy_per_direction_matches_accountant(neighbouring: str, factor: float) -> None:
    cfg = VerticalConfig(rounds=7, noise_embedding=3.0, noise_gradient=5.0,
                         neighbouring=neighbouring, delta=1e-6)  # type: ignore[arg-type]
    p = vertical_privacy(cfg, extra_embedding_releases=1)
    # Embeddings: once per round plus the evaluation's release; gradients once per round.
    assert p.embedding_epsilon == pytest.approx(
        epsilon([MechanismStep(3.0 / factor, 1.0, 8)], 1e-6, "rdp"))
    assert p.gradient_epsilon == pytest.approx(
        epsilon([MechanismStep(5.0 / factor, 1.0, 7)], 1e-6, "rdp"))
    assert p.embedding_history == (MechanismStep(3.0 / factor, 1.0, 8),)
    assert (p.embedding_releases, p.gradient_releases) == (8, 7)
    assert p.purpose == "joint-model"
    assert p.to_dict()["gradient_history"] == [
        {"noise_multiplier": 5.0 / factor, "sample_rate": 1.0, "steps": 7}]


def test_privacy_without_noise_is_infinite_and_result_carries_it() -> None:
    blocks, y = two_block_problem(200, 0)
    r = train_vertical(blocks, y, dataclasses.replace(FAST, rounds=2, noise_embedding=2.0))
    assert math.isinf(r.privacy.gradient_epsilon)
    assert r.privacy.embedding_epsilon == pytest.approx(
        epsilon([MechanismStep(1.0, 1.0, 3)], FAST.delta, "rdp"))


# --------------------------------------------------------------------------- on the platform


def test_vertical_on_fixture_silos(silos_dir: Path) -> None:
    from fedprofile.simulations.vertical import compare_vertical, load_aligned

    train, test = load_aligned(silos_dir)
    assert len(train.y) > 100 and len(test.y) > 100
    assert set(train.blocks) == {"datapacks", "flights", "hotels"}
    assert all(b.shape == (len(train.y), 56) for b in train.blocks.values())
    out = compare_vertical(silos_dir, noise_levels=(16.0,),
                           cfg=VerticalConfig(rounds=6, batch_size=64), seeds=(0, 1),
                           say=lambda _m: None)
    auc = {row["model"]: row["auc"] for row in out["rows"]}  # type: ignore[index]
    assert auc["joint (no noise)"] > 0.7
    # Small intersection (~300 rows): the joint model should not lose to the label silo alone.
    assert auc["joint (no noise)"] >= auc["label silo alone (datapacks)"] - 0.01, auc


def test_label_dp_alone_keeps_the_joint_gain() -> None:
    # The federated job's default: gradients noised (label DP), embeddings clipped only.
    blocks, y = two_block_problem(3000, 2)
    test_blocks, y_test = two_block_problem(2000, 5)
    joint = train_vertical(blocks, y, dataclasses.replace(FAST, noise_gradient=4.0))
    single = train_vertical([blocks[0]], y, FAST)
    auc_joint = roc_auc(y_test, predict_vertical(joint, test_blocks))
    auc_single = roc_auc(y_test, predict_vertical(single, [test_blocks[0]]))
    assert auc_joint > auc_single + 0.05, (auc_joint, auc_single)
    assert math.isfinite(joint.privacy.gradient_epsilon)


def test_remote_only_head_scores_rows_the_label_silo_does_not_know() -> None:
    # Label block 0 stays home; the remote-only head sees block 1's released embeddings only,
    # as when the label silo scores an audience it has no rows for.
    blocks, y = two_block_problem(3000, 2)
    test_blocks, y_test = two_block_problem(2000, 5)
    r = train_vertical(blocks, y, dataclasses.replace(FAST, label_block=0, remote_head=True,
                                                      noise_gradient=1.0))
    assert r.remote_head is not None
    auc_remote = roc_auc(y_test, sl.predict_remote_only(r, [test_blocks[1]]))
    assert 0.65 < auc_remote < roc_auc(y_test, predict_vertical(r, test_blocks)), auc_remote
    without = train_vertical(blocks, y, dataclasses.replace(FAST, label_block=0))
    with pytest.raises(ValueError, match="no remote-only head"):
        sl.predict_remote_only(without, [test_blocks[1]])
