"""Room summaries (spec v1.15 GET /_matrix/client/v1/room_summary/{roomIdOrAlias}, MSC3266,
and the MSC's unstable paths), on both engines: fields, membership, by alias, who may see
what (members, public and knockable rooms, world-readable history, unauthenticated
callers), errors."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.support.harness import Harness

V1 = "/_matrix/client/v1"
UNSTABLE = "/_matrix/client/unstable/im.nheko.summary"


async def get(hs: Harness, path: str, token: str | None) -> tuple[int, Any]:
    return await hs.request("GET", path, token)


async def test_summary_fields_alias_and_access(hs: Harness) -> None:
    _, atok = await hs.register()
    bob, btok = await hs.register()
    public = await hs.create_room(
        atok,
        preset="public_chat",
        name="Cheese",
        topic="Tasty",
        room_alias_name="cheese",
        initial_state=[
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
        ],
    )
    private = await hs.create_room(atok, preset="private_chat", name="Secret")
    status, body = await get(hs, f"{V1}/room_summary/{quote(public)}", atok)
    assert status == 200, body
    assert body["room_id"] == public and body["name"] == "Cheese" and body["topic"] == "Tasty"
    assert body["canonical_alias"] == f"#cheese:{hs.server_name}"
    assert body["num_joined_members"] == 1 and body["join_rule"] == "public"
    assert body["encryption"] == "m.megolm.v1.aes-sha2" and body["membership"] == "join"
    assert body["world_readable"] is False and body["guest_can_join"] is False
    assert isinstance(body["room_version"], str) and "children_state" not in body

    # By alias, for a non-member (leave), and at both unstable paths with the MSC's fields.
    alias = quote(f"#cheese:{hs.server_name}")
    status, by_alias = await get(hs, f"{V1}/room_summary/{alias}", btok)
    assert status == 200 and by_alias["room_id"] == public and by_alias["membership"] == "leave"
    for path in (f"{UNSTABLE}/summary/{alias}", f"{UNSTABLE}/rooms/{quote(public)}/summary"):
        status, old = await get(hs, path, btok)
        assert status == 200, old
        assert old["im.nheko.summary.room_version"] == old["room_version"]
        assert old["im.nheko.summary.encryption"] == "m.megolm.v1.aes-sha2"

    # Unauthenticated: public rooms only, without membership.
    status, anon = await get(hs, f"{V1}/room_summary/{quote(public)}", None)
    assert status == 200 and "membership" not in anon
    # A private room: 404 for outsiders and unauthenticated callers, seen once invited.
    for token in (btok, None):
        status, err = await get(hs, f"{V1}/room_summary/{quote(private)}", token)
        assert (status, err["errcode"]) == (404, "M_NOT_FOUND"), err
    status, _ = await hs.request(
        "POST", f"/_matrix/client/v3/rooms/{quote(private)}/invite", atok, {"user_id": bob}
    )
    assert status == 200
    status, invited = await get(hs, f"{V1}/room_summary/{quote(private)}", btok)
    assert status == 200 and invited["membership"] == "invite" and invited["name"] == "Secret"

    # Bad input: not an ID or alias, an unknown alias or room, a bad via.
    for target, code in (
        ("nonsense", "M_INVALID_PARAM"),
        (quote(f"#nope:{hs.server_name}"), "M_NOT_FOUND"),
        (quote(f"!nope:{hs.server_name}"), "M_NOT_FOUND"),
    ):
        status, err = await get(hs, f"{V1}/room_summary/{target}", atok)
        assert status in (400, 404) and err["errcode"] == code, (target, err)
    status, err = await hs.request(
        "GET", f"{V1}/room_summary/{quote(public)}", atok, params={"via": "bad server!"}
    )
    assert status == 400 and err["errcode"] == "M_INVALID_PARAM"


async def test_versions_advertise_msc3266(hs: Harness) -> None:
    status, body = await get(hs, "/_matrix/client/versions", None)
    assert status == 200 and body["unstable_features"]["org.matrix.msc3266"] is True
