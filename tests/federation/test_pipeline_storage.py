"""The receipt pipeline over the real event path (state calculator, persister, room locks)
on both engines: a room hosted by a fake remote server that our user joins through a
send_join answer, then PDUs pushed and pulled, checked by what a client sees (/sync,
/messages) and what the store holds."""

from __future__ import annotations

from typing import Any

from starling.federation.backfill import Backfiller
from starling.federation.event_handler import FederationEventHandler
from starling.federation.receipt.remote import RemoteEvents
from starling.federation.room_access import RoomAccess
from starling.protocol.event import Event
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS
from tests.federation.dag import Dag, FakeServer
from tests.federation.fakes import FakeKeyring, FakeRemote
from tests.support.harness import Harness

REMOTE = "remote.example"


class Room:
    """A remote-hosted room joined by a local user of `hs`."""

    def __init__(self, hs: Harness, rv: str = "10") -> None:
        self.hs = hs
        self.remote = FakeServer(REMOTE)
        self.local = FakeServer(hs.server_name)  # signs our join in the fake DAG
        self.dag = Dag(KNOWN_ROOM_VERSIONS[rv], [self.remote, self.local])
        self.alice = self.remote.user("alice")
        self.client = FakeRemote(self.dag)
        s = hs.services
        access = RoomAccess(s.event_store, s.state_store, s.membership_store)
        self.handler = FederationEventHandler(
            events=s.event_store,
            state=s.state_store,
            memberships=s.membership_store,
            calculator=s.state_calculator,
            persister=s.persister,
            locks=s.room_locks,
            keyring=FakeKeyring([self.remote, self.local]),
            remote=RemoteEvents(self.client),
            server_allowed=access.server_allowed,
        )

    async def join(self, localpart: str = "bob", history: int = 0) -> tuple[str, str]:
        self.dag.standard_room(self.alice)
        for i in range(history):
            self.dag.message(self.alice, f"old {i}")
        user_id, token = await self.hs.register(localpart)
        join = self.dag.join(user_id)
        state = self.dag.state_before(join)
        await self.handler.process_send_join_response(
            REMOTE,
            self.dag.room_id,
            self.dag.room_version,
            join,
            [dict(e.pdu) for e in self.dag.state_events(state)],
            [dict(e.pdu) for e in self.dag.auth_chain(state.values())],
        )
        return user_id, token

    async def push(self, event: Event) -> str | None:
        return await self.handler.on_send_pdu(REMOTE, dict(event.pdu))

    async def meta(self, event_id: str) -> Any:
        got = await self.hs.services.event_store.get_event(event_id)
        assert got is not None, event_id
        return got[1]


async def _timeline(hs: Harness, token: str, room_id: str) -> list[str]:
    status, body = await hs.request(
        "GET",
        f"/_matrix/client/v3/rooms/{room_id}/messages",
        token,
        params={"dir": "b", "limit": "50"},
    )
    assert status == 200, body
    return [e["event_id"] for e in reversed(body["chunk"])]


async def test_join_then_messages_both_checked(hs: Harness) -> None:
    room = Room(hs)
    _, token = await room.join()
    good = room.dag.message(room.alice, "hello")
    assert await room.push(good) is None
    mallory = room.dag.message(room.remote.user("mallory"), "sneaky", track=False)
    assert await room.push(mallory) is None
    assert (await room.meta(mallory.event_id)).rejected_reason
    timeline = await _timeline(hs, token, room.dag.room_id)
    assert good.event_id in timeline and mallory.event_id not in timeline
    assert await hs.services.event_store.get_forward_extremities(room.dag.room_id) == [
        good.event_id
    ]


