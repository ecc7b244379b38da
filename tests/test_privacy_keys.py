"""Sealed files and the pseudonymisation keyring: round trips, tampering, permissions, no leaks."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fedprofile.privacy import keys as keys_module
from fedprofile.privacy.keys import (
    KeyringError,
    KeyringTamperError,
    Keyring,
    RetiredKeyError,
    Secret,
    WrongSecretError,
    generate_key_file,
    validate_domain,
)
from fedprofile.privacy.sealed import (
    MAGIC,
    TamperError,
    read_sealed,
    read_sealed_json,
    seal,
    unseal,
    write_sealed,
    write_sealed_json,
)

PASSPHRASE = "correct horse battery staple"
OTHER_PASSPHRASE = "incorrect donkey battery staple"


class LeakWatch:
    """Collects every secret a test handles and every message it sees; checks none contains another."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.texts: list[str] = []

    def secret(self, value: str | bytes) -> None:
        if isinstance(value, bytes):
            self.secrets.update({value.hex(), value.hex().upper(), repr(value)[2:-1],
                                 base64.b64encode(value).decode()})
        else:
            self.secrets.add(value)

    def key_file(self, path: Path) -> Path:
        text = path.read_text().strip()
        self.secret(text)
        self.secret(bytes.fromhex(text))
        return path

    def see(self, *objs: object) -> None:
        self.texts.extend(repr(o) for o in objs)
        self.texts.extend(str(o) for o in objs)

    @contextmanager
    def raises(self, exc_type: type[BaseException],
               match: str | None = None) -> Iterator[pytest.ExceptionInfo]:
        with pytest.raises(exc_type, match=match) as info:
            yield info
        exc: BaseException | None = info.value
        while exc is not None:  # the message of every exception in the chain
            self.see(exc)
            exc = exc.__cause__ or exc.__context__

    def check(self, extra: str = "") -> None:
        for secret in self.secrets:
            for text in [*self.texts, extra]:
                assert secret not in text, "a secret leaked into a message, repr or log"


@pytest.fixture
def leaks(caplog: pytest.LogCaptureFixture) -> Iterator[LeakWatch]:
    """Every test checks at teardown that no secret reached an exception, repr or log record."""
    caplog.set_level(logging.DEBUG)
    watch = LeakWatch()
    watch.secret(PASSPHRASE)
    watch.secret(OTHER_PASSPHRASE)
    yield watch
    watch.check(caplog.text)


