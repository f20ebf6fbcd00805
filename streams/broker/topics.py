"""Creating the project's topics with aiokafka's admin client (used by ``riskstream kafka topics``
and by the worker at startup)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from modeling.errors import CredentialsError, RiskstreamError

if TYPE_CHECKING:
    from modeling.settings import Settings

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36


class TopicError(RiskstreamError):
    """The cluster refused to create a topic."""


def project_topics(settings: Settings) -> dict[str, int]:
    """The topics riskstream reads and writes, each with ``settings.topic_partitions`` partitions."""
    names = (
        settings.topic_transactions,
        settings.topic_clickstream,
        settings.topic_labels,
        settings.topic_risk_events,
        settings.topic_dead_letter,
    )
    return dict.fromkeys(names, settings.topic_partitions)


def user_state_changelog(settings: Settings) -> str:
    """The user-state table's changelog, as Faust names it: co-partitioned with the inputs."""
    return f"{settings.app_id}-user-state-changelog"


def terminal_state_changelog(settings: Settings) -> str:
    """The global terminal table's changelog, as Faust names it: one partition."""
    return f"{settings.app_id}-terminal-state-changelog"


def changelog_topics(settings: Settings) -> dict[str, int]:
    """The worker's table changelogs (compacted), as Faust names them: name -> partitions."""
    return {
        user_state_changelog(settings): settings.topic_partitions,
        terminal_state_changelog(settings): 1,
    }


# What the dead-letter topic takes beyond a dead letter's value: its key (at most
# streams.unreadable.MAX_KEY_BYTES) and headers
DEAD_LETTER_HEADROOM = 64 << 10


def dead_letter_max_bytes(settings: Settings) -> int:
    """The dead-letter topic's ``max.message.bytes``: the largest stored state, and room for
    its key and headers."""
    return settings.state_max_record_bytes + DEAD_LETTER_HEADROOM