async def test_soft_failed_ban_evasion_on_storage(hs: Harness) -> None:
    room = Room(hs)
    _, token = await room.join()
    carol = room.remote.user("carol")
    join = room.dag.join(carol)
    assert await room.push(join) is None
    ban = room.dag.add(room.alice, "m.room.member", {"membership": "ban"}, state_key=carol)
    assert await room.push(ban) is None
    evading = room.dag.message(carol, "still here", prev=[join.event_id], track=False)
    assert await room.push(evading) is None
    meta = await room.meta(evading.event_id)
    assert meta.soft_failed and meta.rejected_reason is None
    assert evading.event_id not in await _timeline(hs, token, room.dag.room_id)
    mallory = room.dag.message(room.remote.user("mallory"), "rejected", track=False)
    assert await room.push(mallory) is None
    status, body = await hs.request("GET", "/_matrix/client/v3/sync", token)
    assert status == 200, body
    synced = [e["event_id"] for e in body["rooms"]["join"][room.dag.room_id]["timeline"]["events"]]
    assert ban.event_id in synced
    assert evading.event_id not in synced and mallory.event_id not in synced
    assert await hs.services.event_store.get_forward_extremities(room.dag.room_id) == [ban.event_id]


async def test_missing_events_and_gap_on_storage(hs: Harness) -> None:
    room = Room(hs)
    _, token = await room.join()
    m1 = room.dag.message(room.alice, "1")
    m2 = room.dag.message(room.alice, "2")
    assert await room.push(m2) is None  # m1 comes through get_missing_events
    assert room.client.count("get_missing_events") == 1
    dave = room.remote.user("dave")
    dave_join = room.dag.join(dave)
    room.client.withheld.add(dave_join.event_id)
    m3 = room.dag.message(dave, "3")  # pulled; dave's join only through state_ids
    m4 = room.dag.message(room.alice, "4")
    assert await room.push(m4) is None
    assert room.client.count("state_ids") == 1
    assert (await room.meta(dave_join.event_id)).outlier
    timeline = await _timeline(hs, token, room.dag.room_id)
    assert timeline[-4:] == [m1.event_id, m2.event_id, m3.event_id, m4.event_id]
    state = await hs.services.state_store.get_current_state_ids(room.dag.room_id)
    assert state[("m.room.member", dave)] == dave_join.event_id


async def test_gap_fill_stops_at_our_own_dag(hs: Harness) -> None:
    """A join concurrent with a message we have: the remote's get_missing_events walk
    goes on past our join into the room's creation (it stops only at the `earliest` we
    named). Those events, held as outliers from the send_join state, stay outliers: no
    old state event is pulled into the timeline or becomes a forward extremity."""
    room = Room(hs)
    _, token = await room.join()
    store = hs.services.event_store
    room_id = room.dag.room_id
    (our_join,) = await store.get_forward_extremities(room_id)
    seen = room.dag.message(room.alice, "after our join")
    assert await room.push(seen) is None
    carol_join = room.dag.join(room.remote.user("carol"), prev=[our_join])  # never pushed
    merge = room.dag.message(room.alice, "both")
    assert set(merge.prev_event_ids) == {seen.event_id, carol_join.event_id}
    assert await room.push(merge) is None
    assert room.client.count("get_missing_events") == 1
    assert not (await room.meta(carol_join.event_id)).outlier
    assert await store.get_forward_extremities(room_id) == [merge.event_id]
    for key in (("m.room.create", ""), ("m.room.power_levels", "")):
        assert (await room.meta(room.dag.current_state()[key])).outlier, key
    timeline = await _timeline(hs, token, room_id)
    assert timeline[-3:] == [seen.event_id, carol_join.event_id, merge.event_id]


async def test_relayed_join_of_a_third_server_on_storage(hs: Harness) -> None:
    """The resident relays a join it accepted through send_join for a third server's
    user: it reaches the timeline and the next event cites it alone."""
    room = Room(hs)
    await room.join()
    third = FakeServer("third.example")
    room.dag.servers[third.name] = third
    room.handler._keyring.servers[third.name] = third  # type: ignore[attr-defined]
    join = room.dag.join(third.user("carol"))
    assert await room.push(join) is None
    meta = await room.meta(join.event_id)
    assert not meta.outlier and meta.rejected_reason is None and not meta.soft_failed
    assert room.client.count("get_missing_events") == 0
    assert await hs.services.event_store.get_forward_extremities(room.dag.room_id) == [
        join.event_id
    ]


