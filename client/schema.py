"""The silo data schema: what a business line's customers and orders look like.

Every silo, whatever its line, stores the same two tables so that every silo can
compute the same feature vector locally (see :mod:`fedprofile.client.features`)
without any raw row leaving it. The schema is declared once, here, and both the
ingestion validator and the SQLite store are derived from it, so a column cannot
be validated one way and stored another.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

AGE_BANDS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
"""Age bands, coarse on purpose: an exact birth date is a quasi-identifier."""

ORDER_CATEGORIES: tuple[str, ...] = (
    "flight_domestic",
    "flight_international",
    "hotel_domestic",
    "hotel_international",
    "datapack",
)

MAX_AMOUNT: float = 1_000_000.0
"""Largest order amount (CNY) accepted; anything above is treated as a data error."""

MAX_TEXT_LENGTH: int = 256
"""Longest text value accepted in any field; longer values are data errors."""


class Kind(Enum):
    """Logical type of a column; decides how a raw value is parsed and checked."""

    TEXT = "text"
    DATE = "date"
    DATETIME = "datetime"
    AMOUNT = "amount"
    BOOL = "bool"


@dataclass(frozen=True)
class Column:
    """One column of a silo table."""

    name: str
    kind: Kind
    required: bool = True
    choices: tuple[str, ...] | None = None
    unique: bool = False


@dataclass(frozen=True)
class Table:
    """A silo table: its columns, in the order files must present them."""

    name: str
    columns: tuple[Column, ...]
    key: str

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


CUSTOMERS = Table(
    name="customers",
    key="customer_id",
    columns=(
        Column("customer_id", Kind.TEXT, unique=True),
        Column("phone", Kind.TEXT, required=False),
        Column("email", Kind.TEXT, required=False),
        Column("province", Kind.TEXT),
        Column("city", Kind.TEXT),
        Column("age_band", Kind.TEXT, choices=AGE_BANDS),
        Column("signup_date", Kind.DATE),
        Column("marketing_opt_out", Kind.BOOL),
    ),
)

ORDERS = Table(
    name="orders",
    key="order_id",
    columns=(
        Column("order_id", Kind.TEXT, unique=True),
        Column("customer_id", Kind.TEXT),
        Column("order_time", Kind.DATETIME),
        Column("amount", Kind.AMOUNT),
        Column("category", Kind.TEXT, choices=ORDER_CATEGORIES),
        Column("product", Kind.TEXT),
        Column("destination", Kind.TEXT, required=False),
        Column("coupon_used", Kind.BOOL),
    ),
)

TABLES: dict[str, Table] = {t.name: t for t in (CUSTOMERS, ORDERS)}
