"""Static reference data for the synthetic travel platform.

Everything here is plain, typed, immutable reference data: the home regions
customers live in, the places they travel to, and the kinds of roaming data
packs the ``datapacks`` line sells.  Keeping it apart from the generator
(:mod:`fedprofile.simulations.platform`) means the behaviour model can be read
without wading through tables, and the tables can be reviewed (or extended)
without touching the behaviour.

The weights are "population-ish" and "plausible-ish", not statistics: they
exist so that the generated data has the *shape* marketing cases need
(regional destination and pack preferences, a Shenzhen -> Hong Kong commuter
corridor, long-haul trips that cost more), not to reproduce any real market.

Airport codes are real IATA codes of the airport that serves the city.  Suzhou
has no commercial airport of its own; its residents fly from Wuxi (``WUX``),
which is why it can be a home city but is never a flight destination.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, Mapping

from fedprofile.client.schema import AGE_BANDS  # one definition, shared with the silo schema

DestinationKind = Literal["domestic", "international"]

PACK_KINDS: Final[tuple[str, ...]] = (
    "daily-unlimited",
    "3day-2gb",
    "7day-5gb",
    "15day-10gb",
    "30day-20gb",
)
"""Roaming data-pack kinds sold by the ``datapacks`` line."""


@dataclass(frozen=True)
class PackKind:
    """A roaming data-pack product.

    ``per_day`` packs are charged per travel day (``base_price`` per day), the
    others are a flat ``base_price``.  Prices are CNY before the destination's
    ``pack_price_factor`` and the buyer's spend multiplier are applied.
    """

    name: str
    base_price: float
    per_day: bool = False


PACKS: Final[tuple[PackKind, ...]] = (
    PackKind("daily-unlimited", 25.0, per_day=True),
    PackKind("3day-2gb", 39.0),
    PackKind("7day-5gb", 79.0),
    PackKind("15day-10gb", 139.0),
    PackKind("30day-20gb", 199.0),
)
assert tuple(p.name for p in PACKS) == PACK_KINDS


@dataclass(frozen=True)
class City:
    """A home city: where a customer lives and flies from."""

    name: str
    airport: str
    weight: float
    """Share of the province's customers living here (normalised per province)."""


@dataclass(frozen=True)
class Province:
    """A home province or municipality with its regional travel habits.

    ``preferred_pack_kind`` and ``international_destinations`` are what makes
    "regional preference" a real, learnable signal in the generated data.
    """

    name: str
    weight: float
    """Relative share of all customers (normalised over provinces)."""
    cities: tuple[City, ...]
    preferred_pack_kind: str
    international_destinations: tuple[tuple[str, float], ...]
    """(country code, relative weight) for international leisure trips."""


@dataclass(frozen=True)
class Destination:
    """A travel destination, domestic city or international country.

    ``key`` is what the silos write in their ``destination`` column: the
    country code for international trips, the city name for domestic ones.
    """

    key: str
    kind: DestinationKind
    city: str
    """City name used in hotel products (``hotel:<city>``)."""
    airport: str
    province: str
    """Province of a domestic destination ("" for international ones)."""
    popularity: float
    """Relative weight as a domestic leisure destination (0 for international)."""
    flight_price: tuple[float, float]
    """Round-trip economy fare range, CNY."""
    hotel_night_price: tuple[float, float]
    """Nightly hotel price range, CNY."""
    pack_price_factor: float = 1.0
    business_day_trip_share: float = 0.15
    """Share of periodic business trips here that are same-day (no hotel night)."""


