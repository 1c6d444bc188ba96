"""3PID binds/unbinds through identity servers and third-party invites, against a small
fake identity server served over TLS on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import argon2
import pytest
from aiohttp import web

from starling.errors import MatrixError
from starling.identity.client import IdentityServerClient, lookup_hash
from starling.protocol.signing import SigningKey, sign_json
from tests.federation.tls_servers import pki_for, tls_app
from tests.support.harness import Harness

V3 = "/_matrix/client/v3"
EMAIL = "lemurs@monkeyworld.org"
PEPPER = "matrixrocks"


class FakeIdentityServer:
    def __init__(self) -> None:
        self.key = SigningKey.generate("0")
        self.bindings: dict[tuple[str, str], str] = {}
        self.sessions: dict[str, tuple[str, str]] = {"sid1": ("email", EMAIL)}
        self.valid = True
        self.name = ""
        self.unbind_auth: list[str] = []

    async def hash_details(self, request: web.Request) -> web.Response:
        return web.json_response({"algorithms": ["sha256"], "lookup_pepper": PEPPER})

    async def lookup(self, request: web.Request) -> web.Response:
        body = await request.json()
        hashes = {lookup_hash(m, a, PEPPER): mxid for (m, a), mxid in self.bindings.items()}
        found = {h: hashes[h] for h in body["addresses"] if h in hashes}
        return web.json_response({"mappings": found})

    async def bind(self, request: web.Request) -> web.Response:
        body = await request.json()
        if request.headers.get("Authorization") != "Bearer istoken":
            return web.json_response({"errcode": "M_UNAUTHORIZED"}, status=401)
        medium, address = self.sessions[body["sid"]]
        self.bindings[(medium, address)] = body["mxid"]
        return web.json_response({"medium": medium, "address": address, "mxid": body["mxid"]})

    async def unbind(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.unbind_auth.append(request.headers.get("Authorization", ""))
        key = (body["threepid"]["medium"], body["threepid"]["address"])
        if self.bindings.get(key) != body["mxid"]:
            return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)
        del self.bindings[key]
        return web.json_response({})

    async def store_invite(self, request: web.Request) -> web.Response:
        url = f"https://{self.name}/_matrix/identity/v2/pubkey/isvalid"
        public = self.key.verify_key.base64
        return web.json_response(
            {
                "token": "tok1",
                "display_name": "Bob",
                "public_keys": [{"public_key": public, "key_validity_url": url}],
            }
        )

    async def isvalid(self, request: web.Request) -> web.Response:
        return web.json_response({"valid": self.valid})

    def app(self) -> web.Application:
        app = web.Application()
        v2 = "/_matrix/identity/v2"
        app.router.add_get(f"{v2}/hash_details", self.hash_details)
        app.router.add_post(f"{v2}/lookup", self.lookup)
        app.router.add_post(f"{v2}/3pid/bind", self.bind)
        app.router.add_post(f"{v2}/3pid/unbind", self.unbind)
        app.router.add_post(f"{v2}/store-invite", self.store_invite)
        app.router.add_get(f"{v2}/pubkey/isvalid", self.isvalid)
        return app


@pytest.fixture
async def idserver(hs: Harness, tmp_path: Path) -> AsyncIterator[FakeIdentityServer]:
    fake = FakeIdentityServer()
    async with tls_app(fake.app(), pki_for(tmp_path)) as port:
        fake.name = f"localhost:{port}"
        service = hs.services.threepids
        old = service.client
        # The test CA is not trusted and 127.0.0.1 is blacklisted by default: a client
        # for this test server only.
        service.client = IdentityServerClient(
            hs.server_name, hs.services.signing_key, address_policy=None, verify_certificates=False
        )
        try:
            yield fake
        finally:
            await service.client.close()
            service.client = old


async def test_bind_unbind_and_deactivation(hs: Harness, idserver: FakeIdentityServer) -> None:
    alice, token = await hs.register("alice")
    bind = {"id_server": idserver.name, "id_access_token": "istoken", "sid": "sid1"}
    status, resp = await hs.request(
        "POST", f"{V3}/account/3pid/bind", token, {**bind, "client_secret": "s"}
    )
    assert (status, resp) == (200, {})
    assert idserver.bindings == {("email", EMAIL): alice}
    status, resp = await hs.request(
        "POST",
        f"{V3}/account/3pid/bind",
        token,
        {**bind, "client_secret": "s", "id_access_token": "bad"},
    )
    assert (status, resp["errcode"]) == (401, "M_UNAUTHORIZED")
    for bad in ("evil.example/x?", "https://evil.example", ""):
        status, resp = await hs.request(
            "POST",
            f"{V3}/account/3pid/bind",
            token,
            {**bind, "client_secret": "s", "id_server": bad},
        )
        assert status == 400, (bad, resp)
    # Unbind without naming the server: the one it was bound on, signed by this server.
    unbind = {"medium": "email", "address": EMAIL}
    status, resp = await hs.request("POST", f"{V3}/account/3pid/unbind", token, unbind)
    assert (status, resp) == (200, {"id_server_unbind_result": "success"})
    assert idserver.bindings == {}
    assert idserver.unbind_auth[-1].startswith("X-Matrix ")
    status, resp = await hs.request("POST", f"{V3}/account/3pid/delete", token, unbind)
    assert (status, resp) == (200, {"id_server_unbind_result": "no-support"})
    # Bound out of band: unbound when the client names the server.
    idserver.bindings[("email", EMAIL)] = alice
    named = {**unbind, "id_server": idserver.name}
    status, resp = await hs.request("POST", f"{V3}/account/3pid/delete", token, named)
    assert (status, resp) == (200, {"id_server_unbind_result": "success"})
    # Deactivation unbinds what was bound through us.
    status, _ = await hs.request(
        "POST", f"{V3}/account/3pid/bind", token, {**bind, "client_secret": "s"}
    )
    assert status == 200
    assert await hs.services.threepids.unbind_all(alice, None) == "success"
    assert idserver.bindings == {}
    # POST /account/deactivate (after its user-interactive auth) unbinds before it
    # deactivates.
    status, _ = await hs.request(
        "POST", f"{V3}/account/3pid/bind", token, {**bind, "client_secret": "s"}
    )
    assert status == 200 and idserver.bindings == {("email", EMAIL): alice}
    cheap = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    await hs.services.account_store.set_password_hash(alice, cheap.hash("pw"))
    status, resp = await hs.request("POST", f"{V3}/account/deactivate", token, {})
    assert status == 401 and idserver.bindings != {}  # nothing unbound before the auth
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": alice},
        "password": "pw",
        "session": resp["session"],
    }
    status, resp = await hs.request("POST", f"{V3}/account/deactivate", token, {"auth": auth})
    assert (status, resp) == (200, {"id_server_unbind_result": "success"})
    assert idserver.bindings == {}
    user = await hs.services.account_store.get_user(alice)
    assert user is not None and user.deactivated


async def test_third_party_invites(hs: Harness, idserver: FakeIdentityServer) -> None:
    alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room = await hs.create_room(atok, preset="private_chat")
    invite = {
        "id_server": idserver.name,
        "id_access_token": "istoken",
        "medium": "email",
        "address": EMAIL,
    }
    # Unbound: the identity server stores it; the room gets its keys under its token.
    status, resp = await hs.request("POST", f"{V3}/rooms/{room}/invite", atok, invite)
    assert (status, resp) == (200, {}), resp
    state = await hs.services.room_events.current_state_events(room)
    tpi = state[("m.room.third_party_invite", "tok1")]
    assert tpi.sender == alice and tpi.content["display_name"] == "Bob"
    assert tpi.content["public_key"] == idserver.key.verify_key.base64

    def onbind(signed_by: SigningKey) -> dict[str, Any]:
        signed = sign_json({"mxid": bob, "token": "tok1"}, idserver.name, signed_by)
        entry = {"mxid": bob, "room_id": room, "sender": alice, "token": "tok1", "signed": signed}
        return {"medium": "email", "address": EMAIL, "mxid": bob, "invites": [entry]}

    # /3pid/onbind (a federation-listener route; the harness serves the client API).
    on_bind = hs.services.threepids.on_bind
    # Signed by a key the invite does not list, or by a key no longer valid: refused.
    with pytest.raises(MatrixError) as refused:
        await on_bind(onbind(SigningKey.generate("1")))
    assert (refused.value.status, refused.value.errcode) == (403, "M_FORBIDDEN")
    idserver.valid = False
    with pytest.raises(MatrixError) as refused:
        await on_bind(onbind(idserver.key))
    assert refused.value.errcode == "M_FORBIDDEN"
    state = await hs.services.room_events.current_state_events(room)
    assert ("m.room.member", bob) not in state
    with pytest.raises(MatrixError):  # only for users of this server
        await on_bind({**onbind(idserver.key), "mxid": "@bob:elsewhere.test"})
    idserver.valid = True
    await on_bind(onbind(idserver.key))
    member = (await hs.services.room_events.current_state_events(room))[("m.room.member", bob)]
    assert member.membership == "invite" and member.sender == alice
    assert member.content["third_party_invite"]["display_name"] == "Bob"
    # Other keys of a join's body go into the member event (as Synapse).
    status, _ = await hs.request("POST", f"{V3}/rooms/{room}/join", btok, {"foo": "bar"})
    assert status == 200
    joined = (await hs.services.room_events.current_state_events(room))[("m.room.member", bob)]
    assert joined.membership == "join" and joined.content["foo"] == "bar"
    # /join with third_party_signed: the signed invite is checked and becomes the invite.
    dave, dtok = await hs.register("dave")
    signed = sign_json({"mxid": dave, "sender": alice, "token": "tok1"}, "is", idserver.key)
    forged = sign_json(
        {"mxid": dave, "sender": alice, "token": "tok1"}, "is", SigningKey.generate()
    )
    status, resp = await hs.request(
        "POST", f"{V3}/rooms/{room}/join", dtok, {"third_party_signed": forged}
    )
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
    status, resp = await hs.request(
        "POST", f"{V3}/rooms/{room}/join", dtok, {"third_party_signed": signed}
    )
    assert status == 200, resp
    joined = (await hs.services.room_events.current_state_events(room))[("m.room.member", dave)]
    assert joined.membership == "join"
    # A bound address is an ordinary invite of its Matrix ID.
    carol, _ = await hs.register("carol")
    idserver.bindings[("email", "carol@example.org")] = carol
    status, _ = await hs.request(
        "POST", f"{V3}/rooms/{room}/invite", atok, {**invite, "address": "carol@example.org"}
    )
    assert status == 200
    state = await hs.services.room_events.current_state_events(room)
    assert state[("m.room.member", carol)].membership == "invite"
    # createRoom's invite_3pid is checked before the room is made.
    status, resp = await hs.request(
        "POST", f"{V3}/createRoom", atok, {"invite_3pid": [{"medium": 1}]}
    )
    assert (status, resp["errcode"]) == (400, "M_BAD_JSON")
    # createRoom's invite_3pid: each entry is a 3PID invite once the room is made.
    both = [invite, {**invite, "address": "carol@example.org"}]
    status, resp = await hs.request("POST", f"{V3}/createRoom", atok, {"invite_3pid": both})
    assert status == 200, resp
    state = await hs.services.room_events.current_state_events(resp["room_id"])
    assert state[("m.room.third_party_invite", "tok1")].sender == alice
    assert state[("m.room.member", carol)].membership == "invite"
    # A shadow-banned creator's room is made; its invites reach nobody.
    await hs.services.admin_users.set_shadow_banned(alice, True)
    status, resp = await hs.request("POST", f"{V3}/createRoom", atok, {"invite_3pid": both})
    assert status == 200, resp
    state = await hs.services.room_events.current_state_events(resp["room_id"])
    assert ("m.room.third_party_invite", "tok1") not in state
    assert ("m.room.member", carol) not in state


async def test_the_accounts_own_threepids_are_listed_and_deleted(hs: Harness) -> None:
    # One source of an account's 3PIDs: what an admin sets (or an external login
    # records) is what GET /account/3pid lists and /account/3pid/delete removes.
    alice, token = await hs.register("alice")
    _, bob_token = await hs.register("bob")
    _, root = await hs.register("root", admin=True)
    status, resp = await hs.request("GET", f"{V3}/account/3pid", token)
    assert (status, resp) == (200, {"threepids": []})
    threepids = [{"medium": "email", "address": EMAIL}]
    status, resp = await hs.request(
        "PUT", f"/_synapse/admin/v2/users/{alice}", root, {"threepids": threepids}
    )
    assert status == 200, resp
    status, resp = await hs.request("GET", f"{V3}/account/3pid", token)
    assert status == 200
    [entry] = resp["threepids"]
    assert (entry["medium"], entry["address"]) == ("email", EMAIL)
    assert isinstance(entry["validated_at"], int) and isinstance(entry["added_at"], int)
    # Another user cannot delete it from alice's account.
    unbind = {"medium": "email", "address": EMAIL}
    status, _ = await hs.request("POST", f"{V3}/account/3pid/delete", bob_token, unbind)
    assert status == 200
    status, resp = await hs.request("GET", f"{V3}/account/3pid", token)
    assert len(resp["threepids"]) == 1
    # Bound to no identity server through us: removed, nothing to unbind.
    status, resp = await hs.request("POST", f"{V3}/account/3pid/delete", token, unbind)
    assert (status, resp) == (200, {"id_server_unbind_result": "no-support"})
    status, resp = await hs.request("GET", f"{V3}/account/3pid", token)
    assert (status, resp) == (200, {"threepids": []})
