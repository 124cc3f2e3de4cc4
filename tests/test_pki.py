"""`telltale pki`: a CA and the certificates of controllers, nodes and API clients, checked with
`cryptography` and `openssl verify`."""

from __future__ import annotations

import ipaddress
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tlskit import run_cli

from telltale import pki


def ok(*args: str) -> str:
    out = run_cli(*args)
    assert out.returncode == 0, f"telltale {' '.join(args)}: {out.stderr}"
    return out.stdout


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and one certificate of each kind, made by the CLI."""
    d = tmp_path_factory.mktemp("pki")
    ok("pki", "init", "--dir", str(d))
    ok(
        "pki",
        "issue",
        "controller",
        "--dir",
        str(d),
        "--name",
        "ctl-1",
        "--dns",
        "ctl.example",
        "--ip",
        "10.0.0.5",
    )
    ok("pki", "issue", "node", "--dir", str(d), "--name", "web-01")
    ok("pki", "issue", "client", "--dir", str(d), "--name", "console", "--days", "30")
    return d


def test_the_ca_is_a_self_signed_p256_ca_for_about_ten_years_with_a_private_key(issued: Path) -> None:
    """pki init writes a self-signed CA certificate and its key, readable by the owner only."""
    ca = load(issued / "ca.crt")
    assert ca.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert 3640 <= (ca.not_valid_after_utc - ca.not_valid_before_utc).days <= 3660
    assert mode(issued / "ca.key") == 0o600


def test_each_certificate_names_its_identity_and_has_its_usages(issued: Path) -> None:
    """Node: CN and URI SAN carry the node id, client auth only; controller: its DNS/IP names,
    server and client auth; client: its URI identity. Keys are 0600; validity defaults to a year."""
    node = load(issued / "node-web-01.crt")
    assert node.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web-01"
    assert pki.identity_of(node) == pki.Identity("node", "web-01")
    assert list(node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert 364 <= (node.not_valid_after_utc - node.not_valid_before_utc).days <= 366

    ctl = load(issued / "controller-ctl-1.crt")
    sans = ctl.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["ctl.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert set(ctl.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    assert pki.identity_of(ctl) == pki.Identity("controller", "ctl-1")

    client = load(issued / "client-console.crt")
    assert pki.identity_of(client) == pki.Identity("client", "console")
    assert (client.not_valid_after_utc - client.not_valid_before_utc).days <= 31
    for name in ("node-web-01", "controller-ctl-1", "client-console"):
        assert mode(issued / f"{name}.key") == 0o600
        assert (
            pki.check_pair((issued / f"{name}.crt").read_bytes(), (issued / f"{name}.key").read_bytes()) == ""
        )


def test_every_certificate_verifies_against_the_ca(issued: Path) -> None:
    """The chain checks with cryptography, and with openssl for the purpose each one serves."""
    ca = load(issued / "ca.crt")
    for name in ("node-web-01", "controller-ctl-1", "client-console"):
        cert = load(issued / f"{name}.crt")
        cert.verify_directly_issued_by(ca)
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    for name, purpose in (
        ("controller-ctl-1", "sslserver"),
        ("node-web-01", "sslclient"),
        ("client-console", "sslclient"),
    ):
        out = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(issued / "ca.crt"),
                "-purpose",
                purpose,
                str(issued / f"{name}.crt"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_a_node_certificate_cannot_serve_as_a_server(issued: Path) -> None:
    """openssl refuses a node certificate for the server purpose (client auth only)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    out = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(issued / "ca.crt"),
            "-purpose",
            "sslserver",
            str(issued / "node-web-01.crt"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0


def test_an_existing_ca_or_certificate_is_not_replaced_without_force(tmp_path: Path) -> None:
    """init and issue refuse to overwrite (exit 2, saying --force); with --force they replace."""
    ok("pki", "init", "--dir", str(tmp_path))
    before = (tmp_path / "ca.key").read_bytes()
    again = run_cli("pki", "init", "--dir", str(tmp_path))
    assert again.returncode == 2
    assert "--force" in again.stderr
    assert (tmp_path / "ca.key").read_bytes() == before
    ok("pki", "issue", "node", "--dir", str(tmp_path), "--name", "n1")
    dup = run_cli("pki", "issue", "node", "--dir", str(tmp_path), "--name", "n1")
    assert dup.returncode == 2
    assert "--force" in dup.stderr
    ok("pki", "init", "--dir", str(tmp_path), "--force")
    assert (tmp_path / "ca.key").read_bytes() != before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["issue", "node", "--name", "bad name"], "bad name 'bad name'"),
        (["issue", "node", "--name", "../x"], "bad name"),
        (["issue", "controller", "--name", "c"], "at least one --dns or --ip"),
        (["issue", "controller", "--name", "c", "--ip", "not-an-ip"], "--ip 'not-an-ip'"),
        (["issue", "node", "--name", "n", "--days", "0"], "--days must be positive"),
    ],
)
def test_bad_names_and_values_are_refused_with_a_clear_error(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """Names that cannot be an identity, and bad SANs or validity, exit 2 naming the problem."""
    ok("pki", "init", "--dir", str(tmp_path))
    out = run_cli("pki", *args[:2], "--dir", str(tmp_path), *args[2:])
    assert out.returncode == 2
    assert message in out.stderr


def test_issuing_without_a_ca_says_to_create_one(tmp_path: Path) -> None:
    """A directory without a CA: exit 2, pointing at `telltale pki init`."""
    out = run_cli("pki", "issue", "node", "--dir", str(tmp_path), "--name", "n1")
    assert out.returncode == 2
    assert "telltale pki init" in out.stderr
    assert not list(tmp_path.iterdir())


def test_an_identity_is_only_read_from_one_well_formed_telltale_uri(tmp_path: Path) -> None:
    """identity_of ignores foreign URIs and unknown kinds; a certificate without SAN names nobody."""
    assert pki.identity_of_pem(b"not a certificate") is None
    pki.init_ca(tmp_path)
    ca = load(tmp_path / "ca.crt")
    assert pki.identity_of(ca) is None
    assert pki._parse_uri("telltale://admin/x") is None
    assert pki._parse_uri("https://node/x") is None
    assert pki._parse_uri("telltale://node/") is None
    assert pki._parse_uri("telltale://node/a/b") is None
