"""Shared fixtures: a small generated platform and its silos, built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedprofile.demo import build_silos
from fedprofile.privacy.keys import Keyring, Secret, generate_key_file
from fedprofile.privacy.ledger import Ledger, ledger_key_from_file
from fedprofile.privacy.silo_keys import SiloKeys, load_silo_keys
from fedprofile.simulations.online_retail import DEFAULT_PATH as ONLINE_RETAIL_PATH
from fedprofile.simulations.platform import PlatformConfig, generate_platform

SMALL_PLATFORM = PlatformConfig(n_customers=3000, seed=11)

ONLINE_RETAIL_MISSING = (f"the UCI Online Retail file is not at {ONLINE_RETAIL_PATH} "
                         "(it is read from ../shared beside the checkout)")
needs_online_retail = pytest.mark.skipif(not ONLINE_RETAIL_PATH.exists(),
                                         reason=ONLINE_RETAIL_MISSING)
"""Marks a test on the real dataset; a checkout without ``../shared`` skips it, saying why."""


def require_online_retail() -> None:
    """Skip the calling fixture's tests when the real dataset is not beside the checkout."""
    if not ONLINE_RETAIL_PATH.exists():
        pytest.skip(ONLINE_RETAIL_MISSING)

LONGEST_FILES = ("test_simulate.py", "test_deployment.py", "test_cli.py", "test_joint.py",
                 "test_dp_training.py")
"""Test files of more than a minute and a half each (``make test`` prints the slowest tests)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the longest files first.

    ``make test`` runs ``pytest -n 2 --dist loadfile``: each file goes whole to
    one of two workers (module fixtures are built once), in collection order.
    A long file handed out last keeps one worker busy while the other idles.
    The sort is stable, so each file's tests keep their order.
    """
    items.sort(key=lambda item: item.path.name not in LONGEST_FILES)


@pytest.fixture(scope="session", autouse=True)
def _private_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never read or write the developer's ~/.fedprofile or ~/.flwr from tests."""
    home = tmp_path_factory.mktemp("fedprofile-home")
    saved = {k: os.environ.get(k) for k in ("FEDPROFILE_HOME", "FLWR_HOME")}
    os.environ["FEDPROFILE_HOME"] = str(home / "fedprofile")
    os.environ["FLWR_HOME"] = str(home / "flwr")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@dataclass(frozen=True)
class Domain:
    """A key domain for tests: its keyring and the secret that opens it."""

    keyring: Path
    secret: Secret

    def keys(self, silo_dir: Path, keep_raw_ids: bool = True) -> SiloKeys:
        return load_silo_keys(self.keyring, self.secret, silo_dir, keep_raw_ids=keep_raw_ids)


@pytest.fixture(scope="session")
def domain(tmp_path_factory: pytest.TempPathFactory) -> Domain:
    keys_dir = tmp_path_factory.mktemp("keys")
    secret = Secret.from_key_file(generate_key_file(keys_dir / "travel.key"))
    Keyring.create(keys_dir / "travel.keyring", "travel", secret)
    return Domain(keys_dir / "travel.keyring", secret)


@pytest.fixture(scope="session")
def platform_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("platform") / "platform"
    generate_platform(SMALL_PLATFORM, out)
    return out


@pytest.fixture(scope="session")
def silos_dir(platform_dir: Path, domain: Domain, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("silos") / "silos"
    build_silos(platform_dir, out, domain.keyring, domain.secret, progress=lambda _m: None)
    return out


def flower_processes(under: Path) -> list[str]:
    """Live (non-zombie) processes whose FLWR_HOME lies under ``under``, whatever their name.

    fedprofile gives each run a private FLWR_HOME that every process it starts
    inherits (SuperLink, SuperNodes, SuperExecs, their forkservers and task
    processes, Ray's workers), so this finds exactly the processes a test's run
    started, and is not fooled by other Flower processes on the machine.
    """
    root = str(Path(under).resolve())
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if state == "Z":
            continue
        home = next((e[len(b"FLWR_HOME="):].decode(errors="replace") for e in environ
                     if e.startswith(b"FLWR_HOME=")), "")
        if home.startswith(root):
            found.append(f"{proc.name} {cmdline[:200]}")
    return found


def workspace_ledger(workspace: Path, caps: dict[str, float], purpose: str) -> Path:
    """The workspace's default ledger, with an epsilon cap per silo for ``purpose``."""
    path = workspace / "ledger" / "privacy-ledger.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    generate_key_file(path.with_name("ledger.key"))
    with Ledger.create(path, ledger_key_from_file(path.with_name("ledger.key"))) as ledger:
        for silo, cap in caps.items():
            ledger.set_cap(silo, purpose, cap, 1e-3)
    return path


def open_ledger(path: Path) -> Ledger:
    return Ledger.open(path, ledger_key_from_file(path.with_name("ledger.key")))


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test interrupts with Ctrl-C (SIGINT).

    A test runner started in the background (``make test &``, some CI
    shells) ignores SIGINT, and children inherit that, so the interrupted
    program would never see the Ctrl-C the test sends. Restore the default.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