@pytest.fixture(autouse=True)
def _fast_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap scrypt for tests; the production default is checked separately."""
    monkeypatch.setattr(keys_module, "SCRYPT_N", 2**10)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def keyring_with_passphrase(tmp_path: Path, leaks: LeakWatch, domain: str = "acme") -> Keyring:
    keyring = Keyring.create(tmp_path / f"{domain}.keyring", domain, Secret.from_passphrase(PASSPHRASE))
    leaks.secret(keyring.key())
    leaks.see(keyring)
    return keyring


def edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    path.chmod(0o600)


# --------------------------------------------------------------------------- sealed


def test_seal_round_trip_and_format(leaks: LeakWatch) -> None:
    key = os.urandom(32)
    leaks.secret(key)
    blob = seal(b"hello", key, aad=b"ctx")
    assert blob.startswith(MAGIC) and len(blob) == len(MAGIC) + 12 + 5 + 16
    assert unseal(blob, key, aad=b"ctx") == b"hello"
    assert seal(b"hello", key) != seal(b"hello", key)  # fresh nonce each time
    assert unseal(seal(b"", key), key) == b""


def test_any_change_to_a_sealed_blob_is_detected(leaks: LeakWatch) -> None:
    key = os.urandom(32)
    leaks.secret(key)
    blob = seal(b"some secret payload", key, aad=b"ctx")
    for i in range(len(blob)):
        flipped = bytearray(blob)
        flipped[i] ^= 0x01
        with leaks.raises(TamperError):
            unseal(bytes(flipped), key, aad=b"ctx")
    for cut in (0, 3, len(MAGIC), len(MAGIC) + 12, len(blob) - 1):
        with leaks.raises(TamperError, match="modified, truncated or sealed with another key"):
            unseal(blob[:cut], key, aad=b"ctx")
    with leaks.raises(TamperError):
        unseal(blob, os.urandom(32), aad=b"ctx")
    with leaks.raises(TamperError):
        unseal(blob, key, aad=b"other")
    with leaks.raises(TamperError):
        unseal(blob + b"x", key, aad=b"ctx")


def test_seal_refuses_wrong_key_sizes(leaks: LeakWatch) -> None:
    short = os.urandom(16)
    leaks.secret(short)
    with leaks.raises(ValueError, match="32 bytes"):
        seal(b"x", short)
    with leaks.raises(ValueError, match="32 bytes"):
        unseal(seal(b"x", os.urandom(32)), short)


def test_sealed_files(tmp_path: Path, leaks: LeakWatch) -> None:
    key = os.urandom(32)
    leaks.secret(key)
    path = tmp_path / "sub" / "cache.sealed"
    old_umask = os.umask(0)  # the mode must not depend on the umask
    try:
        write_sealed(path, b"payload", key, aad=b"a")
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    assert read_sealed(path, key, aad=b"a") == b"payload"
    assert b"payload" not in path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["cache.sealed"]  # no temp file left

    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with leaks.raises(TamperError, match=re.escape(str(path))) as info:
        read_sealed(path, key, aad=b"a")
    assert info.value.source == str(path)
    with leaks.raises(FileNotFoundError):
        read_sealed(tmp_path / "missing", key)

    write_sealed_json(path, {"b": [1, 2], "a": "ü"}, key)
    assert mode(path) == 0o600
    assert read_sealed_json(path, key) == {"a": "ü", "b": [1, 2]}
    with leaks.raises(TamperError, match=re.escape(str(path))):
        read_sealed_json(path, os.urandom(32))
    write_sealed(path, b"not json", key)
    with leaks.raises(ValueError, match="not UTF-8 JSON"):
        read_sealed_json(path, key)


# --------------------------------------------------------------------------- secrets


def test_passphrase_secret(leaks: LeakWatch) -> None:
    secret = Secret.from_passphrase(PASSPHRASE)
    leaks.see(secret)
    assert repr(secret) == str(secret) == "Secret(passphrase)"
    assert secret.material == PASSPHRASE.encode()
    with leaks.raises(KeyringError, match="passphrase is empty"):
        Secret.from_passphrase("")
    leaks.secret("s3cr3t!")
    with leaks.raises(KeyringError, match="at least 8 characters"):
        Secret.from_passphrase("s3cr3t!")
    # the same words typed with composed or decomposed accents unlock the same keyring
    composed, decomposed = "caf\u00e9 au lait", "cafe\u0301 au lait"
    assert Secret.from_passphrase(composed).material == Secret.from_passphrase(decomposed).material


def test_key_file_generation_and_checks(tmp_path: Path, leaks: LeakWatch) -> None:
    path = leaks.key_file(generate_key_file(tmp_path / "domain.key"))
    assert mode(path) == 0o600
    assert len(path.read_text().strip()) == 64
    secret = Secret.from_key_file(path)
    leaks.see(secret)
    assert secret.kind == "key-file" and str(path) in repr(secret)

    before = path.read_text()
    with leaks.raises(KeyringError, match="already exists"):
        generate_key_file(path)
    assert path.read_text() == before

    path.chmod(0o644)
    with leaks.raises(KeyringError, match=r"group/others \(mode 0644\).*chmod 600"):
        Secret.from_key_file(path)
    path.chmod(0o640)
    with leaks.raises(KeyringError, match="chmod 600"):
        Secret.from_key_file(path)

    with leaks.raises(KeyringError, match="does not exist"):
        Secret.from_key_file(tmp_path / "nope.key")
    bad = tmp_path / "bad.key"
    for content in ("abc", "zz" * 32, "ab" * 33):
        bad.write_text(content)
        bad.chmod(0o600)
        with leaks.raises(KeyringError, match="expected 64 hex characters"):
            Secret.from_key_file(bad)
    spaced = tmp_path / "spaced.key"
    spaced.write_text("\n  " + path.read_text().strip().upper() + "  \n\n")
    spaced.chmod(0o400)
    assert Secret.from_key_file(spaced).material == secret.material


def test_secret_from_env(tmp_path: Path, leaks: LeakWatch, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = leaks.key_file(generate_key_file(tmp_path / "k"))
    monkeypatch.delenv("FEDPROFILE_KEY_FILE", raising=False)
    monkeypatch.delenv("FEDPROFILE_KEY_PASSPHRASE", raising=False)
    with leaks.raises(KeyringError, match="FEDPROFILE_KEY_FILE.*FEDPROFILE_KEY_PASSPHRASE"):
        Secret.from_env()
    monkeypatch.setenv("FEDPROFILE_KEY_PASSPHRASE", PASSPHRASE)
    assert Secret.from_env().kind == "passphrase"
    monkeypatch.setenv("FEDPROFILE_KEY_FILE", str(key_file))
    assert Secret.from_env().kind == "key-file"  # the key file wins
    empty_file_var = {"FEDPROFILE_KEY_FILE": "", "FEDPROFILE_KEY_PASSPHRASE": PASSPHRASE}
    assert Secret.from_env(empty_file_var).kind == "passphrase"


# --------------------------------------------------------------------------- keyring


def test_create_and_open_with_passphrase(tmp_path: Path, leaks: LeakWatch) -> None:
    keyring = keyring_with_passphrase(tmp_path, leaks)
    path = keyring.path
    assert mode(path) == 0o600
    assert (keyring.domain, keyring.active_version) == ("acme", 1)
    [info] = keyring.versions
    assert (info.version, info.status, info.retired) == (1, "active", None)
    doc = json.loads(path.read_text())
    assert doc["format"] == "fedprofile-keyring/1" and doc["domain"] == "acme"
    assert doc["kdf"]["type"] == "scrypt" and doc["kdf"]["n"] == 2**10
    raw = path.read_text()
    assert keyring.key().hex() not in raw and base64.b64encode(keyring.key()).decode() not in raw

    again = Keyring.open(path, Secret.from_passphrase(PASSPHRASE))
    leaks.see(again)
    assert again.key() == keyring.key() == again.key(1)
    assert again.fingerprint() == keyring.fingerprint()
    assert "acme" in repr(again) and "1 active" in repr(again)

    with leaks.raises(KeyringError, match="already exists"):
        Keyring.create(path, "acme", Secret.from_passphrase(PASSPHRASE))


def test_default_scrypt_cost_is_production_grade(tmp_path: Path, leaks: LeakWatch,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    assert keys_module.SCRYPT_N == 2**15
    keyring = keyring_with_passphrase(tmp_path, leaks)
    assert json.loads(keyring.path.read_text())["kdf"]["n"] == 2**15
    assert Keyring.open(keyring.path, Secret.from_passphrase(PASSPHRASE)).key() == keyring.key()


def test_create_and_open_with_key_file(tmp_path: Path, leaks: LeakWatch) -> None:
    key_file = leaks.key_file(generate_key_file(tmp_path / "acme.key"))
    keyring = Keyring.create(tmp_path / "acme.keyring", "acme", Secret.from_key_file(key_file))
    leaks.secret(keyring.key())
    assert json.loads(keyring.path.read_text())["kdf"]["type"] == "key-file"
    assert key_file.read_text().strip() not in keyring.path.read_text()
    again = Keyring.open(keyring.path, Secret.from_key_file(key_file))
    leaks.see(keyring, again)
    assert again.key() == keyring.key()


def test_wrong_secret_is_refused_not_turned_into_another_key(tmp_path: Path, leaks: LeakWatch) -> None:
    keyring = keyring_with_passphrase(tmp_path, leaks)
    wrong = "wrong passphrase or key file for keyring " + re.escape(str(keyring.path))
    with leaks.raises(WrongSecretError, match=wrong):
        Keyring.open(keyring.path, Secret.from_passphrase(OTHER_PASSPHRASE))

    other_key = leaks.key_file(generate_key_file(tmp_path / "other.key"))
    with leaks.raises(WrongSecretError, match="locked with a passphrase"):
        Keyring.open(keyring.path, Secret.from_key_file(other_key))

    key_file = leaks.key_file(generate_key_file(tmp_path / "right.key"))
    by_file = Keyring.create(tmp_path / "f.keyring", "acme", Secret.from_key_file(key_file))
    leaks.secret(by_file.key())
    with leaks.raises(WrongSecretError, match=re.escape(str(by_file.path))):
        Keyring.open(by_file.path, Secret.from_key_file(other_key))
    with leaks.raises(WrongSecretError):
        Keyring.open(by_file.path, Secret.from_passphrase(PASSPHRASE))
    with leaks.raises(WrongSecretError):
        by_file.rotate(Secret.from_key_file(other_key))
    assert Keyring.open(by_file.path, Secret.from_key_file(key_file)).active_version == 1


def test_group_readable_keyring_is_refused(tmp_path: Path, leaks: LeakWatch) -> None:
    keyring = keyring_with_passphrase(tmp_path, leaks)
    keyring.path.chmod(0o644)
    path = re.escape(str(keyring.path))
    with leaks.raises(KeyringError, match=rf"{path} is accessible by group/others.*chmod 600"):
        Keyring.open(keyring.path, Secret.from_passphrase(PASSPHRASE))


def test_missing_truncated_or_foreign_files(tmp_path: Path, leaks: LeakWatch) -> None:
    secret = Secret.from_passphrase(PASSPHRASE)
    with leaks.raises(KeyringError, match="does not exist"):
        Keyring.open(tmp_path / "none.keyring", secret)
    keyring = keyring_with_passphrase(tmp_path, leaks)
    raw = keyring.path.read_bytes()
    for cut in (0, 1, len(raw) // 2, len(raw) - 3):
        keyring.path.write_bytes(raw[:cut])
        with leaks.raises(KeyringError, match=rf"keyring {re.escape(str(keyring.path))} is not valid JSON"):
            Keyring.open(keyring.path, secret)
    keyring.path.write_bytes(raw)
    edit(keyring.path, lambda d: d.update(format="fedprofile-keyring/9"))
    with leaks.raises(KeyringError, match="expected 'fedprofile-keyring/1'"):
        Keyring.open(keyring.path, secret)
    keyring.path.write_text("[1, 2]")
    with leaks.raises(KeyringError, match="not a fedprofile keyring"):
        Keyring.open(keyring.path, secret)


def test_rotate_retires_old_versions(tmp_path: Path, leaks: LeakWatch) -> None:
    secret = Secret.from_passphrase(PASSPHRASE)
    keyring = keyring_with_passphrase(tmp_path, leaks)
    old_key, old_fp = keyring.key(), keyring.fingerprint()
    assert keyring.rotate(secret) == 2
    leaks.secret(keyring.key())
    assert mode(keyring.path) == 0o600
    assert keyring.active_version == 2 and keyring.key() != old_key
    assert [(v.version, v.status) for v in keyring.versions] == [(1, "retired"), (2, "active")]
    assert keyring.versions[0].retired is not None
    with leaks.raises(RetiredKeyError,
                      match="key version 1 of domain acme is retired.*fedprofile silo rekey"):
        keyring.key(1)
    with leaks.raises(KeyringError, match="no key version 7"):
        keyring.key(7)
    assert keyring.fingerprint(1) == old_fp != keyring.fingerprint(2)

    reopened = Keyring.open(keyring.path, secret)
    leaks.see(keyring, reopened)
    assert reopened.key() == keyring.key() and reopened.active_version == 2
    with leaks.raises(RetiredKeyError):
        reopened.key(1)
    assert reopened.rotate(secret) == 3
    leaks.secret(reopened.key())
    statuses = [v.status for v in Keyring.open(keyring.path, secret).versions]
    assert statuses == ["retired", "retired", "active"]
    with leaks.raises(KeyringError, match="changed on disk"):
        keyring.rotate(secret)  # stale: the file moved on to version 3


def test_retired_status_cannot_be_flipped_back(tmp_path: Path, leaks: LeakWatch) -> None:
    """Rolling back to the old key by editing statuses is detected through the wrapped key's AAD."""
    secret = Secret.from_passphrase(PASSPHRASE)
    keyring = keyring_with_passphrase(tmp_path, leaks)
    keyring.rotate(secret)
    leaks.secret(keyring.key())
    good = keyring.path.read_text()

    def reactivate_v1(doc: dict) -> None:
        doc["versions"] = doc["versions"][:1]
        doc["versions"][0].update(status="active", retired=None)

    edit(keyring.path, reactivate_v1)
    path = re.escape(str(keyring.path))
    with leaks.raises(KeyringTamperError, match=rf"keyring {path}: the entry for key version 1 was"):
        Keyring.open(keyring.path, secret)
    with leaks.raises(TamperError) as info:  # also catchable as the generic tamper error
        Keyring.open(keyring.path, secret)
    assert info.value.source == str(keyring.path)

    keyring.path.write_text(good)

    def swap_statuses(doc: dict) -> None:
        first, second = doc["versions"]
        first.update(status="active", retired=None)
        second.update(status="retired", retired=first["created"])

    edit(keyring.path, swap_statuses)
    with leaks.raises(KeyringError, match=re.escape(str(keyring.path))):
        Keyring.open(keyring.path, secret)


