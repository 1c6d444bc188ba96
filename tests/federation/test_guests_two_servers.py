"""A guest of one server invited to a room of another (two real `starling serve`
processes, tests/federation/harness.py): the guest's server cannot read the room's state
before joining, so it admits the guest only when the invite's stripped state shows the
room's m.room.guest_access as can_join (spec: Guest access; Starling's invites carry it)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from tests.federation.harness import User, federation_servers
from tests.support.dbfixtures import ENGINES

pytestmark = pytest.mark.integration

V3 = "/_matrix/client/v3"


@pytest.mark.parametrize("engine", ENGINES)
async def test_invited_guests_join_remote_rooms_only_if_they_admit_guests(
    engine: str, tmp_path: Path
) -> None:
    async with federation_servers(
        tmp_path, 2, engine=engine, extra_config={"allow_guest_access": True}
    ) as (a, b):
        alice = await a.register("alice")

        async def guest() -> User:
            status, body = await b.client_request("POST", f"{V3}/register?kind=guest", None, {})
            assert status == 200, body
            return User(body["user_id"], body["access_token"], body["device_id"])

        async def join(user: User, room: str) -> tuple[int, dict[str, object]]:
            return await b.client_request("POST", f"{V3}/join/{quote(room)}", user.token, {})

        async def guest_access(value: str) -> None:
            status, body = await a.client_request(
                "PUT",
                f"{V3}/rooms/{quote(room)}/state/m.room.guest_access",
                alice.token,
                {"guest_access": value},
            )
            assert status == 200, body

        room = await a.create_room(alice, preset="private_chat")  # guest_access can_join
        await guest_access("forbidden")
        # the invite says guests are forbidden: refused before any join is made
        shut_out = await guest()
        await a.invite(alice, room, shut_out.user_id)
        status, body = await join(shut_out, room)
        assert status == 403 and body["errcode"] == "M_GUEST_ACCESS_FORBIDDEN", body

        await guest_access("can_join")
        welcome = await guest()
        await a.invite(alice, room, welcome.user_id)
        status, body = await join(welcome, room)
        assert status == 200 and body["room_id"] == room, (body, b.log_tail())
        # b is in the room now: another guest meets the room's own rules (invite only)
        status, body = await join(await guest(), room)
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
