"""Credentials of a Flower deployment: the SuperLink's TLS certificate and each SuperNode's key.

Transport security is Flower's (TLS on the SuperLink's HTTP API, SuperNode
authentication by registered public keys); this module only makes the files
it needs, with the ``cryptography`` package:

* a certificate authority (``ca.crt``, ``ca.key``) that signs the SuperLink's
  certificate; SuperNodes and the ``flwr`` CLI trust ``ca.crt`` only;
* the SuperLink's certificate and key (``superlink.crt``, ``superlink.key``),
  valid for the host names and IP addresses it is reached at;
* one EC key pair per SuperNode (``<name>.key`` in OpenSSH private format,
  ``<name>.pub`` in OpenSSH public format): the SuperLink admits a SuperNode
  only once its public key was registered (``flwr supernode register``).

Private keys are written with mode 0600 and never printed. On real hosts each
silo keeps its own SuperNode key: only the public half travels.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .sealed import write_private_file

__all__ = ["TlsFiles", "make_tls", "make_supernode_key", "NAME"]

#: What a SuperNode key may be called (it becomes a file name).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class TlsFiles:
    """Where a deployment's TLS files are."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_tls(out_dir: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
             days: int = 365) -> TlsFiles:
    """A new CA and a SuperLink certificate for ``hosts`` (DNS names or IP addresses)."""
    if not hosts:
        raise ValueError("the SuperLink certificate needs at least one host name or address")
    out = Path(out_dir)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedprofile deployment CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(out / "ca.crt", out / "ca.key", out / "superlink.crt", out / "superlink.key")
    out.mkdir(parents=True, exist_ok=True)
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    write_private_file(files.ca_key, _pem_key(ca_key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private_file(files.key, _pem_key(key))
    return files


def make_supernode_key(out_dir: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's EC key pair: ``(<name>.key, <name>.pub)`` in OpenSSH formats."""
    if not NAME.match(name):
        raise ValueError(f"SuperNode key name {name!r:.70} must be letters, digits, '.', '_' or "
                         "'-' (at most 64)")
    key = ec.generate_private_key(ec.SECP384R1())
    private = Path(out_dir) / f"{name}.key"
    public = Path(out_dir) / f"{name}.pub"
    write_private_file(private, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public