def test_edited_wrapped_key_or_domain_is_detected(tmp_path: Path, leaks: LeakWatch) -> None:
    secret = Secret.from_passphrase(PASSPHRASE)
    keyring = keyring_with_passphrase(tmp_path, leaks)
    keyring.rotate(secret)
    leaks.secret(keyring.key())
    good = keyring.path.read_text()

    def flip_wrapped(doc: dict) -> None:
        wrapped = bytearray(base64.b64decode(doc["versions"][1]["wrapped"]))
        wrapped[-5] ^= 1
        doc["versions"][1]["wrapped"] = base64.b64encode(bytes(wrapped)).decode()

    edit(keyring.path, flip_wrapped)
    with leaks.raises(KeyringTamperError, match="key version 2 was modified"):
        Keyring.open(keyring.path, secret)

    keyring.path.write_text(good)
    edit(keyring.path, lambda d: d["versions"].reverse() or [
        e.update(version=i) for i, e in enumerate(d["versions"], 1)])
    with leaks.raises(KeyringError, match=re.escape(str(keyring.path))):
        Keyring.open(keyring.path, secret)

    keyring.path.write_text(good)

    def swap_wrapped(doc: dict) -> None:
        first, second = doc["versions"]
        first["wrapped"], second["wrapped"] = second["wrapped"], first["wrapped"]

    edit(keyring.path, swap_wrapped)
    with leaks.raises(KeyringTamperError):
        Keyring.open(keyring.path, secret)

    keyring.path.write_text(good)
    edit(keyring.path, lambda d: d.update(domain="evil"))
    with leaks.raises(KeyringError, match=re.escape(str(keyring.path))):
        Keyring.open(keyring.path, secret)

    keyring.path.write_text(good)
    edit(keyring.path, lambda d: d["versions"][0].update(wrapped="not base64!"))
    with leaks.raises(KeyringError, match="malformed wrapped key for version 1"):
        Keyring.open(keyring.path, secret)

    keyring.path.write_text(good)
    assert Keyring.open(keyring.path, secret).key() == keyring.key()


