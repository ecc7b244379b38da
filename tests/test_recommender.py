"""The next-basket recommender: split, customer-level DP training, ranking and serving."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from fedprofile.client.interactions import Interactions
from fedprofile.client.splits import Split, baskets_per_user, check_no_leak, leave_last_out
from fedprofile.models.dp import DPParams, make_private, sample_rate, steps_per_epoch
from fedprofile.models.ranking import intra_list_diversity
from fedprofile.models.recommender import (Catalog, RecommenderModel, RecTestData, RecTrainData,
                                           _register_opacus_samplers, customer_baskets,
                                           evaluate_recommender, evaluate_scores,
                                           history_vector, popularity_scores, recommend, top_k,
                                           train_recommender, train_recommender_dp)
from fedprofile.models.training import TrainParams
from fedprofile.simulations import online_retail

from .conftest import require_online_retail

T0 = dt.datetime(2011, 1, 1)


def _day(n: int) -> dt.datetime:
    return T0 + dt.timedelta(days=n)


# a: three baskets (day 0: x, y; day 1: y; day 2: x, z) -> test {x, z}.
# b: one basket (two lines) -> training only.
# c: two baskets, the last with a duplicated line -> test {w}.
HAND = Interactions.from_records([
    ("a", "x", _day(0), 1.0, "UK"), ("a", "y", _day(0), 1.0, "UK"), ("a", "y", _day(1), 1.0, "UK"),
    ("a", "z", _day(2), 1.0, "UK"), ("a", "x", _day(2), 1.0, "UK"),
    ("b", "x", _day(0), 1.0, "UK"), ("b", "w", _day(0), 1.0, "UK"),
    ("c", "y", _day(3), 1.0, "UK"), ("c", "w", _day(5), 1.0, "UK"), ("c", "w", _day(5), 2.0, "UK"),
], opted_out=["c"])


@pytest.fixture(scope="module")
def uk_slice() -> Split:
    require_online_retail()
    silos, _ = online_retail.load(limit=60_000)
    return leave_last_out(online_retail.to_interactions(silos["uk"], "uk"))


@pytest.fixture(scope="module")
def trained(uk_slice: Split) -> tuple[RecommenderModel, Catalog, RecTestData]:
    torch.set_num_threads(1)
    catalog = Catalog.from_items(uk_slice.train.item)
    torch.manual_seed(0)
    model = RecommenderModel(len(catalog))
    train_recommender(model, RecTrainData(uk_slice.train, catalog),
                      TrainParams(epochs=5, batch_size=64, learning_rate=0.01, seed=0))
    return model, catalog, RecTestData.build(uk_slice.train, uk_slice.test, catalog)


# --------------------------------------------------------------------------- split


def test_last_basket_is_held_out_by_hand() -> None:
    split = leave_last_out(HAND)
    assert split.evaluated.tolist() == [True, False, True]  # b has a single basket
    test_rows = {(str(split.test.users[u]), i) for u, i in
                 zip(split.test.user_index, split.test.item, strict=True)}
    assert test_rows == {("a", "x"), ("a", "z"), ("c", "w")}
    assert len(split.train) == 3 + 2 + 1  # a's days 0 and 1, all of b, c's day 3
    assert baskets_per_user(HAND).tolist() == [3, 1, 2]


def test_split_of_real_data_never_leaks(uk_slice: Split) -> None:
    train, test = uk_slice.train, uk_slice.test
    assert not set(zip(train.user_index.tolist(), train.timestamp.tolist(), strict=True)) & set(
        zip(test.user_index.tolist(), test.timestamp.tolist(), strict=True))
    whole = baskets_per_user(train) + baskets_per_user(test)
    assert np.array_equal(uk_slice.evaluated, whole >= 2)
    assert np.array_equal(baskets_per_user(test), uk_slice.evaluated.astype(np.int64))
    # The held-out basket is each evaluated user's latest.
    latest = np.zeros(train.n_users, dtype=np.int64)
    np.maximum.at(latest, train.user_index, train.timestamp)
    assert np.all(test.timestamp > latest[test.user_index])
    assert uk_slice.n_evaluated > 100


def test_leak_check_fails_on_overlap() -> None:
    with pytest.raises(ValueError, match="also in training"):
        check_no_leak(HAND, HAND)
    a = HAND.user_index == 0
    day = (HAND.timestamp - HAND.timestamp.min()) // 86_400
    with pytest.raises(ValueError, match="not after"):  # a's first basket held out, last trained
        check_no_leak(HAND.subset_rows(a & (day == 2)), HAND.subset_rows(a & (day == 0)))
    with pytest.raises(ValueError, match="more than one"):
        check_no_leak(HAND.subset_rows(a & (day == 2)), HAND.subset_rows(a & (day < 2)))


# --------------------------------------------------------------------------- data


def test_catalog_encodes_and_rejects_unsorted() -> None:
    catalog = Catalog.from_items(["z", "x", "x", "w"])
    assert catalog.items == ("w", "x", "z") and catalog.index["z"] == 2
    assert catalog.encode(np.array(["x", "q", "z", "a"], dtype=object)).tolist() == [1, -1, 2, -1]
    with pytest.raises(ValueError, match="sorted"):
        Catalog(("b", "a"))


def test_history_vector_by_hand() -> None:
    # Baskets {0, 2} then {2}, decay 0.5: item 0 = 0.5; item 2 = 0.5 + 1 = 1.5.
    assert history_vector([np.array([0, 2]), np.array([2])], 4, 0.5).tolist() == [0.5, 0, 1.5, 0]
    assert history_vector([], 3).tolist() == [0, 0, 0]


def test_one_customer_is_one_element_with_a_past_only_history() -> None:
    split = leave_last_out(HAND)
    catalog = Catalog.from_items(["w", "x", "y"])  # z is out of the catalogue
    data = RecTrainData(split.train, catalog, decay=0.5, seed=3)
    assert len(data) == 3  # a, b, c: one element each, however many baskets
    draws = [data[0] for _ in range(40)]  # a's baskets: {x, y} (day 0), {y} (day 1)
    seen = set()
    for x, target in draws:
        assert target.sum() == pytest.approx(1.0)
        if target[1] > 0:  # target day 0 {x, y}: nothing before it
            assert target.tolist() == [0, 0.5, 0.5] and x.sum() == 0
            seen.add(0)
        else:  # target day 1 {y}: history is day 0
            assert target.tolist() == [0, 0, 1] and x.tolist() == [0, 1, 1]
            seen.add(1)
    assert seen == {0, 1}
    data.reseed(3)
    again = [data[0] for _ in range(40)]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(draws, again, strict=True))
    test = RecTestData.build(split.train, split.test, catalog, decay=0.5)
    # a's target {x, z} keeps x only; c's {w}. Histories are all training baskets.
    assert test.users.tolist() == [0, 2]
    assert [t.tolist() for t in test.targets] == [[1], [0]]
    assert test.history_matrix(0, 2).tolist() == [[0, 0.5, 1.5], [0, 0, 1]]
    assert test.opt_out.tolist() == [False, True]
    assert popularity_scores(split.train, catalog).tolist() == [1, 2, 2]  # w: b; x: a, b; y: a, c


# --------------------------------------------------------------------------- training


def test_model_beats_most_popular_on_real_data(trained: tuple, uk_slice: Split) -> None:
    model, catalog, test = trained
    ours = evaluate_recommender(model, test).means()
    popular = evaluate_scores(popularity_scores(uk_slice.train, catalog), test).means()
    assert ours["users"] == popular["users"] > 100
    assert ours["hr@10"] > popular["hr@10"] + 0.05
    assert ours["ndcg@10"] > popular["ndcg@10"] + 0.05


def test_empty_history_scores_are_the_non_personalised_ones(trained: tuple) -> None:
    model, catalog, _ = trained
    with torch.no_grad():
        empty = model(torch.zeros(1, len(catalog)))[0].numpy()
    assert np.allclose(empty, model.non_personalised_scores(), atol=1e-6)


def test_dp_training_is_customer_level_and_reports_what_ran(uk_slice: Split) -> None:
    torch.set_num_threads(1)
    catalog = Catalog.from_items(uk_slice.train.item)
    data = RecTrainData(uk_slice.train, catalog)
    customers = len([b for b in customer_baskets(uk_slice.train, catalog) if b])
    assert len(data) == customers == uk_slice.train.n_users  # every slice user has a basket
    params = TrainParams(epochs=2, batch_size=128, seed=0)
    before = {k: v.clone() for k, v in RecommenderModel(len(catalog)).state_dict().items()}
    torch.manual_seed(0)
    model = RecommenderModel(len(catalog))
    stats = train_recommender_dp(model, data, params, DPParams(noise_multiplier=1.3,
                                                               clip_norm=0.5))
    assert stats.sample_rate == sample_rate(128, customers) == 1 / steps_per_epoch(128, customers)
    assert stats.steps == 2 * steps_per_epoch(128, customers)
    assert (stats.noise_multiplier, stats.clip_norm) == (1.3, 0.5)
    assert 0 < stats.examples < 4 * customers  # Poisson batches: about 2 epochs' worth
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "output.bias" in changed and "repeat.weight" in changed
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None
                   for p in model.parameters())


def test_dp_training_survives_empty_poisson_batches() -> None:
    # 3 customers at batch 1: q = 1/3, so a step is empty with probability (2/3)^3 = 0.30;
    # over 30 (seeded) steps some are.
    split = leave_last_out(HAND)
    catalog = Catalog.from_items(HAND.item)
    data = RecTrainData(split.train, catalog)
    torch.manual_seed(0)
    model = RecommenderModel(len(catalog), dim=2, hidden=2)
    batches: list[int] = []
    model.register_forward_hook(lambda _m, args, _out: batches.append(len(args[0])))
    stats = train_recommender_dp(model, data, TrainParams(epochs=10, batch_size=1, seed=0),
                                 DPParams(1.0))
    assert stats.steps == 30 and stats.sample_rate == pytest.approx(1 / 3)
    assert len(batches) < 30 and stats.examples == sum(batches)  # steps without a forward pass
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # A second round on the same model (as federated rounds do) finds no hooks left over.
    again = train_recommender_dp(model, data, TrainParams(epochs=1, batch_size=1, seed=1),
                                 DPParams(1.0))
    assert again.steps == 3 and not model.training


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_dp_step_clips_each_customer(mode: str) -> None:
    """The DP step's gradient is the mean of per-customer clipped gradients."""
    _register_opacus_samplers()
    torch.manual_seed(1)
    n_items, n = 7, 5
    x = torch.rand(n, n_items) * (torch.rand(n, n_items) > 0.4)
    target = torch.softmax(torch.randn(n, n_items) * 3, dim=1)
    model = RecommenderModel(n_items, dim=3, hidden=4, history_dropout=0.0)
    with torch.no_grad():
        model.output.bias.normal_()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    clip = 0.05
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for b in range(n):  # by hand: one customer at a time, clipped to norm <= clip
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[b:b + 1]), target[b:b + 1]).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads.values()))
        assert norm > clip  # so clipping is exercised
        for name, g in grads.items():
            expected[name] += g * min(1.0, clip / float(norm)) / n
    model.zero_grad()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, target), batch_size=n)
    criterion = torch.nn.CrossEntropyLoss() if mode == "ghost" else None
    private = make_private(model, torch.optim.SGD(model.parameters(), lr=1.0), loader,
                           DPParams(noise_multiplier=1e-9, clip_norm=clip), mode, criterion)
    (xb, tb), = list(private.loader)  # sample rate 1: every customer, once
    assert len(xb) == n
    loss_fn = private.criterion or torch.nn.CrossEntropyLoss()
    private.optimizer.zero_grad()
    loss_fn(private.module(xb), tb).backward()
    private.optimizer.step()
    private.release()
    for name, value in model.state_dict().items():
        assert torch.allclose(start[name] - value, expected[name], atol=1e-6), name