PROVINCES: Final[tuple[Province, ...]] = (
    Province(
        "Guangdong", 0.16,
        (City("Guangzhou", "CAN", 0.5), City("Shenzhen", "SZX", 0.5)),
        "daily-unlimited",
        (("HK", 0.34), ("MO", 0.20), ("TH", 0.20), ("SG", 0.07), ("MY", 0.07),
         ("JP", 0.05), ("KR", 0.03), ("AU", 0.02), ("US", 0.02)),
    ),
    Province(
        "Beijing", 0.10, (City("Beijing", "PEK", 1.0),), "7day-5gb",
        (("KR", 0.22), ("JP", 0.18), ("US", 0.14), ("GB", 0.10), ("FR", 0.10),
         ("HK", 0.10), ("TH", 0.10), ("SG", 0.03), ("AU", 0.03)),
    ),
    Province(
        "Shanghai", 0.11, (City("Shanghai", "PVG", 1.0),), "15day-10gb",
        (("JP", 0.32), ("KR", 0.20), ("HK", 0.09), ("TH", 0.08), ("SG", 0.07),
         ("US", 0.09), ("FR", 0.06), ("GB", 0.05), ("AU", 0.04)),
    ),
    Province(
        "Zhejiang", 0.11,
        (City("Hangzhou", "HGH", 0.65), City("Ningbo", "NGB", 0.35)),
        "7day-5gb",
        (("JP", 0.26), ("KR", 0.16), ("TH", 0.16), ("HK", 0.10), ("SG", 0.10),
         ("MY", 0.06), ("US", 0.06), ("FR", 0.05), ("AU", 0.05)),
    ),
    Province(
        "Jiangsu", 0.12,
        (City("Nanjing", "NKG", 0.5), City("Suzhou", "WUX", 0.5)),
        "3day-2gb",
        (("JP", 0.24), ("KR", 0.26), ("TH", 0.14), ("HK", 0.10), ("SG", 0.08),
         ("US", 0.07), ("GB", 0.05), ("AU", 0.06)),
    ),
    Province(
        "Sichuan", 0.09, (City("Chengdu", "CTU", 1.0),), "daily-unlimited",
        (("TH", 0.32), ("JP", 0.16), ("KR", 0.12), ("SG", 0.10), ("MY", 0.10),
         ("HK", 0.10), ("FR", 0.05), ("AU", 0.05)),
    ),
    Province(
        "Hubei", 0.07, (City("Wuhan", "WUH", 1.0),), "3day-2gb",
        (("TH", 0.25), ("JP", 0.20), ("KR", 0.20), ("HK", 0.12), ("SG", 0.10),
         ("MY", 0.08), ("GB", 0.05)),
    ),
    Province(
        "Fujian", 0.06, (City("Xiamen", "XMN", 1.0),), "15day-10gb",
        (("SG", 0.22), ("MY", 0.20), ("HK", 0.16), ("TH", 0.16), ("JP", 0.10),
         ("KR", 0.06), ("US", 0.05), ("AU", 0.05)),
    ),
    Province(
        "Shandong", 0.10, (City("Qingdao", "TAO", 1.0),), "3day-2gb",
        (("KR", 0.42), ("JP", 0.24), ("TH", 0.10), ("HK", 0.08), ("SG", 0.06),
         ("US", 0.05), ("AU", 0.05)),
    ),
    Province(
        "Yunnan", 0.05, (City("Kunming", "KMG", 1.0),), "daily-unlimited",
        (("TH", 0.45), ("MY", 0.12), ("SG", 0.12), ("HK", 0.10), ("JP", 0.08),
         ("KR", 0.08), ("AU", 0.05)),
    ),
)

_TIER1_HOTEL = (400.0, 1500.0)
_TIER2_HOTEL = (250.0, 900.0)

DESTINATIONS: Final[tuple[Destination, ...]] = (
    # Domestic: the other home cities (Suzhou excluded, see module docstring)
    # plus classic leisure destinations.
    Destination("Guangzhou", "domestic", "Guangzhou", "CAN", "Guangdong", 0.8, (700, 2200), _TIER1_HOTEL),
    Destination("Shenzhen", "domestic", "Shenzhen", "SZX", "Guangdong", 0.7, (700, 2200), _TIER1_HOTEL),
    Destination("Beijing", "domestic", "Beijing", "PEK", "Beijing", 1.2, (800, 2500), _TIER1_HOTEL),
    Destination("Shanghai", "domestic", "Shanghai", "PVG", "Shanghai", 1.2, (700, 2300), _TIER1_HOTEL),
    Destination("Hangzhou", "domestic", "Hangzhou", "HGH", "Zhejiang", 0.8, (600, 2000), _TIER1_HOTEL),
    Destination("Ningbo", "domestic", "Ningbo", "NGB", "Zhejiang", 0.2, (600, 1800), _TIER2_HOTEL),
    Destination("Nanjing", "domestic", "Nanjing", "NKG", "Jiangsu", 0.5, (600, 1900), _TIER2_HOTEL),
    Destination("Chengdu", "domestic", "Chengdu", "CTU", "Sichuan", 1.0, (700, 2200), _TIER2_HOTEL),
    Destination("Wuhan", "domestic", "Wuhan", "WUH", "Hubei", 0.4, (500, 1800), _TIER2_HOTEL),
    Destination("Xiamen", "domestic", "Xiamen", "XMN", "Fujian", 0.8, (600, 2000), _TIER2_HOTEL),
    Destination("Qingdao", "domestic", "Qingdao", "TAO", "Shandong", 0.6, (600, 2000), _TIER2_HOTEL),
    Destination("Kunming", "domestic", "Kunming", "KMG", "Yunnan", 0.6, (700, 2400), _TIER2_HOTEL),
    Destination("Sanya", "domestic", "Sanya", "SYX", "Hainan", 1.1, (800, 2500), (500.0, 1500.0)),
    Destination("Xi'an", "domestic", "Xi'an", "XIY", "Shaanxi", 0.9, (600, 2000), _TIER2_HOTEL),
    Destination("Chongqing", "domestic", "Chongqing", "CKG", "Chongqing", 0.8, (600, 2000), _TIER2_HOTEL),
    Destination("Guilin", "domestic", "Guilin", "KWL", "Guangxi", 0.5, (500, 1800), _TIER2_HOTEL),
    Destination("Harbin", "domestic", "Harbin", "HRB", "Heilongjiang", 0.5, (800, 2500), _TIER2_HOTEL),
    Destination("Lijiang", "domestic", "Lijiang", "LJG", "Yunnan", 0.5, (700, 2300), _TIER2_HOTEL),
    # International (incl. the Hong Kong / Macau SARs: cross-border, roaming needed).
    Destination("HK", "international", "Hong Kong", "HKG", "", 0.0, (1500, 3000), (700.0, 1500.0),
                pack_price_factor=0.8, business_day_trip_share=0.6),
    Destination("MO", "international", "Macau", "MFM", "", 0.0, (1500, 2800), (600.0, 1500.0),
                pack_price_factor=0.8, business_day_trip_share=0.6),
    Destination("TH", "international", "Bangkok", "BKK", "", 0.0, (2000, 4500), (250.0, 900.0)),
    Destination("JP", "international", "Tokyo", "NRT", "", 0.0, (2500, 6500), (500.0, 1400.0)),
    Destination("KR", "international", "Seoul", "ICN", "", 0.0, (2000, 5000), (400.0, 1200.0)),
    Destination("SG", "international", "Singapore", "SIN", "", 0.0, (2500, 5500), (700.0, 1500.0)),
    Destination("MY", "international", "Kuala Lumpur", "KUL", "", 0.0, (2000, 4500), (250.0, 800.0)),
    Destination("US", "international", "Los Angeles", "LAX", "", 0.0, (6000, 12000), (800.0, 1500.0),
                pack_price_factor=1.3),
    Destination("GB", "international", "London", "LHR", "", 0.0, (5500, 11000), (800.0, 1500.0),
                pack_price_factor=1.3),
    Destination("FR", "international", "Paris", "CDG", "", 0.0, (5500, 11000), (800.0, 1500.0),
                pack_price_factor=1.3),
    Destination("AU", "international", "Sydney", "SYD", "", 0.0, (5000, 10000), (700.0, 1500.0),
                pack_price_factor=1.3),
)