def test_wrapped_key_from_another_keyring_is_detected(tmp_path: Path, leaks: LeakWatch) -> None:
    key_file = leaks.key_file(generate_key_file(tmp_path / "k"))
    secret = Secret.from_key_file(key_file)
    a = Keyring.create(tmp_path / "a.keyring", "alpha", secret)
    b = Keyring.create(tmp_path / "b.keyring", "beta", secret)
    leaks.secret(a.key())
    leaks.secret(b.key())
    wrapped_a = json.loads(a.path.read_text())["versions"][0]["wrapped"]
    edit(b.path, lambda d: d["versions"][0].update(wrapped=wrapped_a))
    with leaks.raises(KeyringTamperError, match=re.escape(str(b.path))):
        Keyring.open(b.path, secret)


def test_keys_differ_across_domains_and_versions(tmp_path: Path, leaks: LeakWatch) -> None:
    secret = Secret.from_passphrase(PASSPHRASE)
    a = keyring_with_passphrase(tmp_path, leaks, "bank")
    b = keyring_with_passphrase(tmp_path, leaks, "travel")
    assert a.key() != b.key() and a.fingerprint() != b.fingerprint()
    first = a.key()
    a.rotate(secret)
    leaks.secret(a.key())
    assert a.key() not in (first, b.key())


