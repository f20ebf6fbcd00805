"""Kafka client security from the settings: TLS, SASL (PLAIN, SCRAM, OAUTHBEARER), for every client.

The worker's Faust app takes :func:`faust_credentials`; every plain aiokafka client (replay,
warmup, the demo's reader, topic administration) takes :func:`client_kwargs`. Both read the same
settings, so a deployment configures security once (``RISKSTREAM_SECURITY_PROTOCOL``,
``RISKSTREAM_SASL_*``, ``RISKSTREAM_SSL_*``; README "Using your own Kafka cluster").
"""

from __future__ import annotations

import ssl
from functools import cache
from typing import Any

from modeling.errors import ConfigError
from modeling.settings import Settings


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
