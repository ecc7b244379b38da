"""Finding the silos of a workspace (used by simulations, where one machine hosts them all)."""

from __future__ import annotations

from pathlib import Path

from .store import STORE_FILENAME


def list_silos(silos_dir: Path) -> list[Path]:
    """Silo directories under ``silos_dir`` (those holding a store), sorted by name.

    Sorted so that every process of a simulation maps partition ``i`` to the
    same silo.
    """
    silos_dir = Path(silos_dir)
    if not silos_dir.is_dir():
        raise FileNotFoundError(
            f"no silos directory at {silos_dir}: run `fedprofile demo`, or "
            "`fedprofile generate` then `fedprofile silo ingest`, first"
        )
    silos = sorted(p for p in silos_dir.iterdir() if (p / STORE_FILENAME).is_file())
    if not silos:
        raise FileNotFoundError(f"{silos_dir} holds no silo stores")
    return silos
