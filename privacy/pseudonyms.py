"""Identifier normalisation and keyed pseudonyms, with a report of bad input.

Silos of one key domain link a customer by pseudonym, never by raw phone
number, e-mail or account id. For that to work the same person must give the
same string everywhere, so identifiers are first normalised (``138-0013-8000``
and ``+86 138 0013 8000`` are one number), then turned into a keyed
HMAC-SHA256 pseudonym with the domain's key from :mod:`fedprofile.privacy.keys`.
Without the key a pseudonym cannot be reversed by trying all phone numbers,
which a plain hash could.

Bad input is never pseudonymised: an empty or malformed value gives ``None``
rather than a pseudonym shared by every blank row (the HMAC of ""), and it is
counted in an :class:`IdentifierReport` with its row number and a masked
example, so an operator can fix the source without the report itself
becoming a list of identifiers.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import phonenumbers
from phonenumbers import PhoneNumber, PhoneNumberFormat

from fedprofile.privacy.keys import validate_domain

if TYPE_CHECKING:
    from fedprofile.privacy.keys import Keyring

__all__ = [
    "KINDS",
    "MAX_INPUT_LEN",
    "IdentifierReport",
    "InvalidIdentifier",
    "Pseudonymizer",
    "mask_identifier",
    "normalize",
    "normalize_account",
    "normalize_email",
    "normalize_phone",
    "pseudonymize_values",
]

KINDS = ("phone", "email", "account")
MAX_INPUT_LEN = 256  # longer values are refused before any parsing
MAX_EMAIL_LEN = 254  # RFC 5321 path limit
MAX_ACCOUNT_LEN = 128
MAX_EXAMPLES = 5
PSEUDONYM_HEX = 32  # 128 bits: no collisions at any realistic customer count
_HMAC_LABEL = b"fedprofile/v1\0"

_BAD = r"\s@\x00-\x1f\x7f-\x9f"
_EMAIL_RE = re.compile(rf"[^{_BAD}]+@[^{_BAD}.]+(?:\.[^{_BAD}.]+)+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PHONE_SEPARATORS = str.maketrans("", "", " \t\u00a0-.()/")
# A Chinese mobile number, optionally with its country code: the bulk of the
# phone numbers here, checked without phonenumbers' general parser.
_CN_MOBILE_RE = re.compile(r"(\+86|0086|86)?(1\d{10})")


class InvalidIdentifier(ValueError):
    """A value that cannot be normalised; ``reason`` is short and never contains the value."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# --------------------------------------------------------------------------- normalisation


def _text(value: str | bytes | None) -> str:
    """Strict, stripped text from a raw cell, refusing oversized input before looking at it."""
    if isinstance(value, str):
        text = value
    elif value is None:
        raise InvalidIdentifier("empty")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) > MAX_INPUT_LEN:
            raise InvalidIdentifier("too long")
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidIdentifier("not valid UTF-8") from None
    elif isinstance(value, float) and value != value:
        raise InvalidIdentifier("empty")  # NaN: a missing cell from pandas
    else:
        raise InvalidIdentifier("not text")
    if len(text) > MAX_INPUT_LEN:
        raise InvalidIdentifier("too long")
    text = text.strip()
    if not text:
        raise InvalidIdentifier("empty")
    return text


