"""SASL/OAUTHBEARER against a real broker that validates the tokens: an OAuth 2.0 token endpoint
(client-credentials grant) signs RS256 JWTs, and the broker checks them against that key's JWKS
(Apache Kafka's OAuthBearerValidatorCallbackHandler). A worker scores over it, topic
administration and replay work, and a wrong client secret fails with a message naming the
token endpoint."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from harness import Scenario, WorkerProc, consume, isolated_scenario, run

from modeling.errors import CredentialsError
from modeling.features import FeatureConfig
from modeling.records import Transaction
from modeling.settings import Settings
from streams.broker.local import LocalKafka, free_port_pair
from streams.broker.topics import ensure_project_topics
from streams.replay import replay_events
from streams.security import client_kwargs
from training.history import event_stream, load_history

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "handbook_2w.parquet"
CLIENT_ID, SECRET = "riskstream-scorer", "s3cret/with:odd+chars"
AUDIENCE = "kafka"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(n: int) -> str:
    return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class TokenServer:
    """A minimal OAuth 2.0 token endpoint: client-credentials grant, RS256 JWT access tokens."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.forge = False  # sign with a key the broker's JWKS does not hold
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                server.requests += 1
                length = int(self.headers.get("Content-Length", 0))
                form = self.rfile.read(length).decode()
                ok = self.headers.get("Authorization") == server.basic(CLIENT_ID, SECRET)
                if not ok or "grant_type=client_credentials" not in form:
                    self._answer(401, {"error": "invalid_client"})
                    return
                self._answer(200, {"access_token": server.jwt(), "token_type": "Bearer", "expires_in": 300})

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/oauth2/token"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def basic(client: str, secret: str) -> str:
        from urllib.parse import quote_plus

        return "Basic " + base64.b64encode(f"{quote_plus(client)}:{quote_plus(secret)}".encode()).decode()

    def jwt(self) -> str:
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": "k1"}
        claims = {"sub": CLIENT_ID, "aud": AUDIENCE, "iss": "riskstream-test", "iat": now, "exp": now + 300}
        signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}".encode()
        key = self.forger if self.forge else self.key
        sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input.decode()}.{_b64(sig)}"

    def jwks(self) -> dict[str, Any]:
        pub = self.key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "kid": "k1",
                    "use": "sig",
                    "alg": "RS256",
                    "n": _uint(pub.n),
                    "e": _uint(pub.e),
                }
            ]
        }


class OAuthBroker(NamedTuple):
    bootstrap: str
    tokens: TokenServer


@pytest.fixture(scope="module")
def oauth_broker(local_kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthBroker]:
    tmp = tmp_path_factory.mktemp("oauth-broker")
    tokens = TokenServer()
    jwks = tmp / "jwks.json"
    jwks.write_text(json.dumps(tokens.jwks()))
    port, controller_port = free_port_pair()
    (sasl_port, _) = free_port_pair()
    broker = LocalKafka(
        tmp / "kafka",
        port=port,
        controller_port=controller_port,
        lib_dir=local_kafka.lib_dir,
        listeners={"SASL_PLAINTEXT": sasl_port},
        properties={
            "sasl.enabled.mechanisms": "OAUTHBEARER",
            "listener.name.sasl_plaintext.oauthbearer.sasl.jaas.config": (
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"
            ),
            "listener.name.sasl_plaintext.oauthbearer.sasl.server.callback.handler.class": (
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler"
            ),
            "sasl.oauthbearer.jwks.endpoint.url": jwks.as_uri(),
            "sasl.oauthbearer.expected.audience": AUDIENCE,
        },
    )
    broker.start(timeout=180)
    try:
        yield OAuthBroker(f"127.0.0.1:{sasl_port}", tokens)
    finally:
        broker.stop()
        tokens.http.shutdown()
        tokens.http.server_close()  # shutdown() stops serving; this closes the listening socket


def _oauth_env(url: str, secret: str = SECRET) -> dict[str, str]:
    return {
        "RISKSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "RISKSTREAM_SASL_MECHANISM": "OAUTHBEARER",
        "RISKSTREAM_SASL_OAUTH_TOKEN_URL": url,
        "RISKSTREAM_SASL_OAUTH_CLIENT_ID": CLIENT_ID,
        "RISKSTREAM_SASL_OAUTH_CLIENT_SECRET": secret,
    }


def _settings(sc: Scenario, url: str, secret: str = SECRET) -> Settings:
    return sc.settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_url=url,
        sasl_oauth_client_id=CLIENT_ID,
        sasl_oauth_client_secret=secret,
    )


def test_worker_and_clients_over_oauthbearer(
    oauth_broker: OAuthBroker, model_registry: Path, tmp_path: Path
) -> None:
    sc = isolated_scenario(
        oauth_broker.bootstrap,
        model_registry,
        tmp_path,
        partitions=2,
        extra_env=_oauth_env(oauth_broker.tokens.url),
    )
    settings = _settings(sc, oauth_broker.tokens.url)
    before = oauth_broker.tokens.requests
    run(ensure_project_topics(settings))
    df = load_history(DATA)
    few = df[df["user_id"].isin(sorted(df["user_id"].unique())[:8])].reset_index(drop=True)
    events = list(event_stream(few, FeatureConfig()).events())
    report = run(replay_events(events, settings, progress=False))
    assert report.total == len(events)
    # One settings object, one cached token: the admin client and the producer shared it.
    assert oauth_broker.tokens.requests == before + 1
    txn_ids = {e.transaction_id for e in events if isinstance(e, Transaction)}
    w = WorkerProc(sc, "oauth").start()
    try:
        w.wait_metrics()
        out = sc.topics["risk_events"]
        recs = run(consume(sc.bootstrap, out, until=len(txn_ids), timeout=240, **client_kwargs(settings)))
        assert {orjson.loads(r.value)["transaction_id"] for r in recs} == txn_ids
        w.check_alive()
        log = w.log_path.read_text(errors="replace")
        assert SECRET not in log
    finally:
        w.stop()


def test_a_wrong_client_secret_names_the_token_endpoint(oauth_broker: OAuthBroker, tmp_path: Path) -> None:
    sc = Scenario(oauth_broker.bootstrap, tmp_path / "registry", tmp_path, partitions=1)
    url = oauth_broker.tokens.url
    with pytest.raises(CredentialsError, match="refused the client credentials: HTTP 401") as ei:
        run(ensure_project_topics(_settings(sc, url, secret="wrong")))
    assert ei.value.context["token_url"] == url and not ei.value.retriable
    assert "wrong" not in str(ei.value)
    dead = url.replace(url.split(":")[2].split("/")[0], str(free_port_pair()[0]))
    with pytest.raises(CredentialsError, match="cannot reach the OAuth token endpoint") as ei:
        run(ensure_project_topics(_settings(sc, dead)))
    assert ei.value.retriable


def test_a_token_the_broker_does_not_trust_is_refused_clearly(
    oauth_broker: OAuthBroker, tmp_path: Path
) -> None:
    sc = Scenario(oauth_broker.bootstrap, tmp_path / "registry", tmp_path, partitions=1)
    oauth_broker.tokens.forge = True
    try:
        with pytest.raises(Exception, match="refused the authentication") as ei:
            run(ensure_project_topics(_settings(sc, oauth_broker.tokens.url)))
    finally:
        oauth_broker.tokens.forge = False
    assert "OAUTHBEARER" in str(ei.value)
