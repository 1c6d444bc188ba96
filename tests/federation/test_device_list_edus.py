"""m.device_list_update / m.signing_key_update with fakes (who is sent what, prev_id
chains, inbound only for users sharing a room), and RemoteKeys refusing keys a server
hands out under names that are not its own."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from starling.e2ee.federation_keys import RemoteKeys
from starling.federation.device_lists import DeviceListFederation
from starling.federation.edu import EduRegistry
from starling.storage import Database
from starling.storage.remote_device_lists import DeviceListOutboxStore

ALICE = "@alice:here.test"
BOB = "@bob:remote.test"


class Fakes:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.marked: list[str] = []
        self.heads = {}
        self.sharing: dict[str, set[str]] = {
            ALICE: {BOB, "@carol:other.test", "@dan:here.test"},
            BOB: {ALICE},
        }

    def send_edu(self, destination: str, edu_type: str, content: dict[str, Any]) -> None:
        self.sent.append((destination, edu_type, content))

    async def users_sharing(self, user_id: str) -> set[str]:
        return self.sharing.get(user_id, set())

    async def keys_of(self, requester: str, wanted: Mapping[str, list[str]]) -> dict[str, Any]:
        devices = {
            d: {
                "user_id": ALICE,
                "device_id": d,
                "keys": {f"ed25519:{d}": "k"},
                "unsigned": {"device_display_name": "phone"},
            }
            for d in wanted.get(ALICE, [])
        }
        return {
            "device_keys": {ALICE: devices},
            "master_keys": {ALICE: {"user_id": ALICE, "usage": ["master"], "keys": {}}},
            "self_signing_keys": {},
        }

    async def mark(self, user_id: str) -> None:
        self.marked.append(user_id)

    # The stored chain heads (they outlive a DeviceListFederation: a restart).
    heads: dict[str, int]

    async def outbound_head(self, user_id: str) -> int | None:
        return self.heads.get(user_id)

    async def set_outbound_head(self, user_id: str, stream_id: int) -> None:
        self.heads[user_id] = stream_id

    def federation(self) -> DeviceListFederation:
        return DeviceListFederation(
            "here.test", self, self.users_sharing, self.keys_of, self.mark, self
        )


async def settle(fed: DeviceListFederation) -> None:
    while fed._tasks:
        await asyncio.gather(*fed._tasks)


async def test_updates_go_to_servers_sharing_a_room_with_a_prev_id_chain() -> None:
    fakes = Fakes()
    fed = fakes.federation()
    fed.on_change(ALICE, ["PHONE"], False, 10)
    await settle(fed)
    fed.on_change(ALICE, ["OLD"], True, 12)
    await settle(fed)
    fed.on_change(BOB, ["X"], False, 13)  # another server's user: not ours to send
    await settle(fed)
    assert [(d, t) for d, t, _ in fakes.sent] == [
        ("other.test", "m.device_list_update"),
        ("remote.test", "m.device_list_update"),
        ("other.test", "m.device_list_update"),
        ("remote.test", "m.device_list_update"),
    ]
    first, second = fakes.sent[0][2], fakes.sent[2][2]
    assert first == {
        "user_id": ALICE,
        "device_id": "PHONE",
        "stream_id": 10,
        "prev_id": [],
        "deleted": False,
        "keys": {"user_id": ALICE, "device_id": "PHONE", "keys": {"ed25519:PHONE": "k"}},
        "device_display_name": "phone",
    }
    assert second["prev_id"] == [10] and second["deleted"] and "keys" not in second
    # After a restart the chain goes on from the stored head.
    fakes.sent.clear()
    fed = fakes.federation()
    fed.on_change(ALICE, ["TABLET"], False, 20)
    await settle(fed)
    assert [c["prev_id"] for _, _, c in fakes.sent] == [[12], [12]]
    # A change told twice is sent once.
    fakes.sent.clear()
    fed.on_change(ALICE, ["TABLET"], False, 20)
    await settle(fed)
    assert fakes.sent == []


async def test_cross_signing_changes_send_signing_key_updates() -> None:
    fakes = Fakes()
    fed = fakes.federation()
    fed.on_change(ALICE, [], False, 3)
    await settle(fed)
    assert {(d, t) for d, t, _ in fakes.sent} == {
        ("other.test", "m.signing_key_update"),
        ("remote.test", "m.signing_key_update"),
    }
    assert fakes.sent[0][2]["master_key"]["usage"] == ["master"]


async def test_inbound_updates_mark_users_sharing_a_room_only() -> None:
    fakes = Fakes()
    fed = fakes.federation()
    registry = EduRegistry()
    registry.register("m.device_list_update", fed.on_device_list_update)
    registry.register("m.signing_key_update", fed.on_signing_key_update)
    update = {"user_id": BOB, "device_id": "D", "stream_id": 5, "prev_id": [99]}
    await registry.dispatch("remote.test", {"edu_type": "m.device_list_update", "content": update})
    await registry.dispatch(
        "remote.test", {"edu_type": "m.signing_key_update", "content": {"user_id": BOB}}
    )
    assert fakes.marked == [BOB, BOB]
    fakes.marked.clear()
    for origin, content in [
        ("remote.test", {"user_id": "@stranger:remote.test", "device_id": "D"}),  # no room
        ("evil.test", update),  # names another server's user
        ("remote.test", {"user_id": 5}),
    ]:
        await registry.dispatch(origin, {"edu_type": "m.device_list_update", "content": content})
    assert fakes.marked == []


class FakeCache:
    def __init__(self) -> None:
        self.updates: list[str] = []

    async def device_list_update(self, content: Mapping[str, Any]) -> None:
        self.updates.append("device")

    async def signing_key_update(self, content: Mapping[str, Any]) -> None:
        self.updates.append("signing")


async def test_with_a_cache_the_cache_announces_the_change() -> None:
    """With the remote device-list cache, an inbound update is the cache's to announce
    (once it holds it: applied, or resynced), not marked on arrival."""
    fakes = Fakes()
    cache = FakeCache()
    fed = DeviceListFederation(
        "here.test", fakes, fakes.users_sharing, fakes.keys_of, fakes.mark, fakes, cache
    )
    update = {"user_id": BOB, "device_id": "D", "stream_id": 5, "prev_id": [99]}
    await fed.on_device_list_update("remote.test", update)
    await fed.on_signing_key_update("remote.test", {"user_id": BOB})
    assert cache.updates == ["device", "signing"]
    assert fakes.marked == []
    # A user nobody here shares a room with: not even the cache hears of it.
    await fed.on_device_list_update("remote.test", {**update, "user_id": "@x:remote.test"})
    assert cache.updates == ["device", "signing"]


class FakePoster:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str, Any, float]] = []

    async def post_json(
        self, destination: str, path: str, body: Any, *, timeout: float = 60.0
    ) -> Any:
        self.calls.append((destination, path, body, timeout))
        return self.answer


async def test_remote_keys_are_taken_only_under_their_own_names() -> None:
    good = {"user_id": BOB, "device_id": "D", "keys": {}}
    poster = FakePoster(
        {
            "device_keys": {
                BOB: {"D": good, "E": {"user_id": "@eve:remote.test", "device_id": "E"}},
                "@eve:remote.test": {"D": {"user_id": "@eve:remote.test", "device_id": "D"}},
            },
            "master_keys": {BOB: {"user_id": "@eve:remote.test"}},
        }
    )
    answer = await RemoteKeys(poster).query_keys("remote.test", {BOB: []}, 500_000)
    assert answer == {"device_keys": {BOB: {"D": good}}, "master_keys": {}}
    assert poster.calls[0][1] == "/_matrix/federation/v1/user/keys/query"
    assert poster.calls[0][3] == 60.0  # the client's timeout, capped
    claimed = await RemoteKeys(
        FakePoster({"one_time_keys": {BOB: {"D": {"k:1": {}}, "Z": {"k:2": {}}}, "@x:y.test": {}}})
    ).claim_keys("remote.test", {BOB: {"D": "k"}}, 2_000)
    assert claimed == {"one_time_keys": {BOB: {"D": {"k:1": {}}}}}


async def test_updates_wait_in_the_outbox_until_delivered(database: Database) -> None:
    fakes = Fakes()
    woken: list[str] = []
    outbox = DeviceListOutboxStore(database)
    fed = DeviceListFederation(
        "here.test",
        fakes,
        fakes.users_sharing,
        fakes.keys_of,
        fakes.mark,
        fakes,
        outbox=outbox,
        wake=woken.append,
    )
    fed.on_change(ALICE, ["PHONE"], False, 10)
    await settle(fed)
    fed.on_change(ALICE, [], False, 11)  # cross-signing keys
    await settle(fed)
    assert fakes.sent == []  # nothing in the sender's memory
    assert sorted(set(woken)) == ["other.test", "remote.test"]
    assert await fed.destinations_pending() == ["other.test", "remote.test"]
    edus, upto = await fed.pending("remote.test", 10)
    assert [e["edu_type"] for e in edus] == ["m.device_list_update", "m.signing_key_update"]
    assert edus[0]["content"]["device_id"] == "PHONE" and upto == 11
    # A limit, then delivery up to a position.
    edus, upto = await fed.pending("other.test", 1)
    assert len(edus) == 1 and upto == 10
    await fed.delivered("other.test", upto)
    edus, upto = await fed.pending("other.test", 10)
    assert [e["edu_type"] for e in edus] == ["m.signing_key_update"] and upto == 11
    await fed.delivered("other.test", upto)
    await fed.delivered("remote.test", 11)
    assert await fed.destinations_pending() == []


async def test_an_overtaken_update_goes_out_under_a_fresh_position() -> None:
    fakes = Fakes()
    fresh = iter([30])

    async def new_position() -> int:
        return next(fresh)

    fed = DeviceListFederation(
        "here.test",
        fakes,
        fakes.users_sharing,
        fakes.keys_of,
        fakes.mark,
        fakes,
        new_position=new_position,
    )
    # Position 21 committed (and was told) before 20.
    fed.on_change(ALICE, ["TABLET"], False, 21)
    await settle(fed)
    fed.on_change(ALICE, ["PHONE"], False, 20)
    await settle(fed)
    sent = [c for d, _, c in fakes.sent if d == "remote.test"]
    assert [(c["device_id"], c["stream_id"], c["prev_id"]) for c in sent] == [
        ("TABLET", 21, []),
        ("PHONE", 30, [21]),
    ]
    assert fakes.heads[ALICE] == 30
