"""Kafka client security settings (streams/security.py); the broker side is
tests/integration/test_kafka_security.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from modeling.errors import ConfigError
from modeling.settings import Settings
from streams.security import client_kwargs, faust_credentials

USER, PASSWORD = "scorer", "s3cret-for-tests"


def test_settings_refuse_incomplete_security() -> None:
    with pytest.raises(ValueError, match="sasl_username and sasl_password"):
        Settings(security_protocol="SASL_SSL", sasl_username=USER)
    with pytest.raises(ValueError, match="both ssl_certfile and ssl_keyfile"):
        Settings(security_protocol="SSL", ssl_certfile=Path("client.pem"))


def test_gssapi_takes_its_identity_from_kerberos_not_from_settings() -> None:
    """No username or password: the principal comes from MIT Kerberos's keytab or ticket cache
    (tests/integration/test_kafka_kerberos.py runs it against a KDC and a broker)."""
    s = Settings(
        security_protocol="SASL_SSL", sasl_mechanism="GSSAPI", sasl_kerberos_domain_name="kafka.corp"
    )
    assert (s.sasl_username, s.sasl_password, s.sasl_kerberos_service_name) == (None, None, "kafka")
    assert s.sasl_kerberos_domain_name == "kafka.corp"


def test_password_stays_out_of_reprs_and_reaches_the_clients() -> None:
    s = Settings(security_protocol="SASL_SSL", sasl_username=USER, sasl_password=PASSWORD)
    assert PASSWORD not in repr(s) and PASSWORD not in str(s.model_dump())
    kw = client_kwargs(s)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "PLAIN"
    assert kw["sasl_plain_username"] == USER and kw["sasl_plain_password"] == PASSWORD
    assert isinstance(kw["ssl_context"], ssl.SSLContext) and kw["ssl_context"].check_hostname
    creds = faust_credentials(s)
    assert (creds.username, creds.password, creds.protocol.value) == (USER, PASSWORD, "SASL_SSL")
    assert PASSWORD not in repr(creds)


def test_plaintext_and_sasl_without_tls() -> None:
    assert client_kwargs(Settings()) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(Settings()) is None
    s = Settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=USER,
        sasl_password="x",
    )
    kw = client_kwargs(s)
    assert "ssl_context" not in kw and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert faust_credentials(s).protocol.value == "SASL_PLAINTEXT"


def test_an_unreadable_tls_file_is_a_config_error(tmp_path: Path) -> None:
    s = Settings(security_protocol="SSL", ssl_cafile=tmp_path / "missing-ca.pem")
    with pytest.raises(ConfigError, match="TLS context"):
        client_kwargs(s)


def test_cli_reports_bad_security_settings_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    monkeypatch.setenv("RISKSTREAM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RISKSTREAM_SASL_PASSWORD", PASSWORD)
    monkeypatch.delenv("RISKSTREAM_SASL_USERNAME", raising=False)
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "invalid settings" in err and "sasl_username and sasl_password" in err
    assert PASSWORD not in err


def test_a_failed_connection_names_its_likely_cause() -> None:
    from streams.broker.topics import _ClientErrors

    logged = _ClientErrors()
    # aiokafka raises "unable to bootstrap" for all of these; what it logged tells them apart.
    logged.messages = [
        'Unable connect to "k:9093": [Error 58] SaslAuthenticationFailed: Authentication failed: '
        "Invalid username or password"
    ]
    text = logged.explain("KafkaConnectionError: Unable to bootstrap from [...]", "SASL_SSL")
    assert "Invalid username or password" in text and "refused the authentication" in text
    logged.messages = []  # another broker just closes the connection
    assert "refused the authentication" in logged.explain("Connection at k:9093 closed", "SASL_SSL")
    logged.messages = ['Unable connect to "k:9093": [SSL: CERTIFICATE_VERIFY_FAILED] verify failed']
    text = logged.explain("Unable to bootstrap from [...]", "SSL")
    assert "not signed by ssl_cafile" in text and "refused" not in text
    logged.messages = ['Unable to request metadata from "k:9093": Connection at k:9093 closed']
    assert "requires a client certificate" in logged.explain("Unable to bootstrap from [...]", "SSL")
    logged.messages = []
    assert logged.explain("Unable to bootstrap from [...]", "PLAINTEXT") == ""


def test_sasl_without_a_password_is_a_config_error_even_past_validation() -> None:
    s = Settings.model_construct(security_protocol="SASL_SSL", sasl_username=USER, sasl_password=None)
    with pytest.raises(ConfigError, match="needs sasl_password"):
        client_kwargs(s)
