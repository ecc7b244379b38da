"""The pseudonymisation keyring of one *key domain*.

A key domain is the set of silos (the business lines of one company, or the
members of a partnership) that must give the same person the same pseudonym.
Every silo of a domain holds a copy of the domain's keyring, distributed out of
band; the federation server never holds it. Two domains have independent
random keys, so their pseudonyms cannot be linked.

The keyring file holds the random 32-byte pseudonymisation keys, one per
*version*, each wrapped (AES-256-GCM, :mod:`fedprofile.privacy.sealed`) under a
key-encryption key (KEK) derived from a :class:`Secret`: a passphrase (scrypt)
or a key file of 32 random bytes (HKDF). Rotation adds a new active version and
retires the older ones; a retired key can no longer be used to make pseudonyms.

What the file protects against, without the secret: reading any key;
swapping, editing or copying wrapped keys between versions or domains;
turning a retired version back into the active one (the status is bound into
each wrapped key's authenticated data). What it cannot detect: rolling the
whole file back to an older copy, and edits to the informational ``created`` /
``retired`` timestamps.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import stat
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fedprofile.privacy.sealed import TamperError, seal, unseal, write_private_file

__all__ = [
    "FORMAT",
    "KEY_FILE_ENV",
    "PASSPHRASE_ENV",
    "SCRYPT_N",
    "KeyVersionInfo",
    "Keyring",
    "KeyringError",
    "KeyringTamperError",
    "RetiredKeyError",
    "Secret",
    "WrongSecretError",
    "generate_key_file",
    "validate_domain",
]

log = logging.getLogger(__name__)

FORMAT = "fedprofile-keyring/1"
KEY_LEN = 32
SALT_LEN = 16
SCRYPT_N = 2**15  # module constant so tests can lower it; the value used is stored per file
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_MAX_MEM = 1 << 30  # refuse files asking for more than 1 GiB of scrypt memory
HKDF_INFO = b"fedprofile keyring kek"
CHECK_PLAINTEXT = b"fedprofile-keyring-check"
FINGERPRINT_LABEL = b"fedprofile key fingerprint"
MIN_PASSPHRASE_LEN = 8
KEY_FILE_ENV = "FEDPROFILE_KEY_FILE"
PASSPHRASE_ENV = "FEDPROFILE_KEY_PASSPHRASE"
_MAX_KEYRING_BYTES = 1 << 20
_MAX_KEY_FILE_BYTES = 4096
_DOMAIN_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEX64_RE = re.compile(r"[0-9a-fA-F]{64}")
_KDF_FOR_SECRET = {"passphrase": "scrypt", "key-file": "key-file"}
_REKEY_HINT = "re-key the silo with `fedprofile silo rekey`"


class KeyringError(RuntimeError):
    """A keyring or its secret cannot be used; the message says what to do."""


class WrongSecretError(KeyringError):
    """The passphrase or key file does not unlock this keyring."""


class RetiredKeyError(KeyringError):
    """A retired key version was asked for to make new pseudonyms."""


class KeyringTamperError(KeyringError, TamperError):
    """An entry of the keyring file fails authentication: it was edited or swapped.

    Both a :class:`KeyringError` (one thing for a CLI to catch) and a
    :class:`~fedprofile.privacy.sealed.TamperError`.
    """

    def __init__(self, message: str, source: str = "") -> None:
        self.source = source  # the keyring's path, like TamperError.source
        RuntimeError.__init__(self, message)  # a full message, not TamperError's template


# --------------------------------------------------------------------------- secrets


def _private_mode_problem(st: os.stat_result) -> str | None:
    """Why a secret-bearing file's permissions are unsafe, like ssh checks, or None."""
    if os.name == "nt":
        return None  # POSIX mode bits mean nothing there
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return f"is accessible by group/others (mode {mode:04o})"
    return None


