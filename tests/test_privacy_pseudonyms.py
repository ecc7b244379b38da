"""Identifier normalisation, keyed pseudonyms across silos and domains, and bad-input reports."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import phonenumbers
import pytest

from fedprofile.privacy import keys as keys_module
from fedprofile.privacy.keys import Keyring, RetiredKeyError, Secret
from fedprofile.privacy.pseudonyms import (
    IdentifierReport,
    InvalidIdentifier,
    Pseudonymizer,
    mask_identifier,
    normalize,
    normalize_account,
    normalize_email,
    normalize_phone,
    pseudonymize_values,
)

KEY = bytes(range(32))
PSEUDONYM_RE = re.compile(r"[pea][1-9]\d*-[0-9a-f]{32}")


@pytest.fixture(autouse=True)
def _fast_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_module, "SCRYPT_N", 2**10)


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("raw", ["+86 138 0013 8000", "138-0013-8000", "13800138000", "8613800138000",
                                 "+8613800138000", " 138 0013 8000 ", "(138) 0013-8000",
                                 "008613800138000", b"13800138000"])
def test_chinese_phone_formats_give_one_e164(raw: str) -> None:
    assert normalize_phone(raw) == "+8613800138000"


def test_other_phone_numbers() -> None:
    assert normalize_phone("+1 415-555-2671") == "+14155552671"
    assert normalize_phone("(415) 555-2671", default_region="US") == "+14155552671"
    assert normalize_phone("010-1234 5678") == "+861012345678"  # Beijing landline
    assert normalize_phone("+86 13800138000", default_region="US") == "+8613800138000"
    assert normalize_phone("8613800138000", default_region="US") == "+8613800138000"


@pytest.mark.parametrize("raw", ["123", "12345678901", "+86 123", "call me", "138-0013-800",
                                 "+999 12345678"])
def test_invalid_phone_numbers(raw: str) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        normalize_phone(raw)
    assert info.value.reason == "not a valid phone number"
    assert raw not in str(info.value)


def test_chinese_mobile_fast_path_agrees_with_phonenumbers() -> None:
    """The fast path for CN mobiles must give exactly the general parser's answer."""
    rng = random.Random(7)
    for _ in range(3000):
        digits = f"1{rng.randrange(10**10):010d}"
        for raw in (digits, "+86" + digits, "86" + digits):
            try:
                number = phonenumbers.parse("+" + raw if raw.startswith("86") else raw, "CN")
                expected = (phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
                            if phonenumbers.is_valid_number(number) else None)
            except phonenumbers.NumberParseException:
                expected = None
            try:
                got: str | None = normalize_phone(raw)
            except InvalidIdentifier:
                got = None
            assert got == expected, raw


def test_email_normalisation() -> None:
    variants = ["Li.Wei@Example.COM", "  li.wei@example.com\t", "LI.WEI@EXAMPLE.COM\n",
                b"li.wei@Example.com"]
    assert {normalize_email(v) for v in variants} == {"li.wei@example.com"}
    assert normalize_email("a+tag@mail.example.co.uk") == "a+tag@mail.example.co.uk"


