"""A simulation scenario: one TOML file that says everything a run needs, validated up front.

A compliance team signs off on a *scenario*, not on a command line: platform
size, how many silos, which models, which DP settings, how many rounds and
seeds. Keeping it in one file makes a result reproducible (same file, same
numbers) and reviewable. A mistake fails before any work starts, naming the
file, the line and the key, so a 20-minute sweep never dies at minute 19 on a
typo.

Example (``fedprofile simulate --example`` prints the full default)::

    seeds = [0, 1, 2]

    [platform]
    customers = 3000

    [silos]
    count = 3          # the three business lines; more splits lines by customer
    holdout = 0.3      # share of customers kept out of training (the audit's non-members)

    [training]
    models = ["propensity", "recommender"]
    rounds = 3

    [dp]
    epsilons = [1.0, 4.0, 16.0]
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fedprofile.config import DEFAULT_K_MIN, MODELS

QUASI_IDENTIFIERS = ("region", "age_band", "tier")
"""What a breakdown release may group customers by (all three are quasi-identifiers)."""


class ScenarioError(ValueError):
    """A scenario file is unreadable, or a key in it is unknown or out of range."""


class AuditViolation(RuntimeError):
    """An empirical privacy lower bound exceeds the epsilon the accountant claimed (a bug)."""


SCENARIOS_DIR = Path(__file__).parent / "scenarios"


def packaged_scenario(name_or_path: str) -> Path:
    """A scenario file: a path, or the name of a packaged one (``default``, ``scale``)."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or path.exists():
        return path
    packaged = SCENARIOS_DIR / f"{name_or_path}.toml"
    if packaged.is_file():
        return packaged
    known = ", ".join(sorted(p.stem for p in SCENARIOS_DIR.glob("*.toml")))
    raise ScenarioError(f"no scenario file {name_or_path!r} and no packaged scenario of that "
                        f"name (packaged: {known})")


@dataclass(frozen=True)
class PlatformSection:
    customers: int = 3000
    seed: int = 7


@dataclass(frozen=True)
class SilosSection:
    count: int = 3
    holdout: float = 0.3


@dataclass(frozen=True)
class TrainingSection:
    models: tuple[str, ...] = ("propensity", "recommender")
    rounds: int = 3
    local_epochs: int = 2
    batch_size: int = 64
    learning_rate: float = 0.01
    hidden_units: int = 64
    rec_dim: int = 32


@dataclass(frozen=True)
class DPSection:
    epsilons: tuple[float, ...] = (1.0, 4.0, 16.0)
    delta: float = 1e-5
    clip_norm: float = 1.0
    no_dp: bool = True


@dataclass(frozen=True)
class SweepSection:
    tolerance: float = 0.05
    """Utility within this share of the non-private model's counts as kept (0.05: 95%)."""
    confidence: float = 0.95


@dataclass(frozen=True)
class AuditSection:
    enabled: bool = True
    canaries: int = 200
    """Audit canaries planted per line, half of them (at random) in training."""
    confidence: float = 0.95
    low_fprs: tuple[float, ...] = (0.01, 0.001)


@dataclass(frozen=True)
class ReleaseSection:
    k_min: int = DEFAULT_K_MIN
    segments: bool = True
    """Also run a DP segmentation and check the segment report it releases."""
    segment_epsilon: float = 1.0
    quasi_identifiers: tuple[str, ...] = QUASI_IDENTIFIERS
    campaigns: bool = True
    """Also run marketing cases 1 (PSI, A/B test played out) and 2 (tier plans); check their releases."""


SECTIONS = {"platform": PlatformSection, "silos": SilosSection, "training": TrainingSection,
            "dp": DPSection, "sweep": SweepSection, "audit": AuditSection,
            "release": ReleaseSection}


