"""/query/directory and /query/profile answer only about this server's own names."""

from __future__ import annotations

import pytest

from starling.errors import MatrixError
from starling.federation.queries import FederationQueries
from tests.support.harness import Harness


def _queries(hs: Harness) -> FederationQueries:
    s = hs.services
    return FederationQueries(hs.server_name, s.directory, s.profile)


async def test_directory_query(hs: Harness) -> None:
    _, token = await hs.register("alice")
    room_id = await hs.create_room(token, room_alias_name="lobby")
    answer = await _queries(hs).directory(f"#lobby:{hs.server_name}")
    assert answer["room_id"] == room_id and answer["servers"] == [hs.server_name]
    for alias in (f"#nope:{hs.server_name}", "#lobby:elsewhere.example"):
        with pytest.raises(MatrixError) as e:
            await _queries(hs).directory(alias)
        assert e.value.status == 404


async def test_profile_query(hs: Harness) -> None:
    user_id, token = await hs.register("bob")
    status, _ = await hs.request(
        "PUT", f"/_matrix/client/v3/profile/{user_id}/displayname", token, {"displayname": "Bob"}
    )
    assert status == 200
    q = _queries(hs)
    assert (await q.profile(user_id, None))["displayname"] == "Bob"
    assert await q.profile(user_id, "displayname") == {"displayname": "Bob"}
    # A field our user has not set: an empty answer, not a 404 (as Synapse answers; it asks
    # for the invitee's avatar_url on every invite and logs a failed request otherwise).
    assert await q.profile(user_id, "avatar_url") == {}
    for args, status in (
        ((user_id, "password"), 400),
        ((f"@nobody:{hs.server_name}", None), 404),
        (("@bob:elsewhere.example", None), 404),
    ):
        with pytest.raises(MatrixError) as e:
            await q.profile(*args)
        assert e.value.status == status