BUSINESS_ROUTES: Final[Mapping[str, tuple[tuple[str, float], ...]]] = MappingProxyType({
    "Guangzhou": (("HK", 0.35), ("Shanghai", 0.30), ("Beijing", 0.25), ("MO", 0.10)),
    "Shenzhen": (("HK", 0.60), ("Shanghai", 0.20), ("Beijing", 0.15), ("MO", 0.05)),
    "Beijing": (("Shanghai", 0.45), ("Shenzhen", 0.25), ("HK", 0.15), ("Chengdu", 0.15)),
    "Shanghai": (("Beijing", 0.45), ("Shenzhen", 0.25), ("JP", 0.15), ("HK", 0.15)),
    "Hangzhou": (("Beijing", 0.40), ("Shenzhen", 0.35), ("JP", 0.15), ("HK", 0.10)),
    "Ningbo": (("Beijing", 0.40), ("Shenzhen", 0.30), ("JP", 0.15), ("KR", 0.15)),
    "Nanjing": (("Beijing", 0.45), ("Shenzhen", 0.35), ("HK", 0.20)),
    "Suzhou": (("Beijing", 0.35), ("Shenzhen", 0.35), ("JP", 0.15), ("KR", 0.15)),
    "Chengdu": (("Beijing", 0.40), ("Shanghai", 0.35), ("Shenzhen", 0.25)),
    "Wuhan": (("Beijing", 0.35), ("Shanghai", 0.35), ("Shenzhen", 0.30)),
    "Xiamen": (("Shanghai", 0.35), ("Beijing", 0.30), ("SG", 0.20), ("HK", 0.15)),
    "Qingdao": (("Shanghai", 0.35), ("Beijing", 0.20), ("KR", 0.30), ("JP", 0.15)),
    "Kunming": (("Beijing", 0.30), ("Shanghai", 0.30), ("Shenzhen", 0.20), ("TH", 0.20)),
})
"""Home city -> (destination key, weight) of periodic business travel."""


def home_cities() -> tuple[tuple[Province, City], ...]:
    """All (province, city) pairs customers can live in, in a stable order."""
    return tuple((p, c) for p in PROVINCES for c in p.cities)


def destination_index() -> dict[str, int]:
    """Map destination key -> position in :data:`DESTINATIONS`."""
    return {d.key: i for i, d in enumerate(DESTINATIONS)}


def _check_consistency() -> None:
    """Fail at import time if the tables reference something undefined."""
    keys = destination_index()
    assert len(keys) == len(DESTINATIONS), "duplicate destination keys"
    for province in PROVINCES:
        assert province.preferred_pack_kind in PACK_KINDS, province.name
        for code, _ in province.international_destinations:
            assert DESTINATIONS[keys[code]].kind == "international", (province.name, code)
    for city, routes in BUSINESS_ROUTES.items():
        for key, _ in routes:
            assert key in keys, (city, key)
    assert {c.name for _, c in home_cities()} == set(BUSINESS_ROUTES), "business routes per home city"


_check_consistency()
