"""SASL/OAUTHBEARER tokens from an OAuth 2.0 identity provider (Okta, Entra ID, Keycloak,
Confluent Cloud's identity pools …) with the client-credentials grant (RFC 6749, section 4.4).

The Kafka clients ask :class:`OAuthTokenProvider` for a token on every new connection; it posts
the client id and secret (HTTP Basic) to the token endpoint once, and reuses the access token
until ``refresh_margin_s`` before it expires. The broker validates the token itself (for Apache
Kafka: ``OAuthBearerValidatorCallbackHandler`` against the provider's JWKS). A refusal or an
unreachable endpoint raises :class:`modeling.errors.CredentialsError` naming the endpoint and the
client id, never the secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from aiokafka.abc import AbstractTokenProvider

from modeling.errors import CredentialsError

DEFAULT_EXPIRES_S = 300.0  # when the endpoint does not say (expires_in is optional)


class OAuthTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        *,
        refresh_margin_s: float = 30.0,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.refresh_margin_s = refresh_margin_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self.fetches = 0  # token requests made (for metrics and tests)

    async def token(self) -> str:
        """A valid access token, fetched off the event loop when the cached one is near expiry."""
        if self._token is None or self._clock() >= self._expires_at - self.refresh_margin_s:
            token, expires_in = await asyncio.to_thread(self._fetch)
            self._token, self._expires_at = token, self._clock() + expires_in
        return self._token

    def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        basic = base64.b64encode(f"{_form(self.client_id)}:{_form(self._secret)}".encode()).decode()
        req = urllib.request.Request(
            self.token_url,
            data=urllib.parse.urlencode(form).encode(),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
                "Authorization": f"Basic {basic}",
            },
            method="POST",
        )
        self.fetches += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise CredentialsError(
                f"the OAuth token endpoint refused the client credentials: HTTP {exc.code} {detail}",
                retriable=exc.code >= 500 or exc.code == 429,
                token_url=self.token_url,
                client_id=self.client_id,
            ) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CredentialsError(
                f"cannot reach the OAuth token endpoint: {reason}",
                retriable=True,
                token_url=self.token_url,
                client_id=self.client_id,
            ) from None
        try:
            payload = json.loads(body)
            token = payload["access_token"]
            kind = str(payload.get("token_type", "bearer")).lower()
            expires_in = float(payload.get("expires_in", DEFAULT_EXPIRES_S))
        except (ValueError, KeyError, TypeError) as exc:
            raise CredentialsError(
                f"the OAuth token endpoint's answer has no access token: {exc}", token_url=self.token_url
            ) from None
        if not isinstance(token, str) or not token or kind != "bearer":
            raise CredentialsError(
                f"the OAuth token endpoint returned no bearer token (token_type {kind})",
                token_url=self.token_url,
            )
        return token, expires_in


def _form(value: str) -> str:
    """Client id and secret are form-encoded before the Basic header (RFC 6749, section 2.3.1)."""
    return urllib.parse.quote_plus(value, safe="")