# --------------------------------------------------------------------------- serving


def test_diversity_raises_intra_list_diversity(trained: tuple) -> None:
    model, _, test = trained
    histories = test.histories[:60]
    plain = recommend(model, histories, k=10)
    diverse = recommend(model, histories, k=10, diversity=0.7)
    vectors = model.item_vectors()
    assert intra_list_diversity(diverse, vectors) > intra_list_diversity(plain, vectors) + 0.02
    assert all(len(set(row)) == 10 for row in diverse)


def test_explore_adds_items_outside_the_history(trained: tuple) -> None:
    model, _, test = trained
    # Each history also holds the 1,000 items most likely to be drawn, so a draw that
    # ignored the history would land in it more often than not.
    likely = top_k(model.non_personalised_scores()[None, :], 1000)[0]
    histories = [[likely, *h] for h in test.histories[:30]]
    plain = recommend(model, histories, k=10)
    explored = recommend(model, histories, k=10, explore=0.3, seed=5)

    def outside(lists: list[list[int]]) -> list[int]:
        return [sum(i not in set(np.concatenate(h).tolist()) for i in row)
                for row, h in zip(lists, histories, strict=True)]

    assert sum(outside(plain)) == 0
    assert outside(explored) == [3] * len(histories)  # round(0.3 * 10) slots, all outside
    assert all(row[:7] == p[:7] for row, p in zip(explored, plain, strict=True))
    assert all(len(set(row)) == 10 for row in explored)
    assert explored == recommend(model, histories, k=10, explore=0.3, seed=5)  # seeded
    assert explored != recommend(model, histories, k=10, explore=0.3, seed=6)


def test_opted_out_customers_get_only_the_non_personalised_ranking(trained: tuple) -> None:
    model, _, test = trained
    histories = test.histories[:20]
    base = top_k(model.non_personalised_scores()[None, :], 10)[0].tolist()
    flags = [u % 2 == 0 for u in range(len(histories))]
    lists = recommend(model, histories, k=10, diversity=0.5, explore=0.5, opted_out=flags)
    assert all(row == base for row, f in zip(lists, flags, strict=True) if f)
    personalised = [row for row, f in zip(lists, flags, strict=True) if not f]
    assert any(row != base for row in personalised)
    # The same customers with other histories (none at all) get the same lists.
    assert recommend(model, [[] for _ in histories], k=10, diversity=0.5, explore=0.5,
                     opted_out=flags)[::2] == lists[::2]