def normalize_phone(raw: str | bytes | None, default_region: str = "CN") -> str:
    """E.164 form (``+8613800138000``) of a phone number, or InvalidIdentifier.

    National numbers are read in ``default_region``. Thirteen digits starting
    with 86 are China's country code without the ``+`` (a common export
    format) and read as international. Chinese mobile numbers take a fast path
    that gives exactly phonenumbers' answer without its general parser.
    """
    text = _text(raw)
    compact = text.translate(_PHONE_SEPARATORS)
    match = _CN_MOBILE_RE.fullmatch(compact)
    if match and (match[1] in ("+86", "86") or default_region == "CN"):
        national = match[2]
        if phonenumbers.is_valid_number(PhoneNumber(country_code=86, national_number=int(national))):
            return "+86" + national
        raise InvalidIdentifier("not a valid phone number")
    if len(compact) == 13 and compact.startswith("86") and compact.isdigit():
        text = "+" + compact
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidIdentifier("not a valid phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidIdentifier("not a valid phone number")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def normalize_email(raw: str | bytes | None) -> str:
    """Lower-cased, stripped e-mail address, or InvalidIdentifier("malformed e-mail").

    The whole address is lower-cased (local parts are case-sensitive in
    theory, never in practice), so ``Li.Wei@Example.COM `` and
    ``li.wei@example.com`` are one customer.
    """
    text = _text(raw).lower()
    if len(text) > MAX_EMAIL_LEN:
        raise InvalidIdentifier("too long")
    if not _EMAIL_RE.fullmatch(text):
        raise InvalidIdentifier("malformed e-mail")
    return text


def normalize_account(raw: str | bytes | None) -> str:
    """A stripped account id (case kept: ids are case-sensitive), or InvalidIdentifier."""
    text = _text(raw)
    if len(text) > MAX_ACCOUNT_LEN:
        raise InvalidIdentifier("too long")
    if _CONTROL_RE.search(text):
        raise InvalidIdentifier("contains control characters")
    return text


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown identifier kind {kind!r:.40}; expected one of {', '.join(KINDS)}")
    return kind


def _check_region(region: str) -> str:
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown default region {region!r:.20}; use a two-letter region "
                         "code such as CN or US")
    return region


def _normalizer(kind: str, default_region: str) -> Callable[[str | bytes | None], str]:
    _check_kind(kind)
    if kind == "phone":
        _check_region(default_region)
        return lambda raw: normalize_phone(raw, default_region)
    return normalize_email if kind == "email" else normalize_account


def normalize(kind: str, raw: str | bytes | None, default_region: str = "CN") -> str:
    """Normalise ``raw`` as an identifier of ``kind`` ("phone", "email" or "account")."""
    return _normalizer(kind, default_region)(raw)


# --------------------------------------------------------------------------- pseudonyms


class Pseudonymizer:
    """Keyed pseudonyms for one key version of one domain.

    pseudonym = ``<k><version>-`` + the first 32 hex chars of
    HMAC-SHA256(key, "fedprofile/v1\\0" domain "\\0" kind "\\0" value), where
    ``<k>`` is the kind's initial. The domain and kind are inside the MAC, so
    the same string as a phone and as an account, or in two domains, gives
    unrelated pseudonyms; the version prefix tells at a glance which key made
    a pseudonym. The key itself is not kept: only HMAC states derived from it,
    and ``repr`` shows the domain and version only.
    """

    __slots__ = ("_domain", "_version", "_macs")

    def __init__(self, key: bytes, version: int, domain: str) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
            raise ValueError("a pseudonymisation key must be 32 bytes"
                             + (f", got {len(key)}" if isinstance(key, (bytes, bytearray)) else ""))
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"key version must be a positive integer, got {version!r:.20}")
        self._domain = validate_domain(domain)
        self._version = version
        prefix = _HMAC_LABEL + domain.encode("utf-8") + b"\0"
        self._macs = {kind: (f"{kind[0]}{version}-",
                             hmac.new(bytes(key), prefix + kind.encode() + b"\0", "sha256"))
                      for kind in KINDS}

    @classmethod
    def from_keyring(cls, keyring: Keyring, version: int | None = None) -> Pseudonymizer:
        """The pseudonymizer for ``version`` (default: active); a retired version raises RetiredKeyError."""
        key = keyring.key(version)
        return cls(key, keyring.active_version if version is None else version, keyring.domain)

    @property
    def domain(self) -> str:
        return self._domain

    @property
    def version(self) -> int:
        return self._version

    def pseudonym(self, kind: str, normalized: str) -> str:
        """The pseudonym of an already normalised identifier (see :func:`normalize`).

        An empty value is refused: one pseudonym shared by every blank
        would link unrelated customers.
        """
        prefix, base = self._macs[_check_kind(kind)]
        if not isinstance(normalized, str):
            raise TypeError(f"normalized must be a str, got a {type(normalized).__name__}")
        if not normalized:
            raise InvalidIdentifier("empty")
        try:
            data = normalized.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidIdentifier("not valid UTF-8") from None
        mac = base.copy()
        mac.update(data)
        return prefix + mac.hexdigest()[:PSEUDONYM_HEX]

    def __repr__(self) -> str:
        return f"Pseudonymizer(domain={self._domain!r}, version={self._version})"


