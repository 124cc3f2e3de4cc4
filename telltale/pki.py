"""The telltale PKI: a private CA and the certificates of controllers, nodes and API clients.

Layout of a PKI directory (every key file mode 0600, written atomically):

    ca.crt, ca.key                      the CA (EC P-256, self-signed, ~10 years)
    controller-NAME.crt, .key           a controller's server certificate (serverAuth + clientAuth;
                                        DNS and IP SANs, plus telltale://controller/NAME)
    node-NODE_ID.crt, .key              a node agent's client certificate: CN=NODE_ID and the URI
                                        SAN telltale://node/NODE_ID, the node's identity
    client-NAME.crt, .key               an optional API client certificate (telltale://client/NAME)

The identity of a certificate is its one ``telltale://KIND/NAME`` URI SAN (`identity_of`); the
controller binds an agent's node id to it. Names are 1-128 characters of letters, digits, ``.``,
``_`` and ``-``, starting with a letter or digit, so they fit a URI, a file name and a node id.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Kind = Literal["controller", "node", "client"]
KINDS: tuple[str, ...] = get_args(Kind)
URI_SCHEME = "telltale"
CA_DAYS = 3650
LEAF_DAYS = 365
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate clocks a little behind the issuer's


class PkiError(Exception):
    """A PKI operation cannot be done; the message says what to fix."""


@dataclass(frozen=True)
class Identity:
    """Who a certificate names: its kind (controller, node, client) and name."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class Written:
    """The files one command wrote."""

    cert: Path
    key: Path


def check_name(name: str) -> str:
    """Return `name` if it can name a certificate's subject; raise PkiError saying what is allowed."""
    if not _NAME.fullmatch(name):
        raise PkiError(
            f"bad name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def identity_uri(kind: str, name: str) -> str:
    """The URI SAN that carries the identity (`telltale://node/NAME`)."""
    return f"{URI_SCHEME}://{kind}/{name}"


def identity_of(cert: x509.Certificate) -> Identity | None:
    """The identity named by `cert`'s ``telltale://KIND/NAME`` URI SAN, or None if it has none.

    A certificate with several such SANs names nobody (None): an identity must be unambiguous.
    """
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    found = [_parse_uri(uri) for uri in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    identities = [i for i in found if i is not None]
    return identities[0] if len(identities) == 1 else None


def identity_of_pem(pem: bytes) -> Identity | None:
    """`identity_of` for a PEM certificate; None when it cannot be parsed."""
    try:
        return identity_of(x509.load_pem_x509_certificate(pem))
    except ValueError:
        return None


def _parse_uri(uri: str) -> Identity | None:
    prefix = f"{URI_SCHEME}://"
    if not uri.startswith(prefix):
        return None
    kind, sep, name = uri[len(prefix) :].partition("/")
    if not sep or kind not in KINDS or not _NAME.fullmatch(name):
        return None
    return Identity(kind, name)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` atomically, with `mode` from the start (a private file is never
    readable by others, even briefly); the file appears whole or not at all."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_private(path: Path, data: bytes) -> None:
    write_atomically(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    write_atomically(path, data, 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _check_days(days: int) -> None:
    if days <= 0:
        raise PkiError(f"--days must be positive, got {days}")


def init_ca(
    directory: Path, *, name: str = "telltale CA", days: int = CA_DAYS, force: bool = False
) -> Written:
    """Create a CA in `directory` (made if missing): ca.crt and ca.key (0600).

    Raises PkiError if a CA exists there already and `force` is false: replacing it would orphan
    every certificate it issued.
    """
    _check_days(days)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not force and (cert_path.exists() or key_path.exists()):
        raise PkiError(f"a CA exists already in {directory} ({CA_CERT}/{CA_KEY}); pass --force to replace it")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PkiError(f"{directory}: {exc.strerror or exc}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    try:
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, _cert_pem(cert))
    except OSError as exc:
        raise PkiError(f"{directory}: cannot write the CA: {exc.strerror or exc}") from None
    return Written(cert_path, key_path)


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key of `directory`; PkiError if missing or unreadable."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.is_file() or not key_path.is_file():
        raise PkiError(f"no CA in {directory}: run `telltale pki init --dir {directory}` first")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot read the CA in {directory}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path}: not an EC private key")
    return cert, key


def cert_paths(directory: Path, kind: Kind, name: str) -> Written:
    """Where `issue` writes the certificate and key of `kind` `name`."""
    stem = f"{kind}-{name}"
    return Written(directory / f"{stem}.crt", directory / f"{stem}.key")


def issue(
    directory: Path,
    kind: Kind,
    name: str,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = LEAF_DAYS,
    force: bool = False,
) -> Written:
    """Issue a certificate of `kind` for `name` with the CA of `directory`; write it and its key (0600).

    Controller certificates carry the DNS and IP SANs given (at least one is required, so clients
    can verify the server's name) and both serverAuth and clientAuth; node and client certificates
    carry clientAuth only and take no DNS/IP names. Raises PkiError for a missing CA, a bad name,
    address or validity, or existing files (unless `force`).
    """
    if kind not in KINDS:
        raise PkiError(f"unknown certificate kind {kind!r}: use one of {', '.join(KINDS)}")
    check_name(name)
    _check_days(days)
    ca_cert, ca_key = load_ca(directory)
    if kind != "controller" and (dns or ips):
        raise PkiError(f"--dns and --ip are for controller certificates, not {kind} certificates")
    if kind == "controller" and not dns and not ips:
        raise PkiError("a controller certificate needs at least one --dns or --ip name (clients check it)")
    addresses = []
    for ip in ips:
        try:
            addresses.append(ipaddress.ip_address(ip))
        except ValueError:
            raise PkiError(f"--ip {ip!r}: not an IP address") from None
    for host in dns:
        if not host or any(c.isspace() for c in host) or "/" in host:
            raise PkiError(f"--dns {host!r}: not a DNS name")
    paths = cert_paths(directory, kind, name)
    if not force and (paths.cert.exists() or paths.key.exists()):
        raise PkiError(f"{paths.cert.name} exists already in {directory}; pass --force to replace it")
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(kind, name))]
    names += [x509.DNSName(h) for h in dns]
    names += [x509.IPAddress(a) for a in addresses]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if kind == "controller":
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    try:
        _write_private(paths.key, _key_pem(key))
        _write_public(paths.cert, _cert_pem(cert))
    except OSError as exc:
        raise PkiError(f"{directory}: cannot write the certificate: {exc.strerror or exc}") from None
    return paths


def read_identity(cert_path: Path) -> Identity:
    """The identity of the certificate in `cert_path`; PkiError if unreadable or it names none."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"{cert_path}: cannot read a PEM certificate: {exc}") from None
    found = identity_of(cert)
    if found is None:
        raise PkiError(f"{cert_path}: the certificate has no {URI_SCHEME}://KIND/NAME identity")
    return found


def is_pem_certificate(pem: bytes) -> bool:
    """True when `pem` holds at least one parseable PEM certificate."""
    try:
        return bool(x509.load_pem_x509_certificates(pem))
    except ValueError:
        return False


def check_pair(cert_pem: bytes, key_pem: bytes) -> str:
    """Empty when `key_pem` is the private key of the (first) certificate in `cert_pem`, else what is
    wrong, in words."""
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except (ValueError, IndexError):
        return "the certificate file holds no PEM certificate"
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return "the key file holds no unencrypted PEM private key"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, public) != cert.public_key().public_bytes(
        serialization.Encoding.PEM, public
    ):
        return "the private key does not belong to the certificate"
    return ""
