"""What a silo needs to pseudonymise its customers and to keep (or drop) raw identifiers.

Two keys, two jobs:

* the **domain key** (from the key domain's keyring, shared by the silos of one
  domain, never by the server) makes pseudonyms, so that the same person gets
  the same pseudonym on every line of the domain;
* the silo's own **identity key** seals the raw identifiers the silo chooses to
  keep (for re-keying after a rotation, or to act on an audience). It is
  random, specific to the silo, and stored sealed under a key derived from the
  silo's secret, so no other silo, even in the same domain, can read the map,
  and it does not depend on domain-key versions that rotation retires.

A silo configured to keep no raw identifiers has no identity key: its raw ids
exist nowhere after ingestion (and it cannot be re-keyed without re-ingesting).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from . import keys as _keys
from .keys import Keyring, Secret
from .pseudonyms import Pseudonymizer
from .sealed import read_sealed, seal, unseal, write_sealed

IDENTITY_KEY_FILE = "identity-key.sealed"
_IDENTITY_AAD = b"fedprofile identity key"


@dataclass(frozen=True)
class _NewIdentityKey:
    """An identity key generated for a new silo, written only when the silo is."""

    salt: bytes = field(repr=False)
    kek: bytes = field(repr=False)


@dataclass(frozen=True)
class SiloKeys:
    """The keys one ingestion or re-keying uses. Never printed, never sent."""

    domain: str
    version: int
    silo_dir: Path
    pseudonymizer: Pseudonymizer = field(repr=False)
    identity_key: bytes | None = field(default=None, repr=False)
    _new_identity: _NewIdentityKey | None = field(default=None, repr=False)

    @property
    def keeps_raw_ids(self) -> bool:
        return self.identity_key is not None

    def persist(self) -> None:
        """Write a newly generated identity key (sealed) next to the store.

        Called by ingestion right before it writes the store, so a rejected
        first ingestion leaves no file behind.
        """
        if self._new_identity is None or self.identity_key is None:
            return
        path = self.silo_dir / IDENTITY_KEY_FILE
        if path.exists():
            return
        self.silo_dir.mkdir(parents=True, exist_ok=True)
        (self.silo_dir / (IDENTITY_KEY_FILE + ".salt")).write_text(self._new_identity.salt.hex() + "\n")
        write_sealed(path, self.identity_key, self._new_identity.kek, aad=_IDENTITY_AAD)

    def seal_identity(self, customer_key: str, raw: dict[str, str | None]) -> bytes:
        """Seal one customer's raw identifiers, bound to their customer key."""
        if self.identity_key is None:
            raise ValueError("this silo keeps no raw identifiers")
        return seal(json.dumps(raw, sort_keys=True).encode(), self.identity_key,
                    aad=customer_key.encode())

    def open_identity(self, customer_key: str, blob: bytes) -> dict[str, str | None]:
        if self.identity_key is None:
            raise ValueError("this silo keeps no raw identifiers")
        return json.loads(unseal(blob, self.identity_key, aad=customer_key.encode(),
                                 source=f"identity of {customer_key}"))


_KEK_PURPOSE = b"fedprofile silo identity kek"


def derive_secret_key(secret: Secret, salt: bytes, purpose: bytes) -> bytes:
    """A 32-byte key from the silo's secret, separate per salt and purpose.

    A passphrase is stretched with scrypt (same cost as the keyring's); a key
    file already holds 32 random bytes, so HKDF suffices.
    """
    material = secret.material
    if secret.kind == "passphrase":
        material = Scrypt(salt=salt, length=32, n=_keys.SCRYPT_N, r=8, p=1).derive(material)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=purpose).derive(material)


def read_identity_key(silo_dir: Path, secret: Secret) -> bytes:
    """The silo's identity key, unsealed with the silo's secret."""
    path = Path(silo_dir) / IDENTITY_KEY_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: this silo keeps no sealed identities")
    salt = bytes.fromhex((Path(silo_dir) / (IDENTITY_KEY_FILE + ".salt")).read_text().strip())
    return read_sealed(path, derive_secret_key(secret, salt, purpose=_KEK_PURPOSE),
                       aad=_IDENTITY_AAD)


def load_silo_keys(keyring_path: Path, secret: Secret, silo_dir: Path,
                   keep_raw_ids: bool = True, version: int | None = None) -> SiloKeys:
    """Open the domain keyring and the silo's identity key for one job."""
    silo_dir = Path(silo_dir)
    keyring = Keyring.open(Path(keyring_path), secret)
    version = keyring.active_version if version is None else version
    pseudonymizer = Pseudonymizer.from_keyring(keyring, version)
    ident: bytes | None = None
    new: _NewIdentityKey | None = None
    if keep_raw_ids:
        if (silo_dir / IDENTITY_KEY_FILE).exists():
            ident = read_identity_key(silo_dir, secret)
        else:
            salt = os.urandom(16)
            new = _NewIdentityKey(salt=salt, kek=derive_secret_key(secret, salt, _KEK_PURPOSE))
            ident = os.urandom(32)
    return SiloKeys(domain=keyring.domain, version=version, silo_dir=silo_dir,
                    pseudonymizer=pseudonymizer, identity_key=ident, _new_identity=new)