@pytest.mark.parametrize("raw, reason", [
    ("a@@b.com", "malformed e-mail"), ("a@b", "malformed e-mail"), ("@b.com", "malformed e-mail"),
    ("a b@c.com", "malformed e-mail"), ("a@b..com", "malformed e-mail"), ("a@.com", "malformed e-mail"),
    ("a@b.com.", "malformed e-mail"), ("no-at-sign.com", "malformed e-mail"),
    ("a\x00@b.com", "malformed e-mail"),
    ("x" * 250 + "@b.com", "too long"), ("   ", "empty"), (None, "empty"), ("", "empty"),
])
def test_invalid_emails(raw: str | None, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        normalize_email(raw)
    assert info.value.reason == reason


def test_account_normalisation() -> None:
    assert normalize_account("  ACC-00042 ") == "ACC-00042"
    assert normalize_account("acc-00042") != normalize_account("ACC-00042")  # ids keep their case
    assert normalize_account("x" * 128) == "x" * 128
    for raw, reason in [("x" * 129, "too long"), ("a\x07b", "contains control characters"),
                        ("a\u0085b", "contains control characters"), ("\t", "empty")]:
        with pytest.raises(InvalidIdentifier) as info:
            normalize_account(raw)
        assert info.value.reason == reason


@pytest.mark.parametrize("normalizer", [normalize_phone, normalize_email, normalize_account])
def test_raw_input_checks_before_parsing(normalizer) -> None:  # type: ignore[no-untyped-def]
    for raw, reason in [(None, "empty"), ("", "empty"), (" \n ", "empty"), (b"\xff\xfe", "not valid UTF-8"),
                        ("1" * 257, "too long"), (b"1" * 257, "too long"), ("a" * 10_000, "too long"),
                        (float("nan"), "empty"), (12.5, "not text")]:
        with pytest.raises(InvalidIdentifier) as info:
            normalizer(raw)
        assert info.value.reason == reason


def test_normalize_dispatch() -> None:
    assert normalize("email", " A@B.CN ") == "a@b.cn"
    assert normalize("phone", "13800138000") == "+8613800138000"
    with pytest.raises(ValueError, match="unknown identifier kind"):
        normalize("ssn", "x")
    with pytest.raises(ValueError, match="unknown default region"):
        normalize("phone", "13800138000", default_region="XX")


# --------------------------------------------------------------------------- pseudonyms


def test_same_domain_key_gives_same_pseudonym_across_silos() -> None:
    bank = Pseudonymizer(KEY, 1, "acme")
    travel = Pseudonymizer(bytes(KEY), 1, "acme")
    a = bank.pseudonym("phone", normalize_phone("+86 138 0013 8000"))
    b = travel.pseudonym("phone", normalize_phone("138-0013-8000"))
    assert a == b and PSEUDONYM_RE.fullmatch(a) and a.startswith("p1-")
    assert bank.pseudonym("email", "a@b.cn").startswith("e1-")
    assert bank.pseudonym("account", "x").startswith("a1-")
    assert Pseudonymizer(KEY, 3, "acme").pseudonym("account", "x").startswith("a3-")


def test_pseudonym_is_the_specified_hmac() -> None:
    import hashlib
    import hmac

    expected = hmac.new(KEY, b"fedprofile/v1\0acme\0email\0a@b.cn", hashlib.sha256).hexdigest()[:32]
    assert Pseudonymizer(KEY, 2, "acme").pseudonym("email", "a@b.cn") == "e2-" + expected


def test_pseudonyms_differ_across_domains_keys_and_kinds() -> None:
    acme = Pseudonymizer(KEY, 1, "acme")
    assert acme.pseudonym("phone", "+8613800138000") != Pseudonymizer(KEY, 1, "other").pseudonym(
        "phone", "+8613800138000")
    assert acme.pseudonym("phone", "+8613800138000") != Pseudonymizer(os.urandom(32), 1, "acme").pseudonym(
        "phone", "+8613800138000")
    same = "+8613800138000"
    assert acme.pseudonym("phone", same)[3:] != acme.pseudonym("account", same)[3:]
    assert acme.pseudonym("email", "a@b.cn") != acme.pseudonym("email", "a@b.co")


def test_pseudonymizer_guards() -> None:
    p = Pseudonymizer(KEY, 1, "acme")
    assert repr(p) == "Pseudonymizer(domain='acme', version=1)"
    assert KEY.hex() not in repr(p) and repr(KEY) not in repr(p)
    with pytest.raises(InvalidIdentifier, match="empty"):
        p.pseudonym("email", "")
    with pytest.raises(ValueError, match="unknown identifier kind"):
        p.pseudonym("name", "x")
    with pytest.raises(ValueError, match="32 bytes, got 16") as info:
        Pseudonymizer(KEY[:16], 1, "acme")
    assert KEY[:16].hex() not in str(info.value)
    with pytest.raises(ValueError, match="positive integer"):
        Pseudonymizer(KEY, 0, "acme")


def test_from_keyring(tmp_path: Path) -> None:
    secret = Secret.from_passphrase("correct horse battery staple")
    bank = Keyring.create(tmp_path / "acme.keyring", "acme", secret)
    travel = Keyring.open(bank.path, secret)  # a second silo's copy of the domain keyring
    other = Keyring.create(tmp_path / "other.keyring", "other", secret)
    p_bank, p_travel = Pseudonymizer.from_keyring(bank), Pseudonymizer.from_keyring(travel)
    p_other = Pseudonymizer.from_keyring(other)
    assert p_bank.pseudonym("phone", "+8613800138000") == p_travel.pseudonym("phone", "+8613800138000")
    assert p_bank.pseudonym("phone", "+8613800138000") != p_other.pseudonym("phone", "+8613800138000")

    old = p_bank.pseudonym("email", "a@b.cn")
    assert bank.rotate(secret) == 2
    p_new = Pseudonymizer.from_keyring(bank)
    assert (p_new.version, p_new.domain) == (2, "acme")
    assert p_new.pseudonym("email", "a@b.cn")[3:] != old[3:]
    assert p_new.pseudonym("email", "a@b.cn").startswith("e2-")
    with pytest.raises(RetiredKeyError, match="fedprofile silo rekey"):
        Pseudonymizer.from_keyring(bank, version=1)
    assert Pseudonymizer.from_keyring(bank, version=2).pseudonym("email", "a@b.cn") == p_new.pseudonym(
        "email", "a@b.cn")


# --------------------------------------------------------------------------- columns and reports


BAD_VALUES: list[tuple[str | bytes | None, str]] = [
    ("", "empty"), (None, "empty"), ("   ", "empty"), ("123", "not a valid phone number"),
    ("9" * 10_000, "too long"), (b"\xff\xfe", "not valid UTF-8"), ("a@@b.com", "not a valid phone number"),
]


def test_pseudonymize_values_with_bad_input() -> None:
    p = Pseudonymizer(KEY, 1, "acme")
    good = ["+86 138 0013 8000", "13800138000", "139-0013-9000"]
    values = good[:2] + [v for v, _ in BAD_VALUES] + good[2:]
    out, report = pseudonymize_values(values, "phone", p, first_row=2)
    assert out[0] == out[1] == p.pseudonym("phone", "+8613800138000")
    assert out[-1] == p.pseudonym("phone", "+8613900139000")
    assert out[2:-1] == [None] * len(BAD_VALUES)
    assert (report.kind, report.total, report.valid, report.invalid) == ("phone", 10, 3, 7)
    assert report.reasons == {"empty": 3, "not a valid phone number": 2, "too long": 1,
                              "not valid UTF-8": 1}
    assert [row for row, _, _ in report.examples] == [4, 5, 6, 7, 8]  # first 5 bad rows, numbered from 2
    assert [reason for _, _, reason in report.examples] == [r for _, r in BAD_VALUES[:5]]
    for _, masked, _ in report.examples:
        assert len(masked) <= 12
    assert report.examples[3][1] == "***"  # "123" is too short to show any of it
    assert report.examples[4][1] == "99*********9"
    text = str(report)
    assert text.startswith("phone: 10 values, 3 valid, 7 invalid (empty 3, not a valid phone number 2, ")
    assert "e.g. row 4 '' (empty)" in text
    for value, _ in BAD_VALUES:
        if isinstance(value, str) and len(value.strip()) >= 3:
            assert value not in text and all(value not in m for _, m, _ in report.examples)


def test_email_and_account_columns() -> None:
    p = Pseudonymizer(KEY, 1, "acme")
    out, report = pseudonymize_values(["A@B.cn", " a@b.CN ", "a@@b.com", None, b"\xff\xfe", "x" * 300],
                                      "email", p)
    assert out[0] == out[1] == p.pseudonym("email", "a@b.cn") and out[2:] == [None] * 4
    assert report.reasons == {"malformed e-mail": 1, "empty": 1, "not valid UTF-8": 1, "too long": 1}
    assert report.examples[0] == (3, "a@*****m", "malformed e-mail")
    assert "a@@b.com" not in str(report)

    acc, acc_report = pseudonymize_values(["+8613800138000", "", "\udcff"], "account", p)
    phone, _ = pseudonymize_values(["+8613800138000"], "phone", p)
    assert acc[0] != phone[0] and acc[1:] == [None, None]
    assert acc_report.reasons == {"empty": 1, "not valid UTF-8": 1}


def test_no_shared_pseudonym_for_blanks() -> None:
    p = Pseudonymizer(KEY, 1, "acme")
    for kind in ("phone", "email", "account"):
        out, report = pseudonymize_values(["", None, " "], kind, p)
        assert out == [None, None, None] and report.valid == 0


def test_report_text_for_a_clean_column_and_large_counts() -> None:
    assert str(IdentifierReport("email", total=3, valid=3)) == "email: 3 values, 3 valid, 0 invalid"
    report = IdentifierReport("phone", total=1000, valid=990)
    for row in range(6):
        report.add_invalid(row + 10, "", "empty")
    for row in (17, 18, 19, 20):
        report.add_invalid(row, "13000000000", "not a valid phone number")
    assert str(report).startswith("phone: 1,000 values, 990 valid, 10 invalid "
                                  "(empty 6, not a valid phone number 4); e.g. row 10 '' (empty)")
    assert len(report.examples) == 5


@pytest.mark.parametrize("text, masked", [
    ("", ""), ("1", "*"), ("1234", "****"), ("12345", "1***5"), ("abcdefg", "a*****g"),
    ("13800138000", "13********0"), ("x" * 5000 + "y", "xx*********y"), ("ab\ncdefgh\x1b", "ab*******?"),
    ("\x1bbcdefghij", "?b*******j"),
])
def test_masking(text: str, masked: str) -> None:
    assert mask_identifier(text) == masked
    assert len(mask_identifier(text)) <= 12
    if len(text) >= 3:
        assert text not in mask_identifier(text)


def test_column_of_a_generator_and_unknown_kind() -> None:
    p = Pseudonymizer(KEY, 1, "acme")
    out, report = pseudonymize_values((f"user{i}@example.com" for i in range(5)), "email", p)
    assert len(set(out)) == 5 and report.total == 5
    with pytest.raises(ValueError, match="unknown identifier kind"):
        pseudonymize_values(["x"], "passport", p)
    with pytest.raises(TypeError, match="Pseudonymizer"):
        pseudonymize_values(["x"], "account", KEY)  # type: ignore[arg-type]