@dataclass(frozen=True, eq=False)
class Secret:
    """What unlocks a keyring: a passphrase or a key file of 32 random bytes.

    Build one with :meth:`from_passphrase`, :meth:`from_key_file` or
    :meth:`from_env`. ``repr``/``str`` say which kind it is (and the key
    file's path) but never the secret itself. Equality is identity, so
    secrets are never compared byte by byte by accident.
    """

    kind: str  # "passphrase" | "key-file"
    material: bytes = field(repr=False)
    path: Path | None = None

    def __repr__(self) -> str:
        if self.kind == "key-file":
            return f"Secret(key file {str(self.path)!r})"
        return "Secret(passphrase)"

    @classmethod
    def from_passphrase(cls, text: str) -> Secret:
        """A passphrase secret; NFC-normalised so the same words typed anywhere unlock the keyring."""
        if not isinstance(text, str):
            raise KeyringError(f"a passphrase must be text, got a {type(text).__name__}")
        if not text:
            raise KeyringError("the passphrase is empty")
        if len(text) < MIN_PASSPHRASE_LEN:
            raise KeyringError(
                f"the passphrase is too short: use at least {MIN_PASSPHRASE_LEN} characters "
                "(a few random words are best)"
            )
        return cls("passphrase", unicodedata.normalize("NFC", text).encode("utf-8"))

    @classmethod
    def from_key_file(cls, path: Path) -> Secret:
        """A key-file secret: 64 hex characters (32 random bytes), readable by its owner only."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise KeyringError(f"key file {path} does not exist "
                               "(create one with `fedprofile key generate`)") from None
        except OSError as exc:
            raise KeyringError(f"cannot read key file {path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)  # check the file we read, not whatever the path points at later
            if not stat.S_ISREG(st.st_mode):
                raise KeyringError(f"key file {path} is not a regular file")
            problem = _private_mode_problem(st)
            if problem:
                raise KeyringError(f"key file {path} {problem}; it must be readable by its "
                                   f"owner only: run `chmod 600 {path}`")
            if st.st_size > _MAX_KEY_FILE_BYTES:
                raise KeyringError(f"key file {path} is not a fedprofile key file "
                                   "(expected 64 hex characters)")
            data = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
        finally:
            os.close(fd)
        text = data.decode("ascii", errors="replace").strip()
        if not _HEX64_RE.fullmatch(text):
            raise KeyringError(f"key file {path} is not a fedprofile key file "
                               "(expected 64 hex characters)")
        return cls("key-file", bytes.fromhex(text), path)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Secret:
        """The secret named by $FEDPROFILE_KEY_FILE, else $FEDPROFILE_KEY_PASSPHRASE.

        The key file wins because it is the safer channel: a passphrase in the
        environment is visible to anything that can read the process's environ.
        Empty variables count as unset.
        """
        env = os.environ if environ is None else environ
        key_file = env.get(KEY_FILE_ENV, "")
        if key_file:
            return cls.from_key_file(Path(key_file))
        passphrase = env.get(PASSPHRASE_ENV, "")
        if passphrase:
            return cls.from_passphrase(passphrase)
        raise KeyringError(f"no keyring secret: set {KEY_FILE_ENV} to the domain's key file, "
                           f"or {PASSPHRASE_ENV} to its passphrase")


def generate_key_file(path: Path) -> Path:
    """Write a new key file (32 random bytes as hex, mode 0600); never overwrites.

    Overwriting a key file would lock its keyrings for good, so an existing
    file is refused.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise KeyringError(f"key file {path} already exists; refusing to overwrite it")
    try:
        write_private_file(path, (os.urandom(KEY_LEN).hex() + "\n").encode("ascii"),
                           overwrite=False)
    except FileExistsError:
        raise KeyringError(f"key file {path} already exists; refusing to overwrite it") from None
    log.info("generated key file %s", path)
    return path


# --------------------------------------------------------------------------- helpers


def validate_domain(domain: str) -> str:
    """Return ``domain`` if it is a valid key-domain name (1-64 of ``A-Z a-z 0-9 . _ -``)."""
    if not isinstance(domain, str) or not _DOMAIN_RE.fullmatch(domain) or domain in {".", ".."}:
        shown = domain if isinstance(domain, str) else type(domain).__name__
        raise KeyringError(f"invalid key domain {shown!r:.80}: use 1-64 characters from "
                           "A-Z a-z 0-9 . _ - (and not '.' or '..')")
    return domain


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _fingerprint(key: bytes) -> str:
    return hmac.new(key, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]


def _wrap_aad(domain: str, version: int, status: str) -> bytes:
    return f"{domain}|{version}|{status}".encode()


def _derive_kek(path: Path, kdf: Mapping[str, Any], secret: Secret) -> bytes:
    """The key-encryption key for ``secret`` with the file's stored salt and parameters."""
    if not isinstance(secret, Secret):
        raise KeyringError(f"expected a Secret, got a {type(secret).__name__}")
    kind = kdf["type"]
    if kind != _KDF_FOR_SECRET.get(secret.kind):
        locked = "a passphrase" if kind == "scrypt" else "a key file"
        raise WrongSecretError(f"wrong passphrase or key file for keyring {path}: "
                               f"it is locked with {locked}")
    salt = kdf["salt"]
    if kind == "scrypt":
        return Scrypt(salt=salt, length=KEY_LEN, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(
            secret.material)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=HKDF_INFO).derive(
        secret.material)


