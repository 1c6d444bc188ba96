"""Single sign-on against a real OpenID Connect provider on loopback (tests/modules/
oidc_provider.py: discovery, code flow with PKCE, RS256 ID tokens, JWKS), the way
Element does it: GET /login lists the provider, the redirect goes there, the callback
hands a login token to the client, m.login.token logs in. Both engines."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from starling.storage import Database
from starling.storage.admin_users import AdminUserStore
from tests.modules.oidc_provider import OidcProvider
from tests.support.harness import Harness, make_harness

V3 = "/_matrix/client/v3"
APP = "https://app.example/after-login"


@pytest.fixture
async def provider() -> AsyncIterator[OidcProvider]:
    idp = OidcProvider()
    runner = web.AppRunner(idp.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    idp.issuer = f"http://127.0.0.1:{port}"
    try:
        yield idp
    finally:
        await runner.cleanup()


def oidc_config(idp: OidcProvider) -> dict[str, Any]:
    return {
        "oidc_providers": [
            {
                "idp_id": "test",
                "idp_name": "Test IdP",
                "issuer": idp.issuer,
                "client_id": idp.client_id,
                "client_secret": idp.client_secret,
                "scopes": ["openid", "profile"],
                "user_profile_method": "userinfo_endpoint",
                "idp_brand": "org.example",
                "idp_icon": "mxc://example.org/icon",
                "attribute_requirements": [{"attribute": "groups", "value": "staff"}],
                "user_mapping_provider": {
                    "module": "synapse.handlers.oidc.JinjaOidcMappingProvider",
                    "config": {
                        "localpart_template": "{{ user.preferred_username | lower }}",
                        "display_name_template": "{{ user.name }}",
                        "email_template": "{{ user.email }}",
                    }
                },
            }
        ],
        "sso": {"client_whitelist": ["https://app.example/"]},
        "rc_login": {k: {"per_second": 1000, "burst_count": 1000}
                     for k in ("address", "account", "failed_attempts")},
    }  # fmt: skip


async def sso(
    hs: Harness, idp: OidcProvider, user: dict[str, Any], *, redirect: str = APP,
    cookie: bool = True, replay: bool = False,
) -> tuple[int, str]:  # fmt: skip
    """One browser round trip: (the callback's status, its Location or page)."""
    idp.next_user = user
    async with hs.client.get(
        f"{V3}/login/sso/redirect/oidc-test",
        params={"redirectUrl": redirect},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 302, await resp.text()
        to_idp = resp.headers["Location"]
        session_cookie = resp.cookies["starling_oidc_session"].value
    assert to_idp.startswith(idp.issuer + "/authorize?")
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(to_idp, allow_redirects=False) as resp,
    ):
        assert resp.status == 302, await resp.text()
        back = urlsplit(resp.headers["Location"])
    assert back.path == "/_synapse/client/oidc/callback"
    hs.client.session.cookie_jar.clear()
    headers = {"Cookie": f"starling_oidc_session={session_cookie}"} if cookie else {}
    for _ in range(2 if replay else 1):
        async with hs.client.get(
            f"{back.path}?{back.query}", headers=headers, allow_redirects=False
        ) as resp:
            status, text = resp.status, await resp.text()
            location = resp.headers.get("Location")
    return status, location or text


async def token_login(hs: Harness, location: str) -> tuple[int, Any]:
    assert location.startswith(APP + "?")
    token = parse_qs(urlsplit(location).query)["loginToken"][0]
    return await hs.request("POST", f"{V3}/login", None, {"type": "m.login.token", "token": token})


async def test_sso_login_with_openid_connect(
    database: Database, tmp_path: Path, provider: OidcProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with make_harness(database, tmp_path, **oidc_config(provider)) as hs:
        try:
            status, body = await hs.request("GET", f"{V3}/login")
            assert {"type": "m.login.sso",
                    "identity_providers": [{"id": "oidc-test", "name": "Test IdP",
                    "icon": "mxc://example.org/icon", "brand": "org.example"}]} in body["flows"]  # fmt: skip
            assert {"type": "m.login.token"} in body["flows"]

            alice = {
                "sub": "u-1",
                "preferred_username": "Alice",
                "name": "Alice A.",
                "email": "Alice@X.org",
                "groups": ["staff", "dev"],
            }
            status, location = await sso(hs, provider, alice)
            assert status == 302, location
            status, body = await token_login(hs, location)
            assert status == 200, body
            assert body["user_id"] == f"@alice:{hs.server_name}"
            _, profile = await hs.request("GET", f"{V3}/profile/@alice:{hs.server_name}")
            assert profile["displayname"] == "Alice A."
            # A login token is good once.
            status, again = await token_login(hs, location)
            assert (status, again["errcode"]) == (403, "M_FORBIDDEN")
            # The same subject comes back to the same account, whatever its name now.
            status, location = await sso(hs, provider, {**alice, "preferred_username": "al"})
            _, body = await token_login(hs, location)
            assert body["user_id"] == f"@alice:{hs.server_name}"

            # Another subject claiming the same name and display name gets its own account;
            # so does one whose name is a local account's (no takeover by claims).
            await hs.register("bob")
            for claims, expected in [
                # The same e-mail address too: it stays alice's, nobody else's.
                (
                    {
                        "sub": "u-2",
                        "preferred_username": "alice",
                        "name": "Alice A.",
                        "email": "alice@x.org",
                        "groups": "staff",
                    },
                    "alice1",
                ),
                (
                    {
                        "sub": "u-3",
                        "preferred_username": "bob",
                        "email": "bob@x.org",
                        "groups": ["staff"],
                    },
                    "bob1",
                ),
            ]:
                status, location = await sso(hs, provider, claims)
                _, body = await token_login(hs, location)
                assert body["user_id"] == f"@{expected}:{hs.server_name}"

            emails = AdminUserStore(database)
            assert [t["address"] for t in await emails.threepids(f"@alice:{hs.server_name}")] == [
                "alice@x.org"
            ]
            assert await emails.threepids(f"@alice1:{hs.server_name}") == []

            # A client URL outside sso.client_whitelist: a page to confirm, no redirect.
            status, page = await sso(hs, provider, alice, redirect="https://evil.example/<x>")
            assert status == 200 and "evil.example" in page and "loginToken=" in page
            assert "<x>" not in page

            # Every broken ID token, a callback without the browser's cookie, and a state
            # used twice are refused, and no login token is made.
            for tamper in ("key", "nonce", "aud", "expired", "alg-none"):
                provider.tamper = tamper
                status, page = await sso(hs, provider, alice)
                assert status == 403 and "loginToken" not in page, tamper
            # Not in the required group; and, with registration off, only known subjects.
            status, page = await sso(hs, provider, {**alice, "sub": "u-9", "groups": ["guests"]})
            assert status == 403 and "not allowed" in page
            hs.services.config.oidc_providers[0].enable_registration = False
            status, page = await sso(hs, provider, {**alice, "sub": "u-10"})
            assert status == 403 and "new ones are not made" in page
            status, location = await sso(hs, provider, alice)
            assert status == 302 and "loginToken=" in location
            hs.services.config.oidc_providers[0].enable_registration = True
            status, page = await sso(hs, provider, alice, cookie=False)
            assert status == 403 and "another browser" in page
            requests = provider.token_requests
            status, page = await sso(hs, provider, alice, replay=True)
            assert status == 400 and "already used" in page
            assert provider.token_requests == requests + 1  # the replay never reached it

            # Bad client input: a Matrix error, not a 500.
            status, body = await hs.request("GET", f"{V3}/login/sso/redirect/oidc-test")
            assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
            status, body = await hs.request(
                "GET", f"{V3}/login/sso/redirect/nope", params={"redirectUrl": APP}
            )
            assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
            status, body = await hs.request(
                "GET",
                f"{V3}/login/sso/redirect/oidc-test",
                params={"redirectUrl": "javascript:alert(1)"},
            )
            assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
            async with hs.client.get("/_synapse/client/oidc/callback?state=x&code=y") as resp:
                assert resp.status == 400
        finally:
            await hs.services.sso.close()
    # Neither the client secret nor any login token reached a log.
    assert provider.client_secret not in caplog.text
    assert "loginToken=" not in caplog.text
