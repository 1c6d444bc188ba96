"""An erased user's events go to other servers redacted (two real `starling serve`
processes, tests/federation/harness.py; Synapse's rule for erased senders): GET /event
serves the full event before the erasure and the redacted form after it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.federation.harness import User, federation_servers, signed_request
from tests.support.dbfixtures import ENGINES

pytestmark = pytest.mark.integration

V3 = "/_matrix/client/v3"
PASSWORD = "pw-" + "x" * 8


@pytest.mark.parametrize("engine", ENGINES)
async def test_other_servers_get_an_erased_users_events_redacted(
    engine: str, tmp_path: Path
) -> None:
    async with federation_servers(tmp_path, 2, engine=engine) as (a, b):
        alice = await a.register("alice", PASSWORD)
        bob = await a.register("bob")  # keeps a in the room once alice is gone
        carol = await b.register("carol")
        room = await a.create_room(alice, preset="public_chat")
        await a.join(bob, room)
        await b.join(carol, room, via=[a.server_name])
        event_id = await a.send_message(alice, room, "body1")
        path = f"/_matrix/federation/v1/event/{event_id}"  # as yarl sends it: $ unquoted

        async def fetched() -> dict[str, Any]:
            status, body = await signed_request(
                a, "GET", path, origin=b.server_name, key=b.signing_key()
            )
            assert status == 200, (body, a.log_tail())
            (pdu,) = body["pdus"]
            content: dict[str, Any] = pdu["content"]
            return content

        assert (await fetched())["body"] == "body1"

        async def deactivate(user: User, body: dict[str, Any]) -> tuple[int, Any]:
            return await a.client_request("POST", f"{V3}/account/deactivate", user.token, body)

        auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": alice.user_id},
            "password": PASSWORD,
        }
        status, body = await deactivate(alice, {"erase": True})
        assert status == 401 and "session" in body, body
        status, body = await deactivate(
            alice, {"erase": True, "auth": {**auth, "session": body["session"]}}
        )
        assert status == 200, body
        assert await fetched() == {}