def _new_kdf(secret: Secret) -> dict[str, Any]:
    salt = os.urandom(SALT_LEN)
    if secret.kind == "passphrase":
        return {"type": "scrypt", "salt": salt, "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}
    return {"type": "key-file", "salt": salt, "hash": "sha256"}


def _kdf_json(kdf: Mapping[str, Any]) -> dict[str, Any]:
    return {**kdf, "salt": _b64(kdf["salt"])}


@dataclass(frozen=True)
class KeyVersionInfo:
    """Public facts about one key version; never key bytes."""

    version: int
    status: str  # "active" | "retired"
    created: str  # ISO 8601, UTC
    retired: str | None
    fingerprint: str  # see Keyring.fingerprint


@dataclass
class _Entry:
    version: int
    status: str
    created: str
    retired: str | None
    wrapped: bytes

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "status": self.status, "created": self.created,
                "retired": self.retired, "wrapped": _b64(self.wrapped)}


@dataclass
class _Doc:
    domain: str
    kdf: dict[str, Any]
    check: bytes
    entries: list[_Entry]

    def to_bytes(self) -> bytes:
        payload = {"format": FORMAT, "domain": self.domain, "kdf": _kdf_json(self.kdf),
                   "check": _b64(self.check), "versions": [e.to_json() for e in self.entries]}
        return (json.dumps(payload, indent=2) + "\n").encode("utf-8")


# --------------------------------------------------------------------------- file parsing


