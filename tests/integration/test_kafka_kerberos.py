"""SASL GSSAPI (Kerberos) against a real broker and a real MIT KDC: the broker's listener admits
only clients with a service ticket for ``kafka/127.0.0.1``; the worker, the replay and a reader
authenticate with a client keytab (``KRB5_CLIENT_KTNAME``), as a deployment would. Tickets last
20 s and the broker ends every session after 10 s (``connections.max.reauth.ms``), so the worker
keeps scoring through cut sessions and expired tickets, as a long-running one must. Missing or
stale credentials and a wrong service name fail with a message that says which.

The KDC is Debian's krb5-kdc in a folder of this module's own (``kdc.py``); the broker is the
real Apache Kafka with a second listener, ``SASL_PLAINTEXT`` with GSSAPI, next to its plaintext one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import orjson
import pytest
from harness import Scenario, WorkerProc, consume, isolated_scenario, run
from kdc import REALM, LocalKdc

from modeling.errors import CredentialsError
from modeling.features import FeatureConfig
from modeling.records import Transaction
from modeling.settings import Settings
from streams.broker.local import LocalKafka, free_port_pair
from streams.broker.topics import TopicError, ensure_project_topics
from streams.replay import replay_events
from streams.security import client_kwargs, faust_credentials, kerberos_principal
from training.history import event_stream, load_history

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "handbook_2w.parquet"
SERVICE = "kafka/127.0.0.1"  # the broker's principal: service name / the host it advertises
TICKET_LIFE_S = 20
AUTHENTICATED = re.compile(r"^\[([\d-]+ [\d:,]+)\] .*Authenticated as \S+ via GSSAPI", re.M)  # aiokafka's


class Kerberized(NamedTuple):
    broker: LocalKafka
    bootstrap: str  # the SASL_PLAINTEXT (GSSAPI) listener
    kdc: LocalKdc
    client_keytab: Path  # scorer@REALM
    stale_keytab: Path  # a principal whose key changed after this keytab was written


@pytest.fixture(scope="module")
def kerberized(local_kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kerberized]:
    tmp_path = tmp_path_factory.mktemp("kerberos")
    # Tickets for 20 s, and the broker ends every session after 10 s (KIP-368): within a test
    # the worker's connections are cut, and its tickets expire, several times over.
    kdc = LocalKdc(tmp_path / "kdc", max_life=f"{TICKET_LIFE_S}s").start()
    try:
        broker_keytab = kdc.principal(SERVICE)
        client_keytab = kdc.principal("scorer")
        stale_keytab = kdc.principal("rotated")
        kdc.change_key("rotated")
        port, controller_port = free_port_pair()
        gssapi_port, _ = free_port_pair()
        jaas = (
            "com.sun.security.auth.module.Krb5LoginModule required useKeyTab=true storeKey=true "
            f'keyTab="{broker_keytab}" principal="{SERVICE}@{REALM}";'
        )
        broker = LocalKafka(
            tmp_path / "kafka",
            port=port,
            controller_port=controller_port,
            lib_dir=local_kafka.lib_dir,
            listeners={"SASL_PLAINTEXT": gssapi_port},
            properties={
                "sasl.enabled.mechanisms": "GSSAPI",
                "sasl.kerberos.service.name": "kafka",
                "listener.name.sasl_plaintext.gssapi.sasl.jaas.config": jaas,
                "connections.max.reauth.ms": "10000",
            },
            jvm_args=[f"-Djava.security.krb5.conf={kdc.krb5_conf}"],
        )
        broker.start(timeout=180)
        try:
            yield Kerberized(broker, f"127.0.0.1:{gssapi_port}", kdc, client_keytab, stale_keytab)
        finally:
            broker.stop()
    finally:
        kdc.stop()


def _kerberos_env(k: Kerberized, ccache: Path, keytab: Path | None) -> dict[str, str]:
    """MIT Kerberos's own variables, as a deployment sets them, plus riskstream's two settings."""
    env = {
        **k.kdc.client_env,
        "KRB5CCNAME": f"FILE:{ccache}",  # a ticket cache of the test's own
        "RISKSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "RISKSTREAM_SASL_MECHANISM": "GSSAPI",
    }
    if keytab is not None:
        env["KRB5_CLIENT_KTNAME"] = str(keytab)
    return env


@pytest.fixture
def as_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """This process's own Kerberos environment (the replay and the reader run in it), and a
    fresh credentials check: one per settings object and process, as in production."""
    monkeypatch.delenv("KRB5_CLIENT_KTNAME", raising=False)
    kerberos_principal.cache_clear()
    yield monkeypatch
    kerberos_principal.cache_clear()


def _settings(sc: Scenario, **overrides: str) -> Settings:
    s: Settings = sc.settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="GSSAPI", **overrides)
    return s


def test_worker_scores_over_kerberos(
    kerberized: Kerberized, model_registry: Path, tmp_path: Path, as_client: pytest.MonkeyPatch
) -> None:
    env = _kerberos_env(kerberized, tmp_path / "krb5cc", kerberized.client_keytab)
    for name, value in env.items():
        as_client.setenv(name, value)
    bootstrap = kerberized.bootstrap
    sc = isolated_scenario(bootstrap, model_registry, tmp_path, partitions=2, extra_env=env)
    settings = _settings(sc)
    assert kerberos_principal(settings) == f"scorer@{REALM}"
    creds = faust_credentials(settings)  # the worker's Faust app
    assert (creds.protocol.value, creds.mechanism.value, creds.kerberos_service_name) == (
        "SASL_PLAINTEXT",
        "GSSAPI",
        "kafka",
    )
    df = load_history(DATA)
    users = sorted(df["user_id"].unique())[:30]
    waves = []  # three sets of users, replayed one ticket lifetime apart
    for i in range(3):
        sample = df[df["user_id"].isin(users[i::3])].reset_index(drop=True)
        waves.append(list(event_stream(sample, FeatureConfig()).events()))
    txn_ids = {e.transaction_id for wave in waves for e in wave if isinstance(e, Transaction)}
    out = sc.topics["risk_events"]
    w = WorkerProc(sc, "kerberos").start()
    try:
        w.wait_metrics()
        started = time.monotonic()
        for i, wave in enumerate(waves):
            time.sleep(max(0.0, started + i * (TICKET_LIFE_S + 5) - time.monotonic()))
            run(replay_events(wave, settings, progress=False))
        got = run(consume(bootstrap, out, until=len(txn_ids), timeout=240, **client_kwargs(settings)))
        assert {orjson.loads(r.value)["transaction_id"] for r in got} == txn_ids
        w.check_alive()
    finally:
        w.stop()
    log = w.log_path.read_text(errors="replace")
    assert f"GSSAPI as scorer@{REALM}" in log
    # Sessions cut and tickets expired on the way: the worker authenticated new sessions more
    # than two ticket lifetimes after its first, with tickets it got from its keytab since.
    times = [datetime.strptime(m + "+0000", "%Y-%m-%d %H:%M:%S,%f%z") for m in AUTHENTICATED.findall(log)]
    assert times and (max(times) - min(times)).total_seconds() > 2 * TICKET_LIFE_S, times
    # The KDC issued the client service tickets for the broker: Kerberos did the authentication.
    assert f"scorer@{REALM} for {SERVICE}@{REALM}" in kerberized.kdc.log()


def test_missing_or_stale_credentials_and_a_wrong_service_fail_clearly(
    kerberized: Kerberized, model_registry: Path, tmp_path: Path, as_client: pytest.MonkeyPatch
) -> None:
    sc = Scenario(kerberized.bootstrap, model_registry, tmp_path, partitions=2)
    # No keytab and an empty ticket cache.
    for name, value in _kerberos_env(kerberized, tmp_path / "krb5cc", None).items():
        as_client.setenv(name, value)
    missing = r"KRB5_CLIENT_KTNAME.*No Kerberos credentials available"
    with pytest.raises(CredentialsError, match=missing) as info:
        run(ensure_project_topics(_settings(sc)))
    assert not info.value.retriable
    # A keytab whose key the KDC no longer holds (rotated since).
    kerberos_principal.cache_clear()
    as_client.setenv("KRB5_CLIENT_KTNAME", str(kerberized.stale_keytab))
    with pytest.raises(CredentialsError, match="Decrypt integrity check failed"):
        run(ensure_project_topics(_settings(sc)))
    # A valid keytab, but the KDC cannot be reached: worth retrying, unlike the two above.
    kerberos_principal.cache_clear()
    as_client.setenv("KRB5_CLIENT_KTNAME", str(kerberized.client_keytab))
    unreachable = tmp_path / "krb5-unreachable.conf"
    closed_port = free_port_pair()[0]
    conf = kerberized.kdc.krb5_conf.read_text()
    unreachable.write_text(conf.replace(f"127.0.0.1:{kerberized.kdc.port}", f"127.0.0.1:{closed_port}"))
    as_client.setenv("KRB5_CONFIG", str(unreachable))
    with pytest.raises(CredentialsError, match="Cannot contact any KDC") as info:
        run(ensure_project_topics(_settings(sc)))
    assert info.value.retriable
    as_client.setenv("KRB5_CONFIG", str(kerberized.kdc.krb5_conf))
    # Valid credentials, but a service the KDC does not know: the broker is never reached.
    kerberos_principal.cache_clear()
    as_client.setenv("KRB5_CLIENT_KTNAME", str(kerberized.client_keytab))
    wrong = r"sasl_kerberos_service_name 'kafka-elsewhere'.*Server kafka-elsewhere/127\.0\.0\.1@\S+ not found"
    with pytest.raises(TopicError, match=wrong):
        run(ensure_project_topics(_settings(sc, sasl_kerberos_service_name="kafka-elsewhere")))
    # The worker itself stops with the missing credentials, naming them.
    as_client.delenv("KRB5_CLIENT_KTNAME")  # the worker's environment starts from this one's
    # (its own ticket cache: this process's holds the tickets of the steps above)
    w = WorkerProc(sc, "no-keytab", env=_kerberos_env(kerberized, tmp_path / "worker-krb5cc", None)).start()
    code, log = w.exits("without credentials")
    assert code != 0
    assert "no Kerberos credentials" in log and "KRB5_CLIENT_KTNAME" in log, log[-3000:]
