"""A small OpenID Connect provider for tests, on loopback: discovery, the authorization
endpoint (authorization code flow, PKCE S256 required), the token endpoint (client
secret in HTTP Basic, code bound to its redirect URI and verifier, one use), JWKS and
userinfo, with RS256 ID tokens signed by a key made at start (joserfc). Who "signs in"
at the authorization endpoint is set by the test (`next_user`); `tamper` makes the next
ID token wrong in one way, to see the relying party refuse it."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    claims: dict[str, Any]


@dataclass
class OidcProvider:
    client_id: str = "starling"
    client_secret: str = "s3cret-of-the-client"
    issuer: str = ""
    next_user: dict[str, Any] = field(default_factory=dict)
    tamper: str | None = None  # "key", "nonce", "aud", "expired", "alg-none"
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "k1"}))
    grants: dict[str, Grant] = field(default_factory=dict)
    access: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_requests: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_get("/userinfo", self.userinfo)
        return app

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": self.issuer + "/authorize",
                "token_endpoint": self.issuer + "/token",
                "jwks_uri": self.issuer + "/jwks",
                "userinfo_endpoint": self.issuer + "/userinfo",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if (
            q.get("response_type") != "code"
            or q.get("client_id") != self.client_id
            or q.get("code_challenge_method") != "S256"
            or "openid" not in q.get("scope", "").split()
            or not q.get("state")
        ):
            return web.Response(status=400, text="bad authorization request")
        code = secrets.token_urlsafe(16)
        self.grants[code] = Grant(
            self.client_id, q["redirect_uri"], q["code_challenge"], q["nonce"], dict(self.next_user)
        )
        location = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]})
        return web.Response(status=302, headers={"Location": location})

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        auth = request.headers.get("Authorization", "")
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if auth != f"Basic {expected}":
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self.grants.pop(str(form.get("code")), None)
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if (
            grant is None
            or form.get("grant_type") != "authorization_code"
            or form.get("redirect_uri") != grant.redirect_uri
            or challenge.rstrip(b"=").decode() != grant.challenge
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
            **grant.claims,
        }
        key = self.key
        tamper, self.tamper = self.tamper, None
        if tamper == "key":
            key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        elif tamper == "nonce":
            claims["nonce"] = "not-the-nonce"
        elif tamper == "aud":
            claims["aud"] = "another-client"
        elif tamper == "expired":
            claims["exp"] = now - 3600
        if tamper == "alg-none":
            header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
            import orjson

            body = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
            id_token = f"{header}.{body}."
        else:
            id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)
        access_token = secrets.token_urlsafe(16)
        self.access[access_token] = grant.claims
        return web.json_response(
            {"access_token": access_token, "token_type": "Bearer", "id_token": id_token}
        )

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self.key.as_dict(private=False)]})

    async def userinfo(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        claims = self.access.get(token)
        if claims is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response(claims)