def test_fingerprint_is_stable_and_reveals_nothing(tmp_path: Path, leaks: LeakWatch) -> None:
    keyring = keyring_with_passphrase(tmp_path, leaks)
    fingerprint = keyring.fingerprint()
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert Keyring.open(keyring.path, Secret.from_passphrase(PASSPHRASE)).fingerprint() == fingerprint
    assert fingerprint not in keyring.key().hex()
    assert fingerprint not in repr(keyring.key())


@pytest.mark.parametrize("domain", ["", "a b", "x" * 65, "ümlaut", "a/b", "..", "ok\n"])
def test_invalid_domains_are_refused(domain: str, tmp_path: Path, leaks: LeakWatch) -> None:
    with leaks.raises(KeyringError, match="invalid key domain"):
        Keyring.create(tmp_path / "k.keyring", domain, Secret.from_passphrase(PASSPHRASE))
    assert not (tmp_path / "k.keyring").exists()


def test_valid_domains() -> None:
    for domain in ("acme", "acme-group.cn_2", "x" * 64, "A.B"):
        assert validate_domain(domain) == domain


def test_nothing_secret_in_logs_reprs_or_the_keyring_file(tmp_path: Path, leaks: LeakWatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    key_file = leaks.key_file(generate_key_file(tmp_path / "k"))
    secret = Secret.from_key_file(key_file)
    keyring = Keyring.create(tmp_path / "a.keyring", "alpha", secret)
    leaks.secret(keyring.key())
    keyring.rotate(secret)
    leaks.secret(keyring.key())
    leaks.see(secret, keyring, *keyring.versions, Secret.from_passphrase(PASSPHRASE))
    assert "rotated keyring for domain alpha" in caplog.text  # logging is on, and checked by `leaks`
    leaks.check(keyring.path.read_text())


def test_leak_watch_catches_a_leak() -> None:
    """The watch used above would notice a key in a message (guards against a vacuous check)."""
    watch = LeakWatch()
    key = os.urandom(32)
    watch.secret(key)
    with watch.raises(ValueError):
        raise ValueError(f"bad key {key.hex()}")
    with pytest.raises(AssertionError, match="leaked"):
        watch.check()
    watch = LeakWatch()
    watch.secret(PASSPHRASE)
    with pytest.raises(AssertionError):
        watch.check(f"INFO unlocking with {PASSPHRASE}")
