"""Customer tags defined in configuration, not code: a TOML file of named conditions.

A marketer changes what "high-value" or "lapsed" means by editing a file,
and the file can be reviewed like any other configuration::

    [tags.high-value]
    description = "top spenders who buy often"
    when = ["monetary >= q0.8", "frequency >= 3"]

Each condition is ``<field> <op> <value>`` over one customer's profile
(:mod:`fedprofile.client.profiles`); all of a tag's conditions must hold.
``value`` is a number, a quantile ``qP`` (``0 < P < 1``; the P-quantile of the
field within this silo, over customers where the field is known, so "top
20 %" means the same thing in a silo of any size or currency), or a quoted
string for the text fields. A missing value (NaN, or an empty text) never
satisfies a condition, not even ``!=``: "unknown" is not evidence.

The grammar is parsed by a regular expression and evaluated with numpy
comparisons; nothing in a tag file is ever executed. Every mistake is reported
with the file, the tag and the condition it is in.
"""

from __future__ import annotations

import math
import operator
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["NUMERIC_FIELDS", "TEXT_FIELDS", "OPERATORS", "DEFAULT_TAGS_FILE", "TagRuleError",
           "Condition", "TagRule", "parse_rules", "load_tag_rules", "load_rules",
           "apply_tags"]

NUMERIC_FIELDS: tuple[str, ...] = (
    "recency_days", "frequency", "monetary", "avg_order_value", "tenure_days",
    "mean_interval_days", "median_interval_days", "predicted_next_purchase", "days_until_next",
    "periodicity", "overdue_ratio", "p_alive", "churn_risk", "clv", "r_score", "f_score",
    "m_score",
)
"""Profile fields a condition may compare with numbers (see :class:`~fedprofile.client.profiles.Profiles`)."""

TEXT_FIELDS: tuple[str, ...] = ("region", "rfm_segment")
"""Profile fields a condition may compare with quoted strings (``==`` and ``!=`` only)."""

OPERATORS: dict[str, Callable[[np.ndarray, object], np.ndarray]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
    "<": operator.lt, ">": operator.gt,
}

DEFAULT_TAGS_FILE = "default_tags.toml"
"""The packaged tag file (next to this module), used when no file is given."""

_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*(.*?)\s*$")
_QUANTILE = re.compile(r"^q(\d*\.?\d+)$")
_TAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_TAG_KEYS = ("description", "when")


class TagRuleError(ValueError):
    """A tag file that cannot be used; the message names the file, tag and condition."""


@dataclass(frozen=True)
class Condition:
    """``field op value``; exactly one of ``number``, ``quantile``, ``text`` is set."""

    field: str
    op: str
    number: float | None = None
    quantile: float | None = None
    text: str | None = None
    source: str = ""

    def threshold(self, values: np.ndarray) -> float:
        """The number to compare with: the literal, or the quantile over the known values."""
        if self.number is not None:
            return self.number
        known = values[np.isfinite(values)]
        return float(np.quantile(known, self.quantile)) if len(known) else math.nan

    def holds(self, values: np.ndarray) -> np.ndarray:
        """Per customer: does the condition hold? Missing values never do."""
        compare = OPERATORS[self.op]
        if self.text is not None:
            text = np.asarray(values, dtype=object)
            known = np.array([isinstance(v, str) and v != "" for v in text], dtype=bool)
            return known & np.asarray(compare(text, self.text), dtype=bool)
        numbers = np.asarray(values, dtype=np.float64)
        limit = self.threshold(numbers)
        if not math.isfinite(limit):
            return np.zeros(len(numbers), dtype=bool)
        with np.errstate(invalid="ignore"):
            return np.isfinite(numbers) & compare(numbers, limit)


@dataclass(frozen=True)
class TagRule:
    """A named tag (or tier): a customer gets it when every condition holds.

    ``extra`` holds the rule's other keys where the file kind allows them (a
    tier's coupon, say); plain tags have none.
    """

    name: str
    description: str
    conditions: tuple[Condition, ...]
    extra: Mapping[str, object] = field(default_factory=dict)


def _parse_condition(text: object, where: str) -> Condition:
    if not isinstance(text, str):
        raise TagRuleError(f"{where}: must be a string like \"monetary >= q0.8\", got {text!r}")
    match = _CONDITION.match(text)
    if not match:
        raise TagRuleError(f"{where}: expected '<field> <op> <value>' with op one of "
                           f"{' '.join(OPERATORS)}")
    field, op, raw = match.groups()
    if field not in NUMERIC_FIELDS and field not in TEXT_FIELDS:
        raise TagRuleError(f"{where}: unknown field {field!r} (known: "
                           f"{', '.join(NUMERIC_FIELDS + TEXT_FIELDS)})")
    if not raw:
        raise TagRuleError(f"{where}: no value after {op!r}")
    quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'"
    if field in TEXT_FIELDS:
        if not quoted:
            raise TagRuleError(f"{where}: {field!r} is text, so the value must be quoted, "
                               f"e.g. {field} == \"uk\"")
        if op not in ("==", "!="):
            raise TagRuleError(f"{where}: {field!r} is text and can only be compared with "
                               "== or !=")
        return Condition(field, op, text=raw[1:-1], source=text)
    if quoted:
        raise TagRuleError(f"{where}: {field!r} is a number, so the value must be a number "
                           "or a quantile like q0.8, not a string")
    quantile = _QUANTILE.match(raw)
    if quantile:
        level = float(quantile.group(1))
        if not 0.0 < level < 1.0:
            raise TagRuleError(f"{where}: quantile {raw!r} must be between q0 and q1 "
                               "(exclusive), e.g. q0.8")
        return Condition(field, op, quantile=level, source=text)
    try:
        number = float(raw)
    except ValueError:
        raise TagRuleError(f"{where}: value {raw!r} is neither a number nor a quantile "
                           "like q0.8") from None
    if not math.isfinite(number):
        raise TagRuleError(f"{where}: value {raw!r} must be a finite number")
    return Condition(field, op, number=number, source=text)