class _Parser:
    """Structural validation of a keyring file; every error names the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, problem: str) -> KeyringError:
        return KeyringError(f"keyring {self.path} {problem}")

    def b64(self, value: Any, what: str) -> bytes:
        if not isinstance(value, str):
            raise self.fail(f"has a malformed {what}")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise self.fail(f"has a malformed {what} (not base64)") from None

    def integer(self, value: Any, what: str, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(f"has an invalid {what}")
        return value

    def text(self, value: Any, what: str, *, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value or len(value) > 64:
            raise self.fail(f"has an invalid {what}")
        return value

    def kdf(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail("has no valid 'kdf' section")
        salt = self.b64(value.get("salt"), "kdf salt")
        if len(salt) < SALT_LEN:
            raise self.fail("has a kdf salt that is too short")
        if value.get("type") == "scrypt":
            n = self.integer(value.get("n"), "scrypt n", 2, 1 << 24)
            r = self.integer(value.get("r"), "scrypt r", 1, 64)
            p = self.integer(value.get("p"), "scrypt p", 1, 64)
            if n & (n - 1) or 128 * n * r * p > _SCRYPT_MAX_MEM:
                raise self.fail("has unsupported scrypt parameters")
            return {"type": "scrypt", "salt": salt, "n": n, "r": r, "p": p}
        if value.get("type") == "key-file":
            if value.get("hash", "sha256") != "sha256":
                raise self.fail("has an unsupported key-file kdf hash")
            return {"type": "key-file", "salt": salt, "hash": "sha256"}
        raise self.fail("has an unknown kdf type")

    def entries(self, value: Any) -> list[_Entry]:
        if not isinstance(value, list) or not value:
            raise self.fail("has no key versions")
        out = []
        for i, item in enumerate(value, start=1):
            if not isinstance(item, dict):
                raise self.fail("has a malformed version entry")
            version = self.integer(item.get("version"), "key version number", 1, 1 << 30)
            if version != i:
                raise self.fail(f"has key versions out of order (expected {i}, found {version})")
            status = item.get("status")
            if status not in ("active", "retired"):
                raise self.fail(f"has an invalid status for key version {version}")
            created = self.text(item.get("created"), f"creation time for key version {version}")
            retired = self.text(item.get("retired"), f"retirement time for key version {version}",
                                optional=True)
            if (status == "active") != (retired is None):
                raise self.fail(f"has an inconsistent retirement time for key version {version}")
            wrapped = self.b64(item.get("wrapped"), f"wrapped key for version {version}")
            out.append(_Entry(version, status, created, retired, wrapped))  # type: ignore[arg-type]
        if [e.status for e in out].count("active") != 1 or out[-1].status != "active":
            raise self.fail("must have exactly one active key version, the newest one")
        return out

    def document(self, raw: bytes) -> _Doc:
        try:
            payload = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise self.fail("is not valid JSON (truncated or corrupted?); restore it from a "
                            "backup copy") from None
        if not isinstance(payload, dict):
            raise self.fail("is not a fedprofile keyring")
        fmt = payload.get("format")
        if fmt != FORMAT:
            shown = fmt if isinstance(fmt, str) else None
            raise self.fail(f"has format {shown!r:.60}, expected {FORMAT!r}")
        domain = payload.get("domain")
        if not isinstance(domain, str) or not _DOMAIN_RE.fullmatch(domain):
            raise self.fail("has an invalid domain")
        return _Doc(domain, self.kdf(payload.get("kdf")),
                    self.b64(payload.get("check"), "check value"),
                    self.entries(payload.get("versions")))


def _read_private(path: Path) -> bytes:
    """Read a keyring file, refusing one that others could read or that is implausibly large."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise KeyringError(f"keyring {path} does not exist") from None
    except OSError as exc:
        raise KeyringError(f"cannot read keyring {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyringError(f"keyring {path} is not a regular file")
        problem = _private_mode_problem(st)
        if problem:
            raise KeyringError(f"keyring {path} {problem}; it must be readable by its owner "
                               f"only: run `chmod 600 {path}`")
        if st.st_size > _MAX_KEYRING_BYTES:
            raise KeyringError(f"keyring {path} is too large to be a fedprofile keyring")
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _unlock(path: Path, doc: _Doc, secret: Secret) -> tuple[bytes, dict[int, bytes]]:
    """Derive the KEK, check it against ``check``, and unwrap every version; return both.

    The check blob tells a wrong secret apart from a tampered entry, so a
    wrong passphrase is reported as such instead of surfacing as a
    different key (or a confusing tamper error).
    """
    kek = _derive_kek(path, doc.kdf, secret)
    try:
        unseal(doc.check, kek, aad=doc.domain.encode(), source=f"keyring {path}")
    except TamperError:
        raise WrongSecretError(f"wrong passphrase or key file for keyring {path} "
                               "(or its domain/kdf/check entries were edited)") from None
    keys: dict[int, bytes] = {}
    for entry in doc.entries:
        try:
            key = unseal(entry.wrapped, kek, _wrap_aad(doc.domain, entry.version, entry.status))
        except TamperError:
            raise KeyringTamperError(
                f"keyring {path}: the entry for key version {entry.version} was modified "
                "(status, version or wrapped key edited, or copied from another keyring); "
                "restore the file from a backup copy", source=str(path)) from None
        if len(key) != KEY_LEN:
            raise KeyringTamperError(f"keyring {path}: key version {entry.version} has the "
                                     "wrong length", source=str(path))
        keys[entry.version] = key
    return kek, keys


# --------------------------------------------------------------------------- keyring


class Keyring:
    """An unlocked keyring: the domain's active key plus public facts about every version.

    Build one with :meth:`create` or :meth:`open`. Only the active key is kept
    in memory; retired keys are checked when the file is opened and then
    dropped, since nothing may use them any more.
    """

    def __init__(self, path: Path, doc: _Doc, keys: Mapping[int, bytes], raw: bytes) -> None:
        """Internal; use :meth:`create` or :meth:`open`."""
        self._path = Path(path)
        self._load(doc, keys, raw)

    def _load(self, doc: _Doc, keys: Mapping[int, bytes], raw: bytes) -> None:
        self._domain = doc.domain
        self._raw = raw
        self._active_version = doc.entries[-1].version
        self._active_key = keys[self._active_version]
        self._infos = {
            e.version: KeyVersionInfo(e.version, e.status, e.created, e.retired,
                                      _fingerprint(keys[e.version]))
            for e in doc.entries
        }

    # ---- construction

    @classmethod
    def create(cls, path: Path, domain: str, secret: Secret,
               initial_key: bytes | None = None) -> Keyring:
        """Create a keyring with one fresh random key (version 1); never overwrites a file.

        ``initial_key`` replaces the random key: only the simulator passes one
        (derived from its scenario seed, for synthetic data), so that the same
        scenario gives the same pseudonyms and hence the same numbers.
        """
        path = Path(path)
        if initial_key is not None and (not isinstance(initial_key, bytes)
                                        or len(initial_key) != KEY_LEN):
            raise KeyringError(f"initial_key must be {KEY_LEN} bytes")
        validate_domain(domain)
        if not isinstance(secret, Secret):
            raise KeyringError(f"expected a Secret, got a {type(secret).__name__}")
        if path.exists() or path.is_symlink():
            raise KeyringError(f"keyring {path} already exists; refusing to overwrite it")
        kdf = _new_kdf(secret)
        kek = _derive_kek(path, kdf, secret)
        key = os.urandom(KEY_LEN) if initial_key is None else initial_key
        entry = _Entry(1, "active", _now(), None, seal(key, kek, _wrap_aad(domain, 1, "active")))
        doc = _Doc(domain, kdf, seal(CHECK_PLAINTEXT, kek, aad=domain.encode()), [entry])
        raw = doc.to_bytes()
        try:
            write_private_file(path, raw, overwrite=False)
        except FileExistsError:
            raise KeyringError(f"keyring {path} already exists; refusing to overwrite it") from None
        keyring = cls(path, doc, {1: key}, raw)
        log.info("created keyring for domain %s at %s (key version 1, fingerprint %s)",
                 domain, path, keyring.fingerprint())
        return keyring

    @classmethod
    def open(cls, path: Path, secret: Secret) -> Keyring:
        """Open and fully verify a keyring file with ``secret``.

        Raises WrongSecretError for a wrong passphrase/key file, KeyringTamperError
        (a KeyringError and a TamperError) for an edited entry, and KeyringError
        for an unreadable, group/world-readable, truncated or malformed file.
        """
        path = Path(path)
        raw = _read_private(path)
        doc = _Parser(path).document(raw)
        _kek, keys = _unlock(path, doc, secret)
        return cls(path, doc, keys, raw)

    # ---- public facts

    @property
    def domain(self) -> str:
        return self._domain

    @property
    def path(self) -> Path:
        return self._path

    @property
    def active_version(self) -> int:
        return self._active_version

    @property
    def versions(self) -> list[KeyVersionInfo]:
        return [self._infos[v] for v in sorted(self._infos)]

    def _known(self, version: int | None) -> int:
        if version is None:
            return self._active_version
        if not isinstance(version, int) or isinstance(version, bool):
            raise KeyringError(f"a key version is a positive integer, got a {type(version).__name__}")
        if version not in self._infos:
            raise KeyringError(f"keyring {self._path} (domain {self._domain}) has no key version "
                               f"{version}; it has versions 1-{max(self._infos)}")
        return version

    def key(self, version: int | None = None) -> bytes:
        """The 32-byte key to make pseudonyms with: the active one unless ``version`` is given.

        A retired version raises RetiredKeyError: pseudonyms made with it would no
        longer match the rest of the domain.
        """
        version = self._known(version)
        if version != self._active_version:
            raise RetiredKeyError(f"key version {version} of domain {self._domain} is retired; "
                                  f"{_REKEY_HINT}")
        return self._active_key

    def fingerprint(self, version: int | None = None) -> str:
        """A short public name for a key version (16 hex chars); reveals nothing about the key.

        Silos and audit reports compare fingerprints to confirm they use the
        same key without exchanging it. Works for retired versions too.
        """
        return self._infos[self._known(version)].fingerprint

    # ---- rotation

    def rotate(self, secret: Secret) -> int:
        """Add a new active key version, retire all older ones, save; return the new version.

        The file is re-read and re-verified with ``secret`` first, so a wrong
        secret changes nothing, and a file changed on disk since this keyring
        was opened (another rotation) is refused rather than overwritten.
        """
        raw = _read_private(self._path)
        if raw != self._raw:
            raise KeyringError(f"keyring {self._path} changed on disk since it was opened; "
                               "open it again before rotating")
        doc = _Parser(self._path).document(raw)
        kek, keys = _unlock(self._path, doc, secret)
        now = _now()
        for entry in doc.entries:
            if entry.status == "active":
                entry.status, entry.retired = "retired", now
                entry.wrapped = seal(keys[entry.version], kek,
                                     _wrap_aad(doc.domain, entry.version, "retired"))
        new_version = doc.entries[-1].version + 1
        new_key = os.urandom(KEY_LEN)
        keys[new_version] = new_key
        doc.entries.append(_Entry(new_version, "active", now, None,
                                  seal(new_key, kek, _wrap_aad(doc.domain, new_version, "active"))))
        new_raw = doc.to_bytes()
        write_private_file(self._path, new_raw)
        self._load(doc, keys, new_raw)
        log.info("rotated keyring for domain %s at %s to key version %d (fingerprint %s)",
                 self._domain, self._path, new_version, self.fingerprint())
        return new_version

    def __repr__(self) -> str:
        versions = ", ".join(f"{i.version} {i.status}" for i in self.versions)
        return f"Keyring(domain={self._domain!r}, path={str(self._path)!r}, versions=[{versions}])"
