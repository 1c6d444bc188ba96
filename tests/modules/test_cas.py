"""Single sign-on through a CAS server (Synapse's `cas_config`) against a fake CAS server
on loopback: GET /login lists it (m.login.sso provider `cas`, and m.login.cas), the
redirect goes to <server>/login with our ticket URL as the service, the ticket is checked
at <server>/proxyValidate and the client gets a login token; a CAS-linked user confirms
an operation (user-interactive auth m.login.sso) by signing in again, and a sign-in as
anyone else spoils the session. Both engines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from aiohttp import web

from starling.accounts.cas import map_username_to_localpart
from starling.storage import Database
from tests.support.harness import Harness, make_harness

V3 = "/_matrix/client/v3"
APP = "https://app.example/after?x=1"


class FakeCas:
    """Tickets it vouches for: ticket -> (user, attributes); each only for one service."""

    def __init__(self) -> None:
        self.tickets: dict[str, tuple[str, dict[str, str]]] = {}
        self.services: list[str] = []
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/cas/proxyValidate", self.validate)
        return app

    async def validate(self, request: web.Request) -> web.Response:
        self.services.append(request.query["service"])
        found = self.tickets.pop(request.query.get("ticket", ""), None)
        if found is None:
            body = (
                "<cas:serviceResponse xmlns:cas='http://www.yale.edu/tp/cas'>"
                "<cas:authenticationFailure code='INVALID_TICKET'>no</cas:authenticationFailure>"
                "</cas:serviceResponse>"
            )
        else:
            user, attrs = found
            attributes = "".join(f"<cas:{k}>{v}</cas:{k}>" for k, v in attrs.items())
            body = (
                "<cas:serviceResponse xmlns:cas='http://www.yale.edu/tp/cas'>"
                f"<cas:authenticationSuccess><cas:user>{user}</cas:user>"
                f"<cas:attributes>{attributes}</cas:attributes>"
                "</cas:authenticationSuccess></cas:serviceResponse>"
            )
        return web.Response(text=body, content_type="text/xml")


@pytest.fixture
async def cas() -> AsyncIterator[FakeCas]:
    server = FakeCas()
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/cas"
    try:
        yield server
    finally:
        await runner.cleanup()


def cas_config(cas: FakeCas) -> dict[str, Any]:
    return {
        "public_baseurl": "https://hs.example/",
        "cas_config": {
            "enabled": True,
            "server_url": cas.url,
            "displayname_attribute": "name",
            "required_attributes": {"staff": None},
        },
    }


async def ticket_page(hs: Harness, path_query: str) -> tuple[int, str]:
    async with hs.client.get(path_query, allow_redirects=False) as resp:
        return resp.status, await resp.text()


async def cas_login(hs: Harness, cas: FakeCas, user: str, **attrs: str) -> tuple[int, Any]:
    """Redirect, CAS sign-in (a ticket), the ticket URL, then m.login.token."""
    async with hs.client.get(
        f"{V3}/login/sso/redirect", params={"redirectUrl": APP}, allow_redirects=False
    ) as resp:
        assert resp.status == 302, await resp.text()
        location = resp.headers["Location"]
    assert location.startswith(cas.url + "/login?service=")
    service = parse_qs(urlsplit(location).query)["service"][0]
    assert service == (
        "https://hs.example/_matrix/client/r0/login/cas/ticket?redirectUrl=" + quote(APP, safe="")
    )
    cas.tickets["T-" + user] = (user, {"staff": "yes", **attrs})
    parts = urlsplit(service)
    status, page = await ticket_page(hs, f"{parts.path}?{parts.query}&ticket=T-{user}")
    assert cas.services[-1] == service  # validated for the very same service URL
    if status != 200:
        return status, page
    token = page.split("loginToken=", 1)[1].split('"', 1)[0]
    return await hs.request("POST", f"{V3}/login", None, {"type": "m.login.token", "token": token})


def test_user_names_map_to_localparts_as_synapse() -> None:
    assert map_username_to_localpart("cas_user!") == "cas_user=21"
    assert map_username_to_localpart("Alice") == "alice"
    assert map_username_to_localpart("_x y") == "=5fx=20y"
    assert map_username_to_localpart("é") == "=c3=a9"


async def test_cas_login_and_interactive_auth(
    database: Database, tmp_path: Path, cas: FakeCas
) -> None:
    async with make_harness(database, tmp_path, **cas_config(cas)) as hs:
        status, body = await hs.request("GET", f"{V3}/login")
        assert status == 200
        assert {"type": "m.login.sso", "identity_providers": [{"id": "cas", "name": "CAS"}]} in (
            body["flows"]
        )
        assert {"type": "m.login.cas"} in body["flows"]

        # a new user: the CAS name mapped to a localpart, the display name from attributes
        status, body = await cas_login(hs, cas, "cas_user!", name="Cas User")
        assert status == 200, body
        assert body["user_id"] == f"@cas_user=21:{hs.server_name}"
        _, profile = await hs.request("GET", f"{V3}/profile/{quote(body['user_id'])}")
        assert profile["displayname"] == "Cas User"
        # the legacy redirect goes to the same place
        async with hs.client.get(
            f"{V3}/login/cas/redirect", params={"redirectUrl": APP}, allow_redirects=False
        ) as resp:
            assert resp.status == 302 and resp.headers["Location"].startswith(cas.url + "/login?")
        # a refused ticket, and a user without the required attribute
        status, page = await ticket_page(
            hs, f"{V3}/login/cas/ticket?redirectUrl={quote(APP, safe='')}&ticket=forged"
        )
        assert status == 403 and "did not accept" in page
        cas.tickets["T-x"] = ("mallory", {})
        status, page = await ticket_page(
            hs, f"{V3}/login/cas/ticket?redirectUrl={quote(APP, safe='')}&ticket=T-x"
        )
        assert status == 403 and "not allowed" in page

        # an existing account of that name: the CAS sign-in is that account (as Synapse)
        bob, bob_token = await hs.register("bob")
        status, body = await cas_login(hs, cas, "Bob")
        assert status == 200 and body["user_id"] == bob, body
        cas_device = body["device_id"]

        # UIA: bob may confirm with CAS; the ticket URL with the session completes it
        path = f"{V3}/devices/{cas_device}"
        status, body = await hs.request("DELETE", path, bob_token, {})
        assert status == 401 and {"stages": ["m.login.sso"]} in body["flows"], body
        session = body["session"]
        async with hs.client.get(
            f"{V3}/auth/m.login.sso/fallback/web", params={"session": session}
        ) as resp:
            assert resp.status == 200
            assert quote("login/cas/ticket?session=" + session, safe="") in await resp.text()
        cas.tickets["T-uia"] = ("Bob", {"staff": "yes"})  # the name CAS linked
        status, page = await ticket_page(
            hs, f"/_matrix/client/r0/login/cas/ticket?session={session}&ticket=T-uia"
        )
        assert status == 200 and "confirmed your identity" in page
        status, body = await hs.request("DELETE", path, bob_token, {"auth": {"session": session}})
        assert status == 200, body

        # someone else's CAS sign-in spoils the session: 403, nothing deleted
        status, body = await hs.request("DELETE", f"{V3}/devices/DEV", bob_token, {})
        session = body["session"]
        cas.tickets["T-other"] = ("cas_user!", {"staff": "yes"})
        status, page = await ticket_page(
            hs, f"{V3}/login/cas/ticket?session={session}&ticket=T-other"
        )
        assert status == 200 and "another user" in page
        status, body = await hs.request(
            "DELETE", f"{V3}/devices/DEV", bob_token, {"auth": {"session": session}}
        )
        assert status == 403, body
        assert (await hs.request("GET", f"{V3}/devices/DEV", bob_token))[0] == 200

        # a user who never signed in through CAS is offered the password only
        _, carol_token = await hs.register("carol")
        status, body = await hs.request("DELETE", f"{V3}/devices/DEV", carol_token, {})
        assert status == 401 and body["flows"] == [{"stages": ["m.login.password"]}], body
