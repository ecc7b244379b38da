"""A next-basket item recommender whose privacy unit is the customer.

What it predicts: the items of a customer's next basket (invoice), from the
baskets before it. What it learns is item-level only: there is no per-customer
parameter (no user embedding); a customer is represented by encoding their
history at prediction time. So everything a silo sends to the server is item
weights, and a customer's data never leaves the silo in any form but its
(clipped, noised) contribution to those weights.

Model (``RecommenderModel``): for a history ``x`` (a recency-decayed count of
each catalogue item over the customer's baskets, most recent basket weighing 1,
the one before ``decay``, ...),

    score_i = b_i + <h(x), E_i> + w_rep . f(x)_i

* ``b`` alone is the non-personalised ranking: the popularity the model learned
  (under the same DP as the rest). It is exactly what an empty history scores,
  and what opted-out customers are shown.
* ``h`` is a bias-free encoder of the normalised history (a linear item
  embedding, mean-pooled by the recency weights, plus a small residual MLP), so
  that ``h(empty) = 0``. ``E`` is a separate output embedding.
* ``f`` are three repeat features (:func:`repeat_features`), with weights shared
  by all items: in retail, customers re-buy what they bought (83% of the UK
  silo's held-out baskets share an item with the customer's history), which no
  popularity ranking can use.

Design measurements (UK silo of Online Retail: 3,916 training customers, 2,561
evaluated, 3,621 items; non-DP, 10 epochs, batch 256, lr 0.01; HR@10 / NDCG@10):
most-popular 0.378 / 0.068; the suggested design (one repeat feature
log1p(x), dim 32) 0.700 / 0.253; the same without the h.E term (bias + repeat)
0.729 / 0.276: the embeddings, free to re-predict the history, hurt. Dropping
half the history items from the encoder's input while training (not from the
repeat term) and the three repeat features gave 0.737 / 0.278 (new-item HR@10,
ranking only items outside the history: 0.28 against 0.23 for bias + repeat,
so the embeddings do find new items). Tying E to the encoder: no better
(0.733-0.736); dim 64: 0.728; decay 0.5 / 0.95: 0.680 / 0.698 with the one
feature (0.8: 0.700); per-item repeat weights: +0.003.

Privacy: one dataset element is one customer (:class:`RecTrainData`). Each time
a customer is drawn, one of their training baskets is the target and the
baskets before it the history. However many baskets a customer has, they are
one sample per draw, so DP-SGD's per-sample clipping bounds a *customer's*
influence and Opacus's accounting is customer-level.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedprofile.client.interactions import Interactions, encode_codes
from fedprofile.client.splits import basket_ids

from .dp import DPParams, DPTrainStats, PrivateTraining, make_private
from .ranking import RankingEvaluation
from .training import TrainParams, TrainStats, fit

DEFAULT_DECAY = 0.8
"""Weight of a basket relative to the next one in a history (recency decay)."""

RANK_DEPTH = 20
"""Positions ranked for evaluation: enough for HR@10, NDCG@10 and Recall@20."""

REC_GRAD_SAMPLE_MODE = "ghost"
"""Opacus per-sample-gradient mode for this model: ghost clipping.

