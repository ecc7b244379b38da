"""Authenticated encryption of small files and blobs at rest (AES-256-GCM).

Everything a silo keeps that would hurt if read or silently changed (the
keyring's wrapped keys, sealed caches, mapping tables) goes through here, so
there is one format, one nonce policy and one error for "this is not what we
wrote": :class:`TamperError`. GCM authenticates as well as encrypts, so a
flipped bit, a truncated file, a wrong key and a wrong ``aad`` (the context a
blob is bound to, such as the domain and version of a wrapped key) all fail
the same way, loudly, instead of yielding plausible-looking garbage.

Sealed blob layout: ``MAGIC (8 bytes) | nonce (12 bytes) | ciphertext | tag (16 bytes)``.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_LEN",
    "MAGIC",
    "TamperError",
    "read_sealed",
    "read_sealed_json",
    "seal",
    "unseal",
    "write_private_file",
    "write_sealed",
    "write_sealed_json",
]

MAGIC = b"FPSEAL1\n"
KEY_LEN = 32  # AES-256
NONCE_LEN = 12  # 96-bit random nonce: the size GCM is designed for
TAG_LEN = 16
_MIN_BLOB_LEN = len(MAGIC) + NONCE_LEN + TAG_LEN


class TamperError(ValueError):
    """Authenticated decryption failed: the data is not what was sealed.

    Raised for a wrong header, a truncated blob, a wrong key or a wrong
    ``aad``; GCM cannot tell these apart, and neither should callers: in every
    case the content must not be trusted. The message names the source (a
    path when there is one) and never includes key bytes or content.
    """

    def __init__(self, source: str, detail: str = "") -> None:
        self.source = source
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"{source} could not be authenticated{extra}: it was modified, truncated "
            "or sealed with another key"
        )


def _check_key(key: bytes) -> None:
    """Refuse anything but a 32-byte key, without ever echoing the key."""
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise ValueError(f"key must be {KEY_LEN} bytes, got a {type(key).__name__}")
    if len(key) != KEY_LEN:
        raise ValueError(f"key must be {KEY_LEN} bytes for AES-256-GCM, got {len(key)} bytes")


def seal(plaintext: bytes, key: bytes, aad: bytes = b"") -> bytes:
    """Encrypt and authenticate ``plaintext`` under ``key``, bound to ``aad``.

    A fresh random nonce per call: with 96-bit nonces the chance of a repeat
    stays negligible for far more messages than one key will ever seal here.
    """
    _check_key(key)
    nonce = secrets.token_bytes(NONCE_LEN)
    return MAGIC + nonce + AESGCM(bytes(key)).encrypt(nonce, bytes(plaintext), bytes(aad))


def unseal(blob: bytes, key: bytes, aad: bytes = b"", source: str = "data") -> bytes:
    """Return the plaintext of a :func:`seal` blob, or raise :class:`TamperError`.

    ``source`` only names the blob in the error message (a path, "keyring
    version 2", ...), so the user knows which thing to restore.
    """
    _check_key(key)
    blob = bytes(blob)
    if not blob.startswith(MAGIC):
        if MAGIC.startswith(blob):
            raise TamperError(source, "too short")
        raise TamperError(source, "no fedprofile seal header")
    if len(blob) < _MIN_BLOB_LEN:
        raise TamperError(source, "too short")
    nonce = blob[len(MAGIC):len(MAGIC) + NONCE_LEN]
    body = blob[len(MAGIC) + NONCE_LEN:]
    try:
        return AESGCM(bytes(key)).decrypt(nonce, body, bytes(aad))
    except InvalidTag:
        raise TamperError(source) from None


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; not possible (nor needed) on every platform."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _place_exclusively(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` only if ``path`` does not exist, atomically.

    A hard link fails with FileExistsError when the target exists, so two
    writers cannot both "create" the same key file; on file systems without
    hard links fall back to check-then-rename (a tiny race, same result).
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        if path.exists():
            raise FileExistsError(f"{path} already exists") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def write_private_file(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` atomically to ``path`` with mode 0600.

    The temporary file is created 0600 from the start (never briefly
    world-readable), fsynced, then renamed over ``path``: a reader sees the old
    file or the new one, never half of one, and a crash leaves no partial key
    behind. With ``overwrite=False`` an existing ``path`` raises
    FileExistsError and is left untouched.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new leaf folder is private too
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)  # exact mode, whatever the umask
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            _place_exclusively(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)


def write_sealed(path: Path, plaintext: bytes, key: bytes, aad: bytes = b"") -> None:
    """Seal ``plaintext`` and write it atomically to ``path`` (mode 0600)."""
    write_private_file(Path(path), seal(plaintext, key, aad))


def read_sealed(path: Path, key: bytes, aad: bytes = b"") -> bytes:
    """Read and unseal ``path``; TamperError names the path, a missing file raises FileNotFoundError."""
    path = Path(path)
    return unseal(path.read_bytes(), key, aad, source=str(path))


def write_sealed_json(path: Path, obj: Any, key: bytes, aad: bytes = b"") -> None:
    """Seal ``obj`` as compact, key-sorted UTF-8 JSON (stable bytes for equal objects)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    write_sealed(path, text.encode("utf-8"), key, aad)


def read_sealed_json(path: Path, key: bytes, aad: bytes = b"") -> Any:
    """Unseal ``path`` and parse it as JSON.

    Authenticated content that is not JSON was sealed by someone holding the
    key, so it is a usage error (ValueError), not tampering; the message
    leaves out the decrypted content.
    """
    plaintext = read_sealed(path, key, aad)
    try:
        return json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path} holds sealed data that is not UTF-8 JSON") from None
