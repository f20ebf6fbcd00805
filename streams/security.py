"""Kafka client security from the settings: TLS, SASL (PLAIN, SCRAM, OAUTHBEARER, GSSAPI), for every client.

The worker's Faust app takes :func:`faust_credentials`; every plain aiokafka client (replay,
warmup, the demo's reader, topic administration) takes :func:`client_kwargs`. Both read the same
settings, so a deployment configures security once (``RISKSTREAM_SECURITY_PROTOCOL``,
``RISKSTREAM_SASL_*``, ``RISKSTREAM_SSL_*``; README "Using your own Kafka cluster").
"""

from __future__ import annotations

import logging
import ssl
from functools import cache
from typing import Any

from modeling.errors import ConfigError, CredentialsError
from modeling.settings import Settings

log = logging.getLogger("riskstream.security")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for ``SSL`` and ``SASL_SSL``; ``None`` for the plaintext protocols."""
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
        )
        if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
            ctx.load_cert_chain(str(settings.ssl_certfile), str(settings.ssl_keyfile))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot build the Kafka TLS context: {exc}",
            cafile=str(settings.ssl_cafile),
            certfile=str(settings.ssl_certfile),
        ) from None
    ctx.check_hostname = settings.ssl_check_hostname
    return ctx


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer``, ``AIOKafkaConsumer`` and ``AIOKafkaAdminClient``."""
    kw: dict[str, Any] = {"security_protocol": settings.security_protocol}
    ctx = ssl_context(settings)
    if ctx is not None:
        kw["ssl_context"] = ctx
    if settings.security_protocol.startswith("SASL_"):
        if settings.sasl_mechanism == "OAUTHBEARER":
            kw.update(sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=token_provider(settings))
        elif settings.sasl_mechanism == "GSSAPI":
            kerberos_principal(settings)
            kw.update(
                sasl_mechanism="GSSAPI",
                sasl_kerberos_service_name=settings.sasl_kerberos_service_name,
                sasl_kerberos_domain_name=settings.sasl_kerberos_domain_name,
            )
        else:
            kw.update(
                sasl_mechanism=settings.sasl_mechanism,
                sasl_plain_username=settings.sasl_username,
                sasl_plain_password=_password(settings),
            )
    return kw


@cache
def token_provider(settings: Settings) -> Any:
    """The OAUTHBEARER token provider of these settings: one per settings object, so that every
    client of a process shares its cached token."""
    from streams.oauth import OAuthTokenProvider

    secret = settings.sasl_oauth_client_secret
    if not (settings.sasl_oauth_token_url and settings.sasl_oauth_client_id and secret):
        raise ConfigError("sasl_mechanism OAUTHBEARER needs the sasl_oauth_* settings")
    return OAuthTokenProvider(
        settings.sasl_oauth_token_url,
        settings.sasl_oauth_client_id,
        secret.get_secret_value(),
        settings.sasl_oauth_scope,
    )


@cache
def kerberos_principal(settings: Settings) -> str:
    """The Kerberos principal the clients of these settings authenticate as, checked with the
    KDC once per process: MIT Kerberos acquires it from the client keytab in
    ``KRB5_CLIENT_KTNAME`` (and gets a new ticket from it before the old one expires) or finds it
    in the ticket cache ``kinit`` filled (``KRB5CCNAME``). Without this check a missing or stale
    keytab shows only as aiokafka's "unable to bootstrap"."""
    try:
        import gssapi
        from gssapi.raw.misc import GSSError
    except ImportError:
        raise ConfigError(
            "sasl_mechanism GSSAPI needs the gssapi package: pip install 'riskstream[kerberos]' "
            "(it builds against the system's MIT Kerberos: Debian libkrb5-dev, RHEL krb5-devel)"
        ) from None
    try:
        creds = gssapi.Credentials(usage="initiate")
        principal = str(creds.name)
    except GSSError as exc:
        raise CredentialsError(
            "no Kerberos credentials for Kafka's GSSAPI: set KRB5_CLIENT_KTNAME to the client's "
            f"keytab or run kinit (KRB5CCNAME), and KRB5_CONFIG to the realm's krb5.conf ({exc})",
            # the KDC unreachable may pass; a missing or stale keytab does not
            retriable="Cannot contact any KDC" in str(exc),
        ) from None
    log.info(
        "Kafka SASL GSSAPI as %s (brokers' service name %r)", principal, settings.sasl_kerberos_service_name
    )
    return principal


def _password(settings: Settings) -> str:
    if settings.sasl_password is None:  # Settings refuses this; settings built otherwise may not
        raise ConfigError(f"security_protocol {settings.security_protocol} needs sasl_password")
    return settings.sasl_password.get_secret_value()


def faust_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for ``faust.App``: ``None`` for plaintext."""
    import faust

    ctx = ssl_context(settings)
    if settings.security_protocol.startswith("SASL_") and settings.sasl_mechanism == "OAUTHBEARER":
        return faust.OAuthCredentials(oauth_cb=token_provider(settings), ssl_context=ctx)
    if settings.security_protocol.startswith("SASL_") and settings.sasl_mechanism == "GSSAPI":
        kerberos_principal(settings)
        return faust.GSSAPICredentials(
            kerberos_service_name=settings.sasl_kerberos_service_name,
            kerberos_domain_name=settings.sasl_kerberos_domain_name,
            ssl_context=ctx,
        )
    if settings.security_protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=_password(settings),
            ssl_context=ctx,
            mechanism=settings.sasl_mechanism,
        )
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None