def parse_rules(document: Mapping[str, object], source: str, section: str = "tags",
                extra_keys: Sequence[str] = ()) -> list[TagRule]:
    """Named condition rules from ``[<section>.<name>]`` tables, in file order.

    Shared by tags and by membership tiers (which add a coupon per rule via
    ``extra_keys``), so both are written and validated the same way.
    """
    kind = section[:-1] if section.endswith("s") else section
    allowed = (*_TAG_KEYS, *extra_keys)
    unknown = sorted(set(document) - {section})
    if unknown:
        raise TagRuleError(f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                           f"{section} go in [{section}.<name>] tables")
    tags = document.get(section)
    if not isinstance(tags, Mapping) or not tags:
        raise TagRuleError(f"{source}: no {section}: expected at least one [{section}.<name>] "
                           "table")
    rules: list[TagRule] = []
    for name, body in tags.items():
        where = f"{source}: {kind} {name!r}"
        if not _TAG_NAME.match(name):
            raise TagRuleError(f"{where}: a tag name is letters, digits, '-' and '_', "
                               "starting with a letter or digit")
        if not isinstance(body, Mapping):
            raise TagRuleError(f"{where}: must be a table with 'when' (and 'description')")
        extra = sorted(set(body) - set(allowed))
        if extra:
            raise TagRuleError(f"{where}: unknown key(s) {', '.join(map(repr, extra))} "
                               f"(known: {', '.join(allowed)})")
        description = body.get("description", "")
        if not isinstance(description, str):
            raise TagRuleError(f"{where}: 'description' must be a string")
        when = body.get("when")
        if not isinstance(when, list) or not when:
            raise TagRuleError(f"{where}: 'when' must be a non-empty list of conditions")
        conditions = tuple(
            _parse_condition(c, f"{where}: condition {i} {c!r}" if isinstance(c, str)
                             else f"{where}: condition {i}")
            for i, c in enumerate(when, start=1))
        rules.append(TagRule(name=name, description=description, conditions=conditions,
                             extra={k: body[k] for k in extra_keys if k in body}))
    return rules


def load_tag_rules(path: Path | None = None) -> list[TagRule]:
    """The tag rules in ``path``, or the packaged defaults when ``path`` is None."""
    return load_rules(path, DEFAULT_TAGS_FILE)


def load_rules(path: Path | None, packaged_file: str, section: str = "tags",
               extra_keys: Sequence[str] = ()) -> list[TagRule]:
    """Rules from ``path``, or from the packaged ``packaged_file`` when ``path`` is None."""
    if path is None:
        packaged = resources.files(__package__).joinpath(packaged_file)
        return parse_rules(tomllib.loads(packaged.read_text(encoding="utf-8")), packaged_file,
                           section, extra_keys)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise TagRuleError(f"{path}: cannot read the file: {err.strerror or err}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:  # the message carries the line and column
        raise TagRuleError(f"{path}: not valid TOML: {err}") from None
    return parse_rules(document, str(path), section, extra_keys)


def apply_tags(profiles_fields: Mapping[str, Sequence[object] | np.ndarray],
               rules: Sequence[TagRule]) -> list[list[str]]:
    """Per customer, the names of the tags whose conditions all hold (in rule order).

    ``profiles_fields`` maps field names to one array per field, aligned by
    customer (what :func:`fedprofile.client.profiles.compute_profiles` passes).
    Quantiles are taken over the customers given here.
    """
    if not profiles_fields:
        return []
    n = len(next(iter(profiles_fields.values())))
    hits = np.zeros((len(rules), n), dtype=bool)
    for k, rule in enumerate(rules):
        holds = np.ones(n, dtype=bool)
        for condition in rule.conditions:
            if condition.field not in profiles_fields:
                raise KeyError(f"tag {rule.name!r}: condition {condition.source!r} needs the "
                               f"field {condition.field!r}, which the profiles do not have")
            values = np.asarray(profiles_fields[condition.field])
            if len(values) != n:
                raise ValueError(f"profile field {condition.field!r} has {len(values)} values "
                                 f"for {n} customers")
            holds &= condition.holds(values)
        hits[k] = holds
    names = [rule.name for rule in rules]
    return [[names[k] for k in np.nonzero(hits[:, u])[0]] for u in range(n)]