Measured on the UK silo of Online Retail (3,916 customers, 3,621 items, dim 32,
batch 256, 1 CPU thread): ghost 1.0 s/epoch and 0.56 GB peak RSS; hooks 4.6 s
and 0.93 GB; ew (expanded weights) 4.6 s and 0.93 GB; functorch 5.0 s and
0.91 GB; non-DP 0.7 s and 0.47 GB (hooks at dim 64: 8.5 s, 1.28 GB; hooks, ew
and functorch were measured with w_rep as an ``nn.Linear``, which ew needs). The
per-sample gradients the other modes materialise are batch x items x dim for
both the encoder and the output layer (~120 MB each at dim 32); ghost
clipping only needs their norms, which for a linear layer on 2-D inputs is
|activation| x |backprop|. It needs every layer's input 2-D (a 3-D input
makes Opacus build batch x items x items matrices), hence :class:`RepeatScore`
with its own samplers instead of an ``nn.Linear`` over (customers, items, 3).
Equality of the clipped gradient with a per-customer computation is tested."""

History = Sequence[np.ndarray]
"""A customer's baskets, oldest first, each an array of catalogue indices."""


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class Catalog:
    """The items a model scores, in sorted order: the position of a code is its index.

    Silos must agree on it before training (the integrator builds it from
    items agreed across silos), since the model's item weights are aligned by it.
    """

    items: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError("a catalogue needs at least one item")
        if any(a >= b for a, b in zip(self.items, self.items[1:], strict=False)):
            raise ValueError("catalogue items must be sorted and unique")

    @classmethod
    def from_items(cls, items: Iterable[object]) -> Catalog:
        """The catalogue of these item codes (duplicates removed, sorted)."""
        return cls(tuple(sorted({str(i) for i in items})))

    def __len__(self) -> int:
        return len(self.items)

    @cached_property
    def index(self) -> dict[str, int]:
        """Item code -> catalogue index."""
        return {code: i for i, code in enumerate(self.items)}

    @cached_property
    def _codes(self) -> np.ndarray:
        return np.array(self.items, dtype=str)

    def encode(self, codes: np.ndarray) -> np.ndarray:
        """Catalogue index of each code (int64), -1 where the code is not in the catalogue."""
        return encode_codes(self._codes, codes)


def customer_baskets(inter: Interactions, catalog: Catalog) -> list[list[np.ndarray]]:
    """Each user's baskets, oldest first, as arrays of distinct catalogue indices.

    Out-of-catalogue items are dropped, and so is a basket left empty by that:
    it says nothing the model can use.
    """
    codes = catalog.encode(inter.item)
    ids = basket_ids(inter)
    out: list[list[np.ndarray]] = [[] for _ in range(inter.n_users)]
    keep = codes >= 0
    if not keep.any():
        return out
    users, ids, codes = inter.user_index[keep], ids[keep], codes[keep]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], len(ids)], strict=True):
        out[int(users[start])].append(np.unique(codes[start:end]))
    return out


def history_vector(baskets: History, n_items: int, decay: float = DEFAULT_DECAY) -> np.ndarray:
    """Recency-decayed item counts: the last basket weighs 1, the one before ``decay``, ...

    An item bought in several baskets adds up, so a regular purchase outweighs
    a one-off one; the decay lets recent taste outweigh old taste.
    """
    out = np.zeros(n_items, dtype=np.float32)
    m = len(baskets)
    if m == 0:
        return out
    lengths = np.fromiter((len(b) for b in baskets), dtype=np.int64, count=m)
    items = np.concatenate(baskets).astype(np.int64)
    weights = np.repeat(decay ** np.arange(m - 1, -1, -1, dtype=np.float64), lengths)
    out += np.bincount(items, weights=weights, minlength=n_items).astype(np.float32)
    return out


# --------------------------------------------------------------------------- model