# --------------------------------------------------------------------------- reports


def mask_identifier(text: str) -> str:
    """A display form of a bad value that does not reveal it.

    At most the first 2 and last 1 characters stay (fewer for short values,
    none up to 4 characters), the rest become ``*``, the result is at most 12
    characters, and unprintable characters show as ``?`` so a value cannot
    inject lines or escape codes into a log.
    """
    n = len(text)
    if n <= 4:
        return "*" * n
    head, tail = (1, 1) if n <= 7 else (2, 1)
    shown = min(n, 12)

    def safe(part: str) -> str:
        return "".join(c if c.isprintable() else "?" for c in part)

    return safe(text[:head]) + "*" * (shown - head - tail) + safe(text[-tail:])


def _display(value: object) -> str:
    """The text of a raw value for masking, whatever it was."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace").strip()
    return str(value).strip()


@dataclass
class IdentifierReport:
    """Counts of valid and invalid values of one identifier column, with masked examples."""

    kind: str
    total: int = 0
    valid: int = 0
    invalid: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[int, str, str]] = field(default_factory=list)  # (row, masked value, reason)

    def add_invalid(self, row: int, value: object, reason: str) -> None:
        """Count one bad value; keep a masked example of the first few."""
        self.invalid += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append((row, mask_identifier(_display(value)), reason))

    def __str__(self) -> str:
        text = (f"{self.kind}: {self.total:,} values, {self.valid:,} valid, "
                f"{self.invalid:,} invalid")
        if self.reasons:
            ranked = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
            text += " (" + ", ".join(f"{reason} {count:,}" for reason, count in ranked) + ")"
        if self.examples:
            text += "; e.g. " + ", ".join(f"row {row} '{masked}' ({reason})"
                                          for row, masked, reason in self.examples)
        return text


def pseudonymize_values(
    values: Sequence[str | bytes | None],
    kind: str,
    pseudonymizer: Pseudonymizer,
    default_region: str = "CN",
    first_row: int = 1,
) -> tuple[list[str | None], IdentifierReport]:
    """Normalise and pseudonymise a column; bad values become ``None`` and go in the report.

    Row numbers in the report are ``first_row + index`` so they match the
    source file's rows. Nothing derived from the raw values outlives the
    call except the pseudonyms and the masked examples.
    """
    normalize_one = _normalizer(kind, default_region)
    if not isinstance(pseudonymizer, Pseudonymizer):
        raise TypeError(f"expected a Pseudonymizer, got a {type(pseudonymizer).__name__}")
    prefix, base = pseudonymizer._macs[kind]
    report = IdentifierReport(kind)
    out: list[str | None] = []
    append = out.append
    for index, value in enumerate(values):
        try:
            data = normalize_one(value).encode("utf-8")
        except InvalidIdentifier as exc:
            report.add_invalid(first_row + index, value, exc.reason)
            append(None)
            continue
        except UnicodeEncodeError:  # a str with lone surrogates
            report.add_invalid(first_row + index, value, "not valid UTF-8")
            append(None)
            continue
        mac = base.copy()
        mac.update(data)
        append(prefix + mac.hexdigest()[:PSEUDONYM_HEX])
    report.total = len(out)
    report.valid = report.total - report.invalid
    return out, report