async def test_backfill_on_storage(hs: Harness) -> None:
    room = Room(hs)
    _, token = await room.join(history=4)
    s = hs.services
    backfiller = Backfiller(
        hs.server_name, s.event_store, s.membership_store, RemoteEvents(room.client), room.handler
    )
    assert await backfiller.backfill(room.dag.room_id)
    timeline = await _timeline(hs, token, room.dag.room_id)
    bodies = []
    for eid in timeline:
        ev = room.dag.events.get(eid)
        if ev is not None and ev.type == "m.room.message":
            bodies.append(ev.content["body"])
    # History order in /messages is topological (fed-path); here: all of it is there.
    assert sorted(bodies) == [f"old {i}" for i in range(4)]
    for ev in room.dag.events.values():
        if ev.type == "m.room.message":
            meta = await room.meta(ev.event_id)
            assert meta.stream_ordering is not None and meta.stream_ordering < 0


async def test_messages_backfills_at_the_start_of_local_history(hs: Harness) -> None:
    """/messages that reaches the oldest event we hold asks the room's other servers."""
    room = Room(hs)
    inbound = hs.services.federation_inbound
    remote = RemoteEvents(room.client)
    # The server's own pipeline and backfiller, talking to the fake remote.
    inbound.events._remote = remote
    inbound.backfiller._remote = remote
    inbound.events._keyring = room.handler._keyring
    _, token = await room.join(history=3)
    timeline = await _timeline(hs, token, room.dag.room_id)
    bodies = [
        room.dag.events[eid].content.get("body")
        for eid in timeline
        if eid in room.dag.events and room.dag.events[eid].type == "m.room.message"
    ]
    assert bodies == ["old 0", "old 1", "old 2"]
    assert room.client.count("backfill") == 1


async def test_a_redaction_is_applied_only_by_its_targets_server_or_with_power(
    hs: Harness,
) -> None:
    """Room versions 3+: a redaction passes the auth rules whoever sends it, but only one
    from the target's sender's server, or by someone with the redact level, redacts."""
    room = Room(hs)
    bob, _token = await room.join()
    room_id = room.dag.room_id
    sent = await hs.services.room_events.send(
        room_id, bob, "m.room.message", {"msgtype": "m.text", "body": "mine"}, None
    )
    target = sent.event_id
    carol = room.remote.user("carol")
    assert await room.push(room.dag.join(carol)) is None
    fake = room.dag.add(carol, "m.room.redaction", {}, extra={"redacts": target})
    assert await room.push(fake) is None
    assert (await room.meta(fake.event_id)).rejected_reason is None  # in the DAG...
    assert (await room.meta(target)).redacted_by is None  # ...but not applied
    real = room.dag.add(room.alice, "m.room.redaction", {}, extra={"redacts": target})
    assert await room.push(real) is None  # alice holds the redact level
    assert (await room.meta(target)).redacted_by == real.event_id


async def test_a_redaction_of_another_rooms_event_is_rejected(hs: Harness) -> None:
    room = Room(hs)
    bob, token = await room.join()
    elsewhere = await hs.create_room(token)
    sent = await hs.services.room_events.send(
        elsewhere, bob, "m.room.message", {"msgtype": "m.text", "body": "there"}, None
    )
    forged = room.dag.add(room.alice, "m.room.redaction", {}, extra={"redacts": sent.event_id})
    assert await room.push(forged) is None
    assert "another room" in (await room.meta(forged.event_id)).rejected_reason
    assert (await room.meta(sent.event_id)).redacted_by is None