class RecommenderModel(nn.Module):
    """Scores every catalogue item for a history vector (see the module docstring).

    ``forward(x)`` takes ``x`` of shape (customers, items), the output of
    :func:`history_vector`, and returns logits of the same shape.
    """

    def __init__(self, n_items: int, dim: int = 32, hidden: int = 64,
                 decay: float = DEFAULT_DECAY, history_dropout: float = 0.5) -> None:
        super().__init__()
        if n_items < 1 or dim < 1 or hidden < 1:
            raise ValueError("n_items, dim and hidden must be >= 1")
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if not 0 <= history_dropout < 1:
            raise ValueError(f"history_dropout must be in [0, 1), got {history_dropout}")
        self.n_items, self.dim, self.decay = n_items, dim, decay
        # Training drops history items from the encoder's input (not from the repeat
        # term): it keeps the embeddings from merely re-predicting the history
        # (measurements in the module docstring).
        self.history_dropout = nn.Dropout(history_dropout)
        # Bias-free everywhere before the output, so that an empty history encodes to h = 0.
        self.encoder = nn.Linear(n_items, dim, bias=False)
        self.mix = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.Tanh(),
                                 nn.Linear(hidden, dim, bias=False))
        self.output = nn.Linear(dim, n_items)  # weight: item embeddings E; bias: b
        self.repeat = RepeatScore(len(REPEAT_FEATURES))  # w_rep
        nn.init.normal_(self.encoder.weight, std=0.1)
        nn.init.normal_(self.output.weight, std=0.1)
        nn.init.zeros_(self.output.bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The customer representation h: zero for an empty history."""
        x = self.history_dropout(x)  # rescaling by dropout cancels in the normalisation
        pooled = self.encoder(x / x.sum(dim=1, keepdim=True).clamp_min(1e-6))
        return pooled + self.mix(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.encode(x)) + self.repeat(repeat_features(x))

    @torch.no_grad()
    def non_personalised_scores(self) -> np.ndarray:
        """The scores of an empty history, b: what an opted-out customer is ranked by."""
        return self.output.bias.detach().cpu().numpy().astype(np.float64)

    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        """Item embeddings E (items x dim): the space diversity is measured in."""
        return self.output.weight.detach().cpu().numpy().astype(np.float64)


class RepeatScore(nn.Module):
    """w_rep . features: a weight per repeat feature, shared by all items.

    A layer of its own (not ``nn.Linear`` over the feature axis) so that Opacus
    can sample it cheaply in ghost mode: its samplers are registered in
    :func:`_register_opacus_samplers`.
    """

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight


def _register_opacus_samplers() -> None:
    """Per-sample gradient (and norm) of :class:`RepeatScore` for Opacus; idempotent."""
    from fedprofile.privacy._opacus import opacus

    grad_sample = opacus.grad_sample

    def per_sample(layer: RepeatScore, activations: list[torch.Tensor],
                   backprops: torch.Tensor) -> torch.Tensor:
        # d(score[b, i])/d(w) = features[b, i]; summed over items with the backprops.
        return torch.einsum("bi,bif->bf", backprops, activations[0])

    @grad_sample.register_grad_sampler(RepeatScore)
    def _grad(layer: RepeatScore, activations: list[torch.Tensor], backprops: torch.Tensor
              ) -> dict[nn.Parameter, torch.Tensor]:
        return {layer.weight: per_sample(layer, activations, backprops)}

    @grad_sample.register_norm_sampler(RepeatScore)
    def _norm(layer: RepeatScore, activations: list[torch.Tensor], backprops: torch.Tensor
              ) -> dict[nn.Parameter, torch.Tensor]:
        return {layer.weight: per_sample(layer, activations, backprops).norm(dim=1)}


REPEAT_FEATURES = ("log1p(x)", "bought", "log1p(10 share)")


def repeat_features(x: torch.Tensor) -> torch.Tensor:
    """Per item, how much the history says "re-buy it": (customers, items, 3), 0 if never bought.

    ``log1p(x)``: the decayed count, with diminishing returns; ``bought``: any
    purchase at all (the first re-purchase matters most); ``log1p(10 share)``:
    the item's share of the history, so that an item a customer buys every time
    outranks one a wholesaler with a thousand items once bought twice. (Three
    features with shared weights gained +0.03 HR@10 over log1p(x) alone; per-item
    repeat weights gained a further +0.003 only, not worth 3,600 noised weights.)
    """
    share = x / x.sum(dim=1, keepdim=True).clamp_min(1e-6)
    return torch.stack([torch.log1p(x), (x > 0).to(x.dtype), torch.log1p(10.0 * share)], dim=-1)


# --------------------------------------------------------------------------- training data


class RecTrainData(Dataset):
    """One element per customer with at least one in-catalogue training basket.

    Each access draws a target basket among the customer's baskets (seeded by
    (seed, element, draw number), so the draws do not depend on the order a
    loader visits elements in); the history is the baskets before it, possibly
    none. An element is the pair (history vector, target distribution: uniform
    over the target basket's items), both dense over the catalogue, so every
    element has the same shape and Opacus's Poisson loader can build the empty
    batches it sometimes samples. The draw counters live in the dataset, so load
    it in the training process (``num_workers=0``, as the training functions do).
    """

    def __init__(self, train: Interactions, catalog: Catalog, decay: float = DEFAULT_DECAY,
                 seed: int = 0) -> None:
        per_user = customer_baskets(train, catalog)
        self.customers = np.array([u for u, b in enumerate(per_user) if b], dtype=np.int64)
        self.baskets = [per_user[u] for u in self.customers]
        self.catalog, self.n_items, self.decay = catalog, len(catalog), decay
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the target draws from ``seed``: training calls this with its own seed."""
        self.seed = seed
        self._draws = np.zeros(len(self.baskets), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.baskets)

    def fingerprint(self) -> bytes:
        """A digest of the training data (for :func:`~fedprofile.models.dp.noise_seeds`)."""
        digest = hashlib.blake2b(self.customers.tobytes(), digest_size=16)
        for baskets in self.baskets:
            for basket in baskets:
                digest.update(np.asarray(basket, dtype=np.int64).tobytes())
            digest.update(b"|")
        return digest.digest()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        baskets = self.baskets[i]
        rng = np.random.default_rng([self.seed, int(i), int(self._draws[i])])
        self._draws[i] += 1
        t = int(rng.integers(len(baskets)))
        target = np.zeros(self.n_items, dtype=np.float32)
        target[baskets[t]] = 1.0 / len(baskets[t])
        x = history_vector(baskets[:t], self.n_items, self.decay)
        return torch.from_numpy(x), torch.from_numpy(target)


@dataclass(frozen=True)
class RecTestData:
    """Evaluated customers: their whole training history and their held-out basket.

    Targets outside the catalogue are dropped; a customer with no in-catalogue
    target is not evaluated (there is nothing the model could rank).
    """

    users: np.ndarray  # int64: positions in the Interactions' users
    histories: list[list[np.ndarray]]
    targets: list[np.ndarray]
    opt_out: np.ndarray  # bool, per evaluated customer (for the caller: all are scored)
    n_items: int
    decay: float = DEFAULT_DECAY

    @classmethod
    def build(cls, train: Interactions, test: Interactions, catalog: Catalog,
              decay: float = DEFAULT_DECAY) -> RecTestData:
        if not np.array_equal(train.users, test.users):
            raise ValueError("train and test must be over the same users (a Split's)")
        history = customer_baskets(train, catalog)
        target = customer_baskets(test, catalog)
        users = np.array([u for u, t in enumerate(target) if t], dtype=np.int64)
        return cls(users=users, histories=[history[u] for u in users],
                   targets=[np.unique(np.concatenate(target[u])) for u in users],
                   n_items=len(catalog), decay=decay, opt_out=test.opt_out[users])

    def __len__(self) -> int:
        return len(self.users)

    def history_matrix(self, start: int, stop: int) -> torch.Tensor:
        """History vectors of customers ``start:stop`` (built in blocks: dense is big)."""
        return torch.from_numpy(np.stack([history_vector(h, self.n_items, self.decay)
                                          for h in self.histories[start:stop]])
                                if stop > start else np.zeros((0, self.n_items), np.float32))


# --------------------------------------------------------------------------- training


def _criterion() -> nn.Module:
    """Softmax cross-entropy over the catalogue, averaged over the target basket's items.

    With the target a distribution (uniform over the basket's items), torch's
    cross-entropy is exactly that average; being a stock loss with a per-sample
    ``reduction="none"``, Opacus's ghost clipping can wrap it.
    """
    return nn.CrossEntropyLoss()


def _check_pair(model: RecommenderModel, data: RecTrainData) -> None:
    if model.n_items != data.n_items:
        raise ValueError(f"model scores {model.n_items} items, data has {data.n_items}")
    if model.decay != data.decay:
        raise ValueError(f"model decay {model.decay} differs from the data's {data.decay}")
    if len(data) == 0:
        raise ValueError("no training customers")


def _loader(data: RecTrainData, params: TrainParams) -> DataLoader:
    torch.manual_seed(params.seed)
    gen = torch.Generator().manual_seed(params.seed)
    return DataLoader(data, batch_size=params.batch_size, shuffle=True, generator=gen)


def train_recommender(model: RecommenderModel, data: RecTrainData, params: TrainParams
                      ) -> TrainStats:
    """Train ``model`` in place with Adam (no DP): the centralized and federated baseline."""
    _check_pair(model, data)
    loader = _loader(data, params)
    data.reseed(params.seed)
    stats = fit(model, loader, _criterion(), params)
    model.eval()
    return stats


def _dp_epochs(private: PrivateTraining, model: nn.Module, epochs: int
               ) -> tuple[float, int, int]:
    """Run the DP-SGD steps; (loss sum, customers seen, steps taken)."""
    total, seen, steps = 0.0, 0, 0
    for _ in range(epochs):
        for x, target in private.loader:
            private.optimizer.zero_grad(set_to_none=True)
            if len(x) == 0:
                # Poisson sampling can draw an empty batch: still a step, of noise
                # only. The ghost-clipping optimiser sums p.grad, so it must exist.
                for p in model.parameters():
                    p.grad = torch.zeros_like(p)
                private.optimizer.step()
                steps += 1
                continue
            loss = private.criterion(private.module(x), target)
            loss.backward()
            private.optimizer.step()
            steps += 1
            total += float(loss.detach()) * len(x)
            seen += len(x)
    return total, seen, steps


def train_recommender_dp(model: RecommenderModel, data: RecTrainData, params: TrainParams,
                         dp: DPParams) -> DPTrainStats:
    """Train ``model`` in place with DP-SGD; one element of ``data`` is one customer.

    Same accounting contract as :func:`fedprofile.models.dp.train_local_dp`:
    the stats report the mechanism Opacus's accountant recorded, checked
    against the steps actually run.
    """
    _check_pair(model, data)
    _register_opacus_samplers()
    model.train()  # Opacus refuses a module in eval mode (as the previous round leaves it)
    loader = _loader(data, params)
    optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    private = make_private(model, optimiser, loader, dp, grad_sample_mode=REC_GRAD_SAMPLE_MODE,
                           criterion=_criterion())
    data.reseed(params.seed)  # the Poisson loader probes element 0 when it is built
    private.module.train()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # Opacus's backward hooks fire on module outputs since the input (the
            # history) needs no gradient; torch warns about that, which is expected.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            total, seen, steps = _dp_epochs(private, model, params.epochs)
        q = private.checked_sample_rate(steps, params.batch_size, len(data))
    finally:
        private.release()
    model.eval()
    return DPTrainStats(examples=seen, mean_loss=total / max(seen, 1),
                        seconds=time.perf_counter() - start, noise_multiplier=dp.noise_multiplier,
                        sample_rate=q, steps=steps, clip_norm=dp.clip_norm)


# --------------------------------------------------------------------------- evaluation


def top_k(scores: torch.Tensor | np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best items per row, ties broken by the lower index (deterministic)."""
    s = torch.as_tensor(scores)
    k = min(k, s.shape[1])
    return torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k].numpy()


@torch.no_grad()
def evaluate_recommender(model: RecommenderModel, test: RecTestData, batch_size: int = 512
                         ) -> RankingEvaluation:
    """HR@10, NDCG@10 and Recall@20 sums of the model over the test customers."""
    if model.decay != test.decay or model.n_items != test.n_items:
        raise ValueError("the test data was built for another model (items or decay)")
    model.eval()
    result = RankingEvaluation()
    for start in range(0, len(test), batch_size):
        stop = min(start + batch_size, len(test))
        ranked = top_k(model(test.history_matrix(start, stop)), RANK_DEPTH)
        result = result.merge(RankingEvaluation.from_rankings(ranked, test.targets[start:stop]))
    return result


def popularity_scores(train: Interactions, catalog: Catalog) -> np.ndarray:
    """Number of distinct training customers who bought each catalogue item.

    Customers rather than lines, so one wholesaler buying an item a hundred
    times does not make it popular.
    """
    codes = catalog.encode(train.item)
    keep = codes >= 0
    pairs = np.unique(train.user_index[keep] * len(catalog) + codes[keep])
    return np.bincount(pairs % len(catalog), minlength=len(catalog)).astype(np.float64)


def evaluate_scores(static_scores: np.ndarray, test: RecTestData) -> RankingEvaluation:
    """The same ranking for every customer (a most-popular baseline, say)."""
    scores = np.asarray(static_scores, dtype=np.float64)
    if scores.shape != (test.n_items,):
        raise ValueError(f"expected {test.n_items} scores, got shape {scores.shape}")
    if len(test) == 0:
        return RankingEvaluation()
    ranked = np.repeat(top_k(scores[None, :], RANK_DEPTH), len(test), axis=0)
    return RankingEvaluation.from_rankings(ranked, test.targets)


# --------------------------------------------------------------------------- serving


def _mmr(candidates: np.ndarray, relevance: np.ndarray, unit: np.ndarray, k: int,
         lam: float) -> list[int]:
    """Maximal marginal relevance: greedily pick argmax lam*rel - (1-lam)*max sim to picked.

    Relevance is min-max scaled to [0, 1] within the pool, so that it is on the
    scale of cosine similarity whatever the model's logit scale.
    """
    span = relevance.max() - relevance.min()
    rel = (relevance - relevance.min()) / span if span > 0 else np.zeros_like(relevance)
    sims = unit[candidates] @ unit[candidates].T
    chosen: list[int] = []
    max_sim = np.full(len(candidates), -np.inf)
    available = np.ones(len(candidates), dtype=bool)
    for _ in range(min(k, len(candidates))):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        value = np.where(available, lam * rel - (1 - lam) * penalty, -np.inf)
        j = int(np.argmax(value))
        chosen.append(j)
        available[j] = False
        max_sim = np.maximum(max_sim, sims[j])
    return [int(candidates[j]) for j in chosen]


@torch.no_grad()
def recommend(model: RecommenderModel, histories: Sequence[History], k: int = 10,
              diversity: float = 0.0, explore: float = 0.0, seed: int = 0,
              opted_out: Sequence[bool] | np.ndarray | None = None) -> list[list[int]]:
    """Top-k catalogue indices per customer, optionally diversified and exploring.

    * ``diversity`` in [0, 1]: MMR re-ranking (lambda = 1 - diversity) of a
      candidate pool (the top 5k) by cosine similarity of item embeddings, so
      a list is not five variants of one product.
    * ``explore`` in [0, 1]: that fraction of the k slots (rounded) goes, at the
      end of the list, to items *outside* the customer's history, drawn without
      replacement proportionally to softmax(non-personalised score), seeded by
      (seed, customer position): customers keep seeing what they do not already
      buy, rather than being locked in an information cocoon of their history.
    * ``opted_out[u]``: the customer gets the top k of the non-personalised
      scores and nothing else: no history, re-ranking or draw, so the list is
      the same for every opted-out customer and provably uses nothing about them.
    """
    if not 0 <= diversity <= 1 or not 0 <= explore <= 1:
        raise ValueError("diversity and explore must be in [0, 1]")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = model.n_items
    k = min(k, n)
    out_flags = (np.zeros(len(histories), dtype=bool) if opted_out is None
                 else np.asarray(opted_out, dtype=bool))
    if len(out_flags) != len(histories):
        raise ValueError("opted_out needs one flag per history")
    base = model.non_personalised_scores()
    base_list = [int(i) for i in top_k(base[None, :], k)[0]]
    n_explore = int(round(explore * k))
    unit = model.item_vectors()
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    model.eval()
    result: list[list[int]] = []
    for u, baskets in enumerate(histories):
        if out_flags[u]:
            result.append(list(base_list))
            continue
        x = torch.from_numpy(history_vector(baskets, n, model.decay))[None, :]
        scores = model(x)[0].numpy().astype(np.float64)
        n_exploit = k - n_explore
        if diversity > 0:
            pool = top_k(scores[None, :], min(n, 5 * k))[0]
            picked = _mmr(pool, scores[pool], unit, n_exploit, 1.0 - diversity)
        else:
            picked = [int(i) for i in top_k(scores[None, :], n_exploit)[0]]
        if n_explore:
            seen = np.concatenate(baskets) if len(baskets) else np.zeros(0, np.int64)
            eligible = np.ones(n, dtype=bool)
            eligible[seen] = False
            eligible[picked] = False
            picked += _draw(base, eligible, n_explore, np.random.default_rng([seed, u]))
        result.append(picked)
    return result


def _draw(scores: np.ndarray, eligible: np.ndarray, m: int, rng: np.random.Generator
          ) -> list[int]:
    """m eligible items without replacement, each draw proportional to softmax(scores).

    Gumbel-top-m: adding Gumbel noise and keeping the m largest is exactly
    successive sampling without replacement from the softmax.
    """
    idx = np.flatnonzero(eligible)
    if len(idx) == 0:
        return []
    keys = scores[idx] + rng.gumbel(size=len(idx))
    return [int(i) for i in idx[np.argsort(-keys, kind="stable")[:m]]]
