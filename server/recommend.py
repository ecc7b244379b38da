"""The server's side of the federated recommender: agreeing on the catalogue.

Silos must score the same items in the same order for their weights to be
averaged. Each silo proposes the items at least ``rec-min-customers`` of its
customers bought (item codes only, see :mod:`fedprofile.client.recommending`);
the catalogue is their union, sorted. Nothing about who bought what is sent.
"""

from __future__ import annotations

from logging import INFO

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedprofile.config import TrainConfig
from fedprofile.models.recommender import Catalog


def collect_catalog(grid: Grid, cfg: TrainConfig) -> Catalog:
    """Ask every silo for its catalogue proposal; the union is the run's catalogue."""
    config = ConfigRecord({"rec-min-customers": cfg.rec_min_customers})
    messages = [Message(content=RecordDict({"config": config}), message_type="query.rec_catalog",
                        dst_node_id=n) for n in grid.get_node_ids()]
    items: set[str] = set()
    answered = 0
    for reply in grid.send_and_receive(messages, timeout=cfg.round_timeout):
        if reply.has_error():
            raise RuntimeError(f"a silo failed to propose catalogue items: {reply.error.reason}")
        items.update(str(i) for i in reply.content["catalog"]["items"])  # type: ignore[union-attr]
        answered += 1
    if answered < cfg.min_silos:
        raise RuntimeError(f"only {answered} silos proposed catalogue items; min-silos is "
                           f"{cfg.min_silos}")
    if not items:
        raise RuntimeError(f"no item was bought by {cfg.rec_min_customers} customers of any "
                           "silo: lower rec-min-customers")
    log(INFO, "fedprofile: catalogue agreed: %d items from %d silos", len(items), answered)
    return Catalog.from_items(items)
