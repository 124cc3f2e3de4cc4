"""The agent's TLS settings: where they come from, what validate() refuses, and the node id a
certificate gives the agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from telltale import pki
from telltale.nodeagent.config import AgentConfig, ConfigError, load_config


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.init_ca(d)
    pki.issue(d, "node", "web-01")
    pki.issue(d, "node", "web-02")
    pki.issue(d, "client", "console")
    return d


def config_for(issued: Path, name: str = "node-web-01", key: str = "", **extra: object) -> AgentConfig:
    return AgentConfig(
        controllers=["10.0.0.5:7444"],
        tls_ca=issued / "ca.crt",
        tls_cert=issued / f"{name}.crt",
        tls_key=issued / f"{key or name}.key",
        socket_path=Path("/tmp/agent.sock"),
        **extra,  # type: ignore[arg-type]
    )


def test_tls_settings_come_from_the_file_the_environment_and_flags(tmp_path: Path) -> None:
    """tls_ca/tls_cert/tls_key follow the usual precedence; relative file paths are the file's."""
    path = tmp_path / "agent.toml"
    path.write_text('tls_ca = "tls/ca.crt"\ntls_cert = "/f/node.crt"\n')
    config = load_config(
        {"config": str(path), "tls_key": "/flag/node.key"},
        {"TELLTALE_AGENT_TLS_CERT": "/env/node.crt"},
        default_path=None,
    )
    assert config.tls_ca == tmp_path / "tls" / "ca.crt"
    assert config.tls_cert == Path("/env/node.crt")
    assert config.tls_key == Path("/flag/node.key")
    assert config.origin("tls_key") == "flag --tls-key"


def test_with_a_node_certificate_the_node_id_is_the_certificates(issued: Path) -> None:
    """TLS towards a remote controller validates, and the certificate names the node."""
    config = config_for(issued)
    config.validate()
    assert config.tls_material().node_id == "web-01"


def test_without_tls_files_or_plaintext_the_agent_says_how_to_configure_either(tmp_path: Path) -> None:
    config = AgentConfig(tls_ca=tmp_path / "ca.crt", origins={"tls_ca": "env TELLTALE_AGENT_TLS_CA"})
    with pytest.raises(ConfigError) as info:
        config.validate()
    message = str(info.value)
    assert message.startswith("TLS is not configured: TELLTALE_AGENT_TLS_CA:")
    assert "--plaintext" in message
    assert "telltale pki issue node" in message


@pytest.mark.parametrize(
    ("name", "key", "message"),
    [
        ("node-web-01", "node-web-02", "does not belong to the certificate"),
        ("client-console", "", "is not a node certificate"),
        ("ca", "node-web-01", "does not belong to the certificate"),
    ],
)
def test_an_unusable_certificate_or_key_is_refused(issued: Path, name: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_for(issued, name, key).validate()


def test_plaintext_ignores_the_tls_files_but_stays_on_loopback(issued: Path) -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        config_for(issued, plaintext=True).validate()
    AgentConfig(plaintext=True, socket_path=Path("/tmp/agent.sock")).validate()