def dead_letter_room(settings: Settings, topic_limit: int | None = None) -> int:
    """How many bytes of an input record's value or a stored state a dead letter keeps
    (streams.unreadable.fit): the largest stored state, or less where the dead-letter topic
    takes less than riskstream creates it with (``topic_limit``: its ``max.message.bytes``,
    :func:`read_topic_limits`; None: as riskstream creates it)."""
    room = settings.state_max_record_bytes
    if topic_limit is not None:
        room = min(room, max(topic_limit - DEAD_LETTER_HEADROOM, topic_limit // 2))
    return room


async def read_topic_limits(settings: Settings, names: Iterable[str]) -> dict[str, int]:
    """``max.message.bytes`` of each of ``names`` that exists and whose configuration this
    client may read (an ACL may forbid it: then nothing is known, and nothing is returned)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from streams.security import client_kwargs

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **client_kwargs(settings))
    try:
        await admin.start()
        return await _topic_limits(admin, list(names))
    except KafkaError as exc:
        log.debug("topic configurations not read: %r", exc)
        return {}
    finally:
        await admin.close()


def terminal_labels_topic(settings: Settings) -> str:
    """The single-partition topic that carries labels to the terminal table's owner."""
    return f"{settings.app_id}-terminal-labels"


def internal_topics(settings: Settings) -> dict[str, int]:
    """The topics the worker's Faust app uses besides the project's: table changelogs and
    :func:`terminal_labels_topic`."""
    return {**changelog_topics(settings), terminal_labels_topic(settings): 1}


async def ensure_topics(
    bootstrap: str,
    names: dict[str, int],
    replication: int = 1,
    *,
    timeout_ms: int = 30_000,
    configs: dict[str, dict[str, str]] | None = None,
    exact: Iterable[str] = (),
    **client_kwargs: Any,
) -> list[str]:
    """Create each topic of ``names`` (name -> partitions) that does not exist yet.

    Returns the names it created; existing topics are left as they are (a topic with fewer
    partitions than asked for is logged, not altered), except that an existing topic named in
    ``exact`` with another partition count raises :class:`TopicError`. ``configs``: topic
    configurations by name (``cleanup.policy`` …) for the topics it creates. ``client_kwargs`` go
    to ``AIOKafkaAdminClient`` (``security_protocol``, ``ssl_context``, SASL settings …).
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, **client_kwargs)
    # aiokafka raises "unable to bootstrap" or "connection closed" and logs the cause (a refused
    # SASL login, a certificate that does not verify): keep what it logs to name the cause.
    logged = _ClientErrors()
    client_log = logging.getLogger("aiokafka")
    client_log.addHandler(logged)
    protocol = client_kwargs.get("security_protocol", "PLAINTEXT")
    mechanism = client_kwargs.get("sasl_mechanism")
    try:
        await admin.start()
        # The first request: a broker that refuses an OAUTHBEARER token may let the client's
        # start pass and then close the connection.
        existing = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
    except CredentialsError:  # an OAuth token endpoint refused or was unreachable: says so
        await admin.close()
        raise
    except KafkaError as exc:
        await admin.close()
        raise TopicError(
            f"cannot reach the Kafka cluster: {exc}{logged.explain(str(exc), protocol, mechanism)}",
            bootstrap=bootstrap,
            security_protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_username=client_kwargs.get("sasl_plain_username"),
        ) from exc
    except Exception as exc:
        await admin.close()
        if type(exc).__module__.startswith("gssapi"):  # raised through aiokafka's SASL handshake
            service = client_kwargs.get("sasl_kerberos_service_name")
            domain = client_kwargs.get("sasl_kerberos_domain_name")
            host = repr(domain) if domain else "the host each broker advertises"
            raise TopicError(
                "cannot reach the Kafka cluster: Kerberos gave no service ticket for the brokers' "
                f"principal {service}/<host> (sasl_kerberos_service_name {service!r}, host: {host}; "
                f"sasl_kerberos_domain_name sets it): {exc}",
                bootstrap=bootstrap,
                security_protocol=protocol,
                sasl_mechanism=mechanism,
            ) from exc
        raise
    finally:
        client_log.removeHandler(logged)
    try:
        wrong = {n: existing[n] for n in exact if n in existing and existing[n] != names.get(n, existing[n])}
        if wrong:
            listed = ", ".join(f"{n} has {k}" for n, k in sorted(wrong.items()))
            raise TopicError(
                f"partition counts differ from the {max(names[n] for n in wrong)} the settings "
                f"give (topic_partitions): {listed}. A user's transactions, clicks and labels "
                "must meet in one partition, the one that holds the user's window state: create "
                "the input topics with the same partition count, or set RISKSTREAM_TOPIC_PARTITIONS "
                "to theirs (a topic created by a broker's auto-create gets the broker's num.partitions)",
                bootstrap=bootstrap,
                topics=wrong,
            )
        for name, want in names.items():
            if name in existing and existing[name] < want:
                log.warning(
                    "topic %s has %d partitions, fewer than the %d asked for", name, existing[name], want
                )
        configs = configs or {}
        await _warn_smaller_limits(admin, {n: c for n, c in configs.items() if n in existing})
        missing = [
            NewTopic(name, n, replication, topic_configs=configs.get(name, {}))
            for name, n in names.items()
            if name not in existing
        ]
        if not missing:
            return []
        response = await admin.create_topics(missing, timeout_ms=timeout_ms)
        created: list[str] = []
        for topic_error in response.topic_errors:
            name, code = topic_error[0], topic_error[1]
            if code == 0:
                created.append(name)
            elif code != _TOPIC_ALREADY_EXISTS:  # lost a race with another creator: fine
                message = topic_error[2] if len(topic_error) > 2 and topic_error[2] else f"error code {code}"
                raise TopicError(f"cannot create topic {name!r}: {message}", bootstrap=bootstrap, code=code)
        return sorted(created)
    finally:
        await admin.close()


async def ensure_project_topics(settings: Settings, *, internal: bool = False) -> list[str]:
    """The project's topics (:func:`project_topics`) with the settings' replication factor, over
    the settings' client security; with ``internal``, the worker's own topics too
    (:func:`internal_topics`, changelogs compacted).

    A worker creates its internal topics before its Faust app starts: when the consumer group's
    first assignment found them missing (Faust creates them as the app starts), the assignor
    ignored them and, once in CI, the worker stalled there for minutes."""
    from streams.security import client_kwargs

    names = project_topics(settings)
    # co-partitioned: a user's events meet in the partition that holds the user's state
    exact = [settings.topic_transactions, settings.topic_clickstream, settings.topic_labels]
    big = str(settings.state_max_record_bytes)
    # A dead letter is an input message or a stored state, its bytes untouched, plus headers:
    # with the broker's default limit (1 MB) one near an input topic's limit, or any state over
    # 1 MB, was refused, and the worker stopped on it after every restart (session 34).
    configs: dict[str, dict[str, str]] = {
        settings.topic_dead_letter: {"max.message.bytes": str(dead_letter_max_bytes(settings))}
    }
    if internal:
        names |= internal_topics(settings)
        for name in changelog_topics(settings):
            configs[name] = {"cleanup.policy": "compact", "max.message.bytes": big}
        exact.append(user_state_changelog(settings))
    return await ensure_topics(
        settings.bootstrap_servers,
        names,
        settings.topic_replication,
        configs=configs,
        exact=exact,
        **client_kwargs(settings),
    )


async def _topic_limits(admin: Any, names: list[str]) -> dict[str, int]:
    """``max.message.bytes`` of each existing topic of ``names``; raises the client's
    ``KafkaError`` when the configurations cannot be read."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    if not names:
        return {}
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    limits: dict[str, int] = {}
    for response in responses:
        for code, _msg, _type, name, entries in response.resources:
            have = {e[0]: e[1] for e in entries}.get("max.message.bytes")
            if code == 0 and name in names and have is not None:
                limits[name] = int(have)
    return limits


async def _warn_smaller_limits(admin: Any, wanted: dict[str, dict[str, str]]) -> None:
    """Log each existing topic whose ``max.message.bytes`` is below what riskstream would create
    it with: left as it is (an operator's topic), but a record over its limit stops the worker
    that writes it, on every restart (dead letters are cut to fit instead: streams.unreadable.fit)."""
    from aiokafka.errors import KafkaError

    asked = {n: int(c["max.message.bytes"]) for n, c in wanted.items() if "max.message.bytes" in c}
    try:
        limits = await _topic_limits(admin, list(asked))
    except KafkaError as exc:  # not allowed to read them (ACLs): nothing to say, nothing wrong
        log.debug("topic configurations not read: %r", exc)
        return
    for name, have in limits.items():
        if have < asked[name]:
            log.warning(
                "topic %s takes records of up to %d bytes, fewer than the %d riskstream creates it "
                "with: a record between the two (a large state snapshot) would stop the worker on "
                "every restart, and a dead letter is cut to fit it. Raise it: kafka-configs.sh "
                "--alter --entity-type topics --entity-name %s --add-config max.message.bytes=%d",
                name,
                have,
                asked[name],
                name,
                asked[name],
            )


class _ClientErrors(logging.Handler):
    """The aiokafka errors logged while a client starts, to say why it could not connect."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def explain(self, error: str, protocol: str, mechanism: str | None = None) -> str:
        cause = self.messages[-1] if self.messages else ""
        text = f"; the client logged: {cause}" if cause else ""
        seen = f"{error} {cause}"
        sasl = protocol.startswith("SASL_")
        if sasl and mechanism == "OAUTHBEARER" and any(w in seen for w in ("Sasl", "closed", "NodeNotReady")):
            text += (
                "; the broker refused the authentication (OAUTHBEARER): it did not accept the token: "
                "check that it trusts the token endpoint's signing keys (its JWKS) and expects this "
                "token's audience, issuer and scope"
            )
        elif "SaslAuthentication" in seen or (protocol.startswith("SASL_") and "closed" in seen):
            # A refused login: an authentication error, or (older brokers, PLAIN) just a close.
            text += (
                "; the broker refused the authentication: check the SASL username, password and "
                "mechanism against the listener"
            )
        elif protocol == "SSL" and "closed" in seen:
            text += (
                "; the broker closed the TLS connection: a listener that requires a client "
                "certificate does that without one (ssl_certfile, ssl_keyfile) or with one it "
                "does not trust"
            )
        elif "CERTIFICATE_VERIFY_FAILED" in seen:
            text += (
                "; the broker's TLS certificate does not verify: it is not signed by ssl_cafile, or "
                "its name does not match the bootstrap host"
            )
        return text