@dataclass(frozen=True)
class Scenario:
    """Every setting of a simulation; see the module docstring for the file format."""

    name: str = "scenario"
    seeds: tuple[int, ...] = (0, 1, 2)
    platform: PlatformSection = field(default_factory=PlatformSection)
    silos: SilosSection = field(default_factory=SilosSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    dp: DPSection = field(default_factory=DPSection)
    sweep: SweepSection = field(default_factory=SweepSection)
    audit: AuditSection = field(default_factory=AuditSection)
    release: ReleaseSection = field(default_factory=ReleaseSection)

    @property
    def privacy_levels(self) -> list[float | None]:
        """The sweep's points: ``None`` (no DP) first when asked for, then epsilons ascending."""
        return ([None] if self.dp.no_dp else []) + sorted(self.dp.epsilons)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "seeds": list(self.seeds)}
        for name in SECTIONS:
            section = getattr(self, name)
            out[name] = {f.name: (list(v) if isinstance(v := getattr(section, f.name), tuple) else v)
                         for f in fields(section)}
        return out


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file; every error names the file, line and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the scenario ({exc.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    return scenario_from_dict(raw, _Locator(path, text))


def scenario_from_dict(raw: dict[str, Any], where: _Locator | None = None) -> Scenario:
    """Validate a parsed scenario (what :func:`load_scenario` does after reading the file)."""
    where = where or _Locator(Path("<scenario>"), "")
    top = {"name", "seeds", *SECTIONS}
    for key in raw:
        if key not in top:
            raise ScenarioError(where.say(None, key, f"unknown key; known: {', '.join(sorted(top))}"))
    name = raw.get("name", "scenario")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ScenarioError(where.say(None, "name", "must be 1-64 letters, digits, '.', '_' or '-'"))
    seeds = _int_list(raw.get("seeds", [0, 1, 2]), where, None, "seeds", minimum=0)
    sections: dict[str, Any] = {}
    for section_name, cls in SECTIONS.items():
        values = raw.get(section_name, {})
        if not isinstance(values, dict):
            raise ScenarioError(where.say(None, section_name, "must be a table ([section])"))
        sections[section_name] = _section(cls, section_name, values, where)
    scenario = Scenario(name=name, seeds=tuple(seeds), **sections)
    _check(scenario, where)
    return scenario


def _section(cls: type, section: str, values: dict[str, Any], where: _Locator) -> Any:
    known = {f.name: f for f in fields(cls)}
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ScenarioError(where.say(section, key, f"unknown key; known in [{section}]: "
                                                        f"{', '.join(sorted(known))}"))
        default = getattr(defaults, key)
        kwargs[key] = _typed(value, default, where, section, key)
    return cls(**kwargs)


def _typed(value: Any, default: Any, where: _Locator, section: str, key: str) -> Any:
    """``value`` as the type of the field's default, or a clear error."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ScenarioError(where.say(section, key, f"must be true or false, got {value!r}"))
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(where.say(section, key, f"must be an integer, got {value!r}"))
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ScenarioError(where.say(section, key, f"must be a number, got {value!r}"))
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not value:
            raise ScenarioError(where.say(section, key, f"must be a non-empty list, got {value!r}"))
        kind = type(default[0])
        out = []
        for item in value:
            if kind is float and isinstance(item, int | float) and not isinstance(item, bool):
                out.append(float(item))
            elif isinstance(item, kind) and not isinstance(item, bool):
                out.append(item)
            else:
                raise ScenarioError(where.say(section, key, f"must be a list of {kind.__name__}, "
                                                            f"got {item!r} in it"))
        if len(set(out)) != len(out):
            raise ScenarioError(where.say(section, key, f"has a repeated value: {value!r}"))
        return tuple(out)
    raise AssertionError(f"unhandled type for {section}.{key}")  # pragma: no cover


def _int_list(value: Any, where: _Locator, section: str | None, key: str, minimum: int) -> list[int]:
    if (not isinstance(value, list) or not value
            or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value)):
        raise ScenarioError(where.say(section, key, f"must be a non-empty list of integers >= "
                                                    f"{minimum}, got {value!r}"))
    if len(set(value)) != len(value):
        raise ScenarioError(where.say(section, key, f"has a repeated value: {value!r}"))
    return value


def _check(s: Scenario, where: _Locator) -> None:
    """Ranges and cross-field rules (the types were checked while reading)."""
    def need(ok: bool, section: str, key: str, message: str) -> None:
        if not ok:
            raise ScenarioError(where.say(section, key, message))

    need(s.platform.customers >= 200, "platform", "customers", "must be at least 200")
    need(s.silos.count >= 3, "silos", "count", "must be at least 3 (one per business line)")
    need(0 <= s.silos.holdout <= 0.8, "silos", "holdout", "must be between 0 and 0.8")
    need(0 <= s.audit.canaries <= 5000, "audit", "canaries", "must be between 0 and 5000")
    need(not s.audit.enabled or s.audit.canaries >= 20 or s.silos.holdout >= 0.05, "silos",
         "holdout", "must be at least 0.05 when [audit] is enabled without canaries: held-out "
         "customers are the membership attack's non-members")
    for model in s.training.models:
        need(model in MODELS, "training", "models", f"unknown model {model!r}; known: "
                                                    f"{', '.join(MODELS)}")
    for key in ("rounds", "local_epochs", "batch_size", "hidden_units", "rec_dim"):
        need(getattr(s.training, key) >= 1, "training", key, "must be a positive integer")
    need(0 < s.training.learning_rate <= 10, "training", "learning_rate", "must be in (0, 10]")
    need(all(0 < e <= 1000 for e in s.dp.epsilons), "dp", "epsilons",
         "every epsilon must be in (0, 1000]")
    need(0 < s.dp.delta < 1e-2, "dp", "delta", "must be in (0, 0.01)")
    need(s.dp.clip_norm > 0, "dp", "clip_norm", "must be > 0")
    need(0 <= s.sweep.tolerance < 1, "sweep", "tolerance", "must be in [0, 1)")
    need(0.5 <= s.sweep.confidence < 1, "sweep", "confidence", "must be in [0.5, 1)")
    need(0.5 <= s.audit.confidence < 1, "audit", "confidence", "must be in [0.5, 1)")
    need(all(0 < f < 0.5 for f in s.audit.low_fprs), "audit", "low_fprs",
         "every rate must be in (0, 0.5)")
    need(not s.audit.enabled or (s.dp.no_dp and "propensity" in s.training.models), "audit",
         "enabled", "the audit attacks the propensity models and needs the no-DP control: "
                    "set [dp] no_dp = true and train \"propensity\"")
    need(s.release.k_min >= 2, "release", "k_min", "must be at least 2")
    need(0 < s.release.segment_epsilon <= 100, "release", "segment_epsilon", "must be in (0, 100]")
    for qi in s.release.quasi_identifiers:
        need(qi in QUASI_IDENTIFIERS, "release", "quasi_identifiers",
             f"unknown quasi-identifier {qi!r}; known: {', '.join(QUASI_IDENTIFIERS)}")


class _Locator:
    """Finds the line a key is on, so an error can point at it (tomllib does not keep lines)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, section: str | None, key: str) -> int | None:
        current: str | None = None
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            header = re.fullmatch(r"\[\s*([A-Za-z0-9_.-]+)\s*\]", stripped.split("#")[0].strip())
            if header:
                current = header.group(1)
                if section is None and current == key:
                    return number
                continue
            if current == section and re.match(rf"{re.escape(key)}\s*=", stripped):
                return number
            if section is not None and current is None and stripped.startswith(f"{section}."):
                if re.match(rf"{re.escape(section)}\.{re.escape(key)}\s*=", stripped):
                    return number
        return None

    def say(self, section: str | None, key: str, message: str) -> str:
        line = self.line_of(section, key)
        where = f"{self.path}" + (f", line {line}" if line else "")
        name = f"{section}.{key}" if section else key
        return f"{where}: {name}: {message}"
