"""The OAUTHBEARER token provider against a local HTTP token endpoint: the client-credentials
request, token reuse until shortly before expiry, and errors that name the endpoint (the broker
path is in tests/integration/test_kafka_oauth.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from pydantic import ValidationError

from modeling.errors import CredentialsError
from modeling.settings import Settings
from streams.oauth import OAuthTokenProvider
from streams.security import client_kwargs

SECRET = "p@ss word/+"


class Endpoint:
    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, Any]]] = []
        self.seen: list[tuple[str, dict[str, list[str]]]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                endpoint.seen.append((self.headers["Authorization"], form))
                code, body = endpoint.answers.pop(0)
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/token"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    yield e
    e.http.shutdown()
    e.http.server_close()


def test_tokens_are_reused_until_shortly_before_they_expire(endpoint: Endpoint) -> None:
    now = [1000.0]
    p = OAuthTokenProvider(
        endpoint.url, "scorer", SECRET, "kafka.write", refresh_margin_s=30, clock=lambda: now[0]
    )
    endpoint.answers += [
        (200, {"access_token": "t1", "token_type": "Bearer", "expires_in": 120}),
        (200, {"access_token": "t2", "token_type": "bearer"}),  # no expires_in: 300 s
    ]

    async def go() -> list[str]:
        got = [await p.token(), await p.token()]
        now[0] += 89  # 31 s left: still used
        got.append(await p.token())
        now[0] += 2  # 29 s left: inside the refresh margin
        got.append(await p.token())
        now[0] += 260
        got.append(await p.token())
        return got

    assert asyncio.run(go()) == ["t1", "t1", "t1", "t2", "t2"]
    assert p.fetches == 2
    auth, form = endpoint.seen[0]
    assert form == {"grant_type": ["client_credentials"], "scope": ["kafka.write"]}
    user, _, secret = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
    assert (user, secret) == ("scorer", "p%40ss+word%2F%2B")  # form-encoded (RFC 6749, 2.3.1)


def test_errors_name_the_endpoint_not_the_secret(endpoint: Endpoint) -> None:
    p = OAuthTokenProvider(endpoint.url, "scorer", SECRET)
    for code, body, match, retriable in (
        (401, {"error": "invalid_client"}, "refused the client credentials: HTTP 401", False),
        (503, {"error": "busy"}, "HTTP 503", True),
        (200, {"token_type": "bearer"}, "no access token", False),
        (200, {"access_token": "x", "token_type": "mac"}, "no bearer token", False),
    ):
        endpoint.answers.append((code, body))
        with pytest.raises(CredentialsError, match=match) as ei:
            asyncio.run(p.token())
        assert ei.value.retriable is retriable and ei.value.context["token_url"] == endpoint.url
        assert SECRET not in str(ei.value)
    endpoint.http.shutdown()
    endpoint.http.server_close()
    with pytest.raises(CredentialsError, match="cannot reach the OAuth token endpoint") as ei:
        asyncio.run(p.token())
    assert ei.value.retriable


def test_settings_need_the_whole_oauth_client_and_share_one_provider() -> None:
    base = {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}
    with pytest.raises(ValidationError, match="sasl_oauth_token_url"):
        Settings(**base, sasl_oauth_client_id="scorer", sasl_oauth_client_secret=SECRET)  # type: ignore[arg-type]
    s = Settings(
        **base,  # type: ignore[arg-type]
        sasl_oauth_token_url="https://idp.example/token",
        sasl_oauth_client_id="scorer",
        sasl_oauth_client_secret=SECRET,  # type: ignore[arg-type]
    )
    assert SECRET not in repr(s)
    kw = client_kwargs(s)
    assert kw["sasl_mechanism"] == "OAUTHBEARER" and "sasl_plain_password" not in kw
    assert kw["sasl_oauth_token_provider"] is client_kwargs(s)["sasl_oauth_token_provider"]
