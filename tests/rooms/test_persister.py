"""The one persister (DESIGN §6): hand-built DAGs through `persist(event, context)`.

Events are built with a test signing key and handed to the persister the way the
federation pipeline will: holding the room lock, with the state before computed by the
state calculator (or given, as send_join and /state_ids give it). The persister checks no
signatures or auth rules; it stores what the context says.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest

from starling.protocol.event import Event, StateKey
from starling.protocol.room_versions import get_room_version
from starling.protocol.signing import SigningKey
from starling.rooms.builder import EventBuilder, auth_keys_for, listed_auth_events
from starling.rooms.persister import EventContext
from starling.rooms.state_calculator import MissingStateError, StateSnapshot
from starling.storage.database import Transaction
from tests.support.harness import Harness

V3 = "/_matrix/client/v3"
BUILDER_KEY = SigningKey.generate("dagtest")


async def _event(hs: Harness, event_id: str) -> Event:
    found = await hs.services.event_store.get_event(event_id)
    assert found is not None
    return found[0]


async def build(
    hs: Harness,
    room_id: str,
    sender: str,
    event_type: str,
    content: dict[str, Any],
    *,
    prev: Sequence[Event],
    state: Mapping[StateKey, str],
    state_key: str | None = None,
) -> Event:
    """An event citing `prev`, its auth events chosen from `state`."""
    store = hs.services.event_store
    rv = await store.get_room_version(room_id)
    assert rv is not None
    keys = auth_keys_for(event_type, state_key, sender, content, rv)
    ids = {k: state[k] for k in keys if k in state}
    loaded = await store.get_events(ids.values(), allow_rejected=True)
    builder = EventBuilder(hs.server_name, BUILDER_KEY)
    return builder.build(
        room_version=rv,
        room_id=room_id,
        event_type=event_type,
        sender=sender,
        content=content,
        state_key=state_key,
        prev_events=list(prev),
        auth_events=listed_auth_events({k: loaded[e] for k, e in ids.items()}, rv),
    )


async def persist(
    hs: Harness, event: Event, state_before: Mapping[StateKey, str] | None = None, **ctx: Any
) -> int | None:
    s = hs.services
    async with s.room_locks.lock(event.room_id):
        if state_before is not None:
            before = StateSnapshot(state_before, None)
        elif ctx.get("outlier"):
            before = StateSnapshot({}, None)
        else:
            before = await s.state_calculator.state_before(event)
        return await s.persister.persist(event, EventContext(before, **ctx))


async def room_with_bob(hs: Harness) -> tuple[str, str, str, str, str]:
    alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_id = await hs.create_room(atok, preset="public_chat")
    status, body = await hs.request("POST", f"{V3}/join/{room_id}", btok, {})
    assert status == 200, body
    return room_id, alice, atok, bob, btok


async def tip(hs: Harness, room_id: str) -> Event:
    (only,) = await hs.services.event_store.get_forward_extremities(room_id)
    return await _event(hs, only)


async def sync(hs: Harness, token: str, since: str | None = None) -> dict[str, Any]:
    params = {"timeout": "0"}
    if since is not None:
        params["since"] = since
    status, body = await hs.request("GET", f"{V3}/sync", token, params=params)
    assert status == 200, body
    result: dict[str, Any] = body
    return result


def timeline_ids(body: Mapping[str, Any], room_id: str, section: str = "join") -> list[str]:
    room = body["rooms"][section].get(room_id)
    if room is None:
        return []
    return [e["event_id"] for e in room["timeline"]["events"]]


async def messages(hs: Harness, token: str, room_id: str, **params: str) -> dict[str, Any]:
    status, body = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/messages", token, params={"dir": "b", **params}
    )
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def test_fork_and_merge_extremities(hs: Harness) -> None:
    room_id, alice, atok, _bob, _ = await room_with_bob(hs)
    store = hs.services.event_store
    base = await tip(hs, room_id)
    state = await hs.services.room_events.current_state_ids(room_id)
    a = await build(hs, room_id, alice, "m.room.message", {"body": "a"}, prev=[base], state=state)
    b = await build(hs, room_id, alice, "m.room.message", {"body": "b"}, prev=[base], state=state)
    pos_a = await persist(hs, a)
    pos_b = await persist(hs, b)
    assert pos_a is not None and pos_b is not None and 0 < pos_a < pos_b
    assert set(await store.get_forward_extremities(room_id)) == {a.event_id, b.event_id}
    # Persisting again changes nothing and answers the same position.
    assert await persist(hs, a) == pos_a
    # The next local event cites both branches and is the only extremity again.
    merge_id = await hs.send_message(atok, room_id, "merge")
    merge = await _event(hs, merge_id)
    assert set(merge.prev_event_ids) == {a.event_id, b.event_id}
    assert merge.depth == base.depth + 2
    assert await store.get_forward_extremities(room_id) == [merge_id]
    assert await store.get_backward_extremities(room_id) == []


@pytest.mark.parametrize("verdict", ["rejected", "soft_failed", "outlier", "backfilled"])
async def test_events_that_never_become_extremities(hs: Harness, verdict: str) -> None:
    room_id, alice, atok, _bob, btok = await room_with_bob(hs)
    store = hs.services.event_store
    since = (await sync(hs, btok))["next_batch"]
    base = await tip(hs, room_id)
    state = await hs.services.room_events.current_state_ids(room_id)
    event = await build(
        hs, room_id, alice, "m.room.message", {"body": verdict}, prev=[base], state=state
    )
    ctx: dict[str, Any] = {
        "rejected": {"rejected_reason": "auth"},
        "soft_failed": {"soft_failed": True},
        "outlier": {"outlier": True},
        "backfilled": {"backfilled": True},
    }[verdict]
    position = await persist(hs, event, **ctx)
    found = await store.get_event(event.event_id)
    assert found is not None  # stored, for federation answers
    meta = found[1]
    if verdict == "outlier":
        assert position is None and meta.stream_ordering is None and meta.outlier
    elif verdict == "backfilled":
        assert position is not None and position < 0 and meta.stream_ordering == position
    else:
        assert position is not None and position > 0
    assert meta.rejected_reason == ("auth" if verdict == "rejected" else None)
    assert meta.soft_failed is (verdict == "soft_failed")
    assert await store.get_forward_extremities(room_id) == [base.event_id]
    # Never in /sync (initial or incremental), whatever its kind.
    assert event.event_id not in timeline_ids(await sync(hs, btok), room_id)
    assert event.event_id not in timeline_ids(await sync(hs, btok, since), room_id)
    chunk = [e["event_id"] for e in (await messages(hs, btok, room_id))["chunk"]]
    # Only a backfilled event is history.
    assert (event.event_id in chunk) is (verdict == "backfilled")
    if verdict == "rejected":  # a client cannot fetch it by ID either
        status, _ = await hs.request("GET", f"{V3}/rooms/{room_id}/event/{event.event_id}", btok)
        assert status == 404
    # The next local event still cites only the old extremity.
    nxt = await _event(hs, await hs.send_message(atok, room_id, "next"))
    assert nxt.prev_event_ids == (base.event_id,)


async def test_fork_resolved_by_state_resolution(hs: Harness) -> None:
    """A ban on one branch, a topic on the other: the current state has both, the ban
    reaches Bob's /sync, and the next local event merges the branches."""
    room_id, alice, atok, bob, btok = await room_with_bob(hs)
    s = hs.services
    since = (await sync(hs, btok))["next_batch"]
    base = await tip(hs, room_id)
    state = await s.room_events.current_state_ids(room_id)
    ban = await build(
        hs,
        room_id,
        alice,
        "m.room.member",
        {"membership": "ban"},
        prev=[base],
        state=state,
        state_key=bob,
    )
    topic = await build(
        hs,
        room_id,
        alice,
        "m.room.topic",
        {"topic": "forked"},
        prev=[base],
        state=state,
        state_key="",
    )
    await persist(hs, topic)
    await persist(hs, ban)
    current = await s.room_events.current_state_ids(room_id)
    assert current[("m.room.member", bob)] == ban.event_id
    assert current[("m.room.topic", "")] == topic.event_id
    membership = await s.membership_store.get_membership(room_id, bob)
    assert membership is not None and membership.membership == "ban"
    body = await sync(hs, btok, since)
    assert room_id in body["rooms"]["leave"] and room_id not in body["rooms"]["join"]
    merge = await _event(hs, await hs.send_message(atok, room_id, "after"))
    assert set(merge.prev_event_ids) == {ban.event_id, topic.event_id}


async def test_membership_flipped_by_resolution_reaches_sync(hs: Harness) -> None:
    """Bob's ban is known only as an outlier (it sits in a gap of the graph); a remote
    message whose state includes it forks the room, and state resolution makes the ban
    current although no member event of Bob's joins the timeline. Bob's /sync learns it
    from the current-state-delta stream."""
    room_id, alice, atok, bob, btok = await room_with_bob(hs)
    s = hs.services
    since = (await sync(hs, btok))["next_batch"]
    base = await tip(hs, room_id)
    state = await s.room_events.current_state_ids(room_id)
    ban = await build(
        hs,
        room_id,
        alice,
        "m.room.member",
        {"membership": "ban"},
        prev=[base],
        state=state,
        state_key=bob,
    )
    child = await build(hs, room_id, alice, "m.room.message", {}, prev=[ban, base], state=state)
    with pytest.raises(MissingStateError) as unknown:  # a prev event never seen
        await s.state_calculator.state_before(child)
    assert unknown.value.event_ids == {ban.event_id}
    await s.persister.persist_outliers([ban], ban.room_version)
    with pytest.raises(MissingStateError) as missing:  # a prev event known without state
        await s.state_calculator.state_before(
            await build(hs, room_id, alice, "m.room.message", {}, prev=[ban], state=state)
        )
    assert missing.value.event_ids == {ban.event_id}
    after_ban = {**state, ("m.room.member", bob): ban.event_id}
    remote = await build(
        hs, room_id, alice, "m.room.message", {"body": "r"}, prev=[ban], state=after_ban
    )
    position = await persist(hs, remote, state_before=after_ban)
    assert position is not None and position > 0
    assert set(await s.event_store.get_forward_extremities(room_id)) == {
        base.event_id,
        remote.event_id,
    }
    assert await s.event_store.get_backward_extremities(room_id) == [ban.event_id]
    current = await s.room_events.current_state_ids(room_id)
    assert current[("m.room.member", bob)] == ban.event_id
    assert await s.membership_store.get_joined_users(room_id) == {alice}
    body = await sync(hs, btok, since)
    assert room_id in body["rooms"]["leave"], body["rooms"]
    # Bob may not send any more; Alice's next event merges both branches.
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/send/m.room.message/x", btok, {"body": "no"}
    )
    assert status == 403
    merge = await _event(hs, await hs.send_message(atok, room_id, "merged"))
    assert set(merge.prev_event_ids) == {base.event_id, remote.event_id}


async def test_backfilled_events_sit_in_history_by_topology(hs: Harness) -> None:
    room_id, alice, atok, _bob, btok = await room_with_bob(hs)
    s = hs.services
    base = await tip(hs, room_id)
    state = dict(await s.room_events.current_state_ids(room_id))
    m1 = await hs.send_message(atok, room_id, "m1")
    m2 = await hs.send_message(atok, room_id, "m2")
    # A remote branch off `base`: g2 arrives first, citing g1 which we do not have.
    g1 = await build(hs, room_id, alice, "m.room.message", {"body": "g1"}, prev=[base], state=state)
    g2 = await build(hs, room_id, alice, "m.room.message", {"body": "g2"}, prev=[g1], state=state)
    await persist(hs, g2, state_before=state)
    assert await s.event_store.get_backward_extremities(room_id) == [g1.event_id]
    since = (await sync(hs, btok))["next_batch"]
    pos1 = await persist(hs, g1, backfilled=True)
    assert pos1 is not None and pos1 < 0
    assert await s.event_store.get_backward_extremities(room_id) == []
    assert set(await s.event_store.get_forward_extremities(room_id)) == {m2, g2.event_id}
    # Not news: an incremental /sync does not show it.
    assert g1.event_id not in timeline_ids(await sync(hs, btok, since), room_id)
    # /messages: depth order, so g1 (depth base+1) sits beside m1, above `base`.
    order = [e["event_id"] for e in (await messages(hs, btok, room_id, limit="50"))["chunk"]]
    assert order.index(g2.event_id) < order.index(g1.event_id) < order.index(base.event_id)
    assert order.index(m2) < order.index(m1) < order.index(base.event_id)
    # Paging with the topological tokens walks the same order, a page at a time.
    paged: list[str] = []
    params = {"limit": "2"}
    for _ in range(30):
        page = await messages(hs, btok, room_id, **params)
        paged += [e["event_id"] for e in page["chunk"]]
        if "end" not in page:
            break
        assert page["end"].startswith("t") and "-" in page["end"]
        params = {"limit": "2", "from": page["end"]}
    assert paged == order
    # /context around g1: its neighbours in history, not in arrival order.
    status, ctx = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/context/{g1.event_id}", btok, params={"limit": "2"}
    )
    assert status == 200, ctx
    assert [e["event_id"] for e in ctx["events_after"]] == [m1]
    assert [e["event_id"] for e in ctx["events_before"]] == [base.event_id]
    # A second backfilled event gets a lower position still.
    older = await build(
        hs, room_id, alice, "m.room.message", {"body": "o"}, prev=[base], state=state
    )
    pos0 = await persist(hs, older, backfilled=True)
    assert pos0 is not None and pos0 < pos1


async def test_outlier_promoted_to_timeline(hs: Harness) -> None:
    room_id, alice, _atok, _bob, btok = await room_with_bob(hs)
    s = hs.services
    base = await tip(hs, room_id)
    state = await s.room_events.current_state_ids(room_id)
    event = await build(
        hs, room_id, alice, "m.room.message", {"body": "o"}, prev=[base], state=state
    )
    await s.persister.persist_outliers([event, event], event.room_version)
    assert await s.event_store.have_events([event.event_id, "$nope"]) == {event.event_id}
    assert await s.event_store.get_state_ids_before(event.event_id) is None
    assert await s.event_store.get_state_ids_before("$unknown") is None
    position = await persist(hs, event)
    assert position is not None and position > 0
    found = await s.event_store.get_event(event.event_id)
    assert found is not None and not found[1].outlier and found[1].stream_ordering == position
    assert await s.event_store.get_forward_extremities(room_id) == [event.event_id]
    assert await s.event_store.get_state_ids_before(event.event_id) == state
    assert event.event_id in timeline_ids(await sync(hs, btok), room_id)


async def test_event_cited_by_a_stored_event_is_no_extremity(hs: Harness) -> None:
    """An event pulled into the timeline after a later event is stored that cites it —
    as an outlier (a state or auth event of a later point) or a timeline event — is no
    tip; its prev events stop being tips too. A rejected or soft-failed referencer does
    not count, and an event citing a soft-failed one replaces the tip behind it."""
    room_id, alice, _atok, _bob, _btok = await room_with_bob(hs)
    s = hs.services
    store = s.event_store
    base = await tip(hs, room_id)
    state = await s.room_events.current_state_ids(room_id)

    async def msg(body: str, prev: Event) -> Event:
        return await build(
            hs, room_id, alice, "m.room.message", {"body": body}, prev=[prev], state=state
        )

    x1, x2 = await msg("x1", base), await msg("x2", base)
    await persist(hs, x1)
    await persist(hs, x2)
    assert set(await store.get_forward_extremities(room_id)) == {x1.event_id, x2.event_id}
    a = await msg("a", x1)
    later = await msg("later", a)
    await s.persister.persist_outliers([later], later.room_version)
    assert await persist(hs, a) is not None
    assert await store.get_forward_extremities(room_id) == [x2.event_id]
    # The last extremity is never given up, even when its child is cited.
    b = await msg("b", x2)
    await s.persister.persist_outliers([await msg("after b", b)], b.room_version)
    await persist(hs, b)
    assert await store.get_forward_extremities(room_id) == [x2.event_id]
    # Referencers that are not part of the DAG do not count.
    c = await msg("c", x2)
    bad = await msg("rejected", c)
    await s.persister.persist_outliers([bad], bad.room_version, rejected={bad.event_id: "auth"})
    await persist(hs, c)
    assert await store.get_forward_extremities(room_id) == [c.event_id]
    d = await msg("d", c)
    await persist(hs, await msg("soft-failed", d), state_before=state, soft_failed=True)
    await persist(hs, d, state_before=state)
    assert await store.get_forward_extremities(room_id) == [d.event_id]
    # An event on top of a soft-failed one replaces the extremity behind it.
    shunned = await msg("shunned", d)
    await persist(hs, shunned, state_before=state, soft_failed=True)
    assert await store.get_forward_extremities(room_id) == [d.event_id]
    on_top = await msg("on top", shunned)
    await persist(hs, on_top, state_before=state)
    assert await store.get_forward_extremities(room_id) == [on_top.event_id]


async def test_auth_chain_is_one_query(hs: Harness) -> None:
    room_id, _alice, atok, bob, _btok = await room_with_bob(hs)
    s = hs.services
    msg = await _event(hs, await hs.send_message(atok, room_id, "hi"))
    chain = await s.event_store.get_auth_chain_ids([msg.event_id])
    state = await s.room_events.current_state_ids(room_id)
    create = state[("m.room.create", "")]
    # The message's auth events, and theirs, down to the create event.
    assert set(msg.auth_event_ids) <= chain
    assert state[("m.room.power_levels", "")] in chain
    if msg.room_version.create_event_in_auth_events:
        assert create in chain
    assert msg.event_id not in chain
    assert state[("m.room.member", bob)] not in chain  # Bob's join is not in Alice's chain
    assert await s.event_store.get_auth_chain_ids([]) == set()


async def test_out_of_band_invite_reaches_sync(hs: Harness) -> None:
    """An invite from another server to a room this server knows nothing of: stored as
    an outlier with a stream position, and Bob's /sync lists it."""
    bob, btok = await hs.register("bob")
    since = (await sync(hs, btok))["next_batch"]
    rv = get_room_version("10")
    invite = EventBuilder("other.example", BUILDER_KEY).build(
        room_version=rv,
        room_id="!remote:other.example",
        event_type="m.room.member",
        sender="@carol:other.example",
        content={"membership": "invite"},
        state_key=bob,
        prev_events=[],
        auth_events=[],
    )
    s = hs.services
    async with s.room_locks.lock(invite.room_id):
        position = await s.persister.persist_out_of_band_membership(invite)
        assert await s.persister.persist_out_of_band_membership(invite) == position
    found = await s.event_store.get_event(invite.event_id)
    assert found is not None and found[1].outlier and found[1].stream_ordering == position
    assert await s.room_events.current_state_ids(invite.room_id) == {}
    membership = await s.membership_store.get_membership(invite.room_id, bob)
    assert membership is not None and membership.membership == "invite"
    body = await sync(hs, btok, since)
    assert invite.room_id in body["rooms"]["invite"], body["rooms"]
    assert invite.room_id in (await sync(hs, btok))["rooms"]["invite"]


async def test_sync_state_after_a_fork_is_the_resolved_state(hs: Harness) -> None:
    """Two topics on two branches; the one that loses state resolution arrives last.
    With use_state_after, /sync gives the resolved topic; without it, the next response
    corrects a client that applied the losing topic from its timeline."""
    room_id, alice, atok, _bob, btok = await room_with_bob(hs)
    s = hs.services
    since = (await sync(hs, btok))["next_batch"]
    base = await tip(hs, room_id)
    state = await s.room_events.current_state_ids(room_id)

    async def topic(text: str) -> Event:
        return await build(
            hs,
            room_id,
            alice,
            "m.room.topic",
            {"topic": text},
            prev=[base],
            state=state,
            state_key="",
        )

    # Same sender and power: the later origin_server_ts is applied last and wins.
    loser = await topic("loser")
    winner = await topic("winner")
    while winner.origin_server_ts <= loser.origin_server_ts:
        winner = await topic("winner")
    await persist(hs, winner)
    await persist(hs, loser)
    current = await s.room_events.current_state_ids(room_id)
    assert current[("m.room.topic", "")] == winner.event_id

    status, body = await hs.request(
        "GET",
        f"{V3}/sync",
        btok,
        params={"since": since, "timeout": "0", "use_state_after": "true"},
    )
    assert status == 200, body
    room = body["rooms"]["join"][room_id]
    assert [e["event_id"] for e in room["timeline"]["events"]] == [winner.event_id, loser.event_id]
    topics = [e for e in room["state_after"]["events"] if e["type"] == "m.room.topic"]
    assert [e["event_id"] for e in topics] == [winner.event_id]

    plain = await sync(hs, btok, since)  # a client applying its timeline holds "loser"
    after_merge = await hs.send_message(atok, room_id, "merge")
    body = await sync(hs, btok, plain["next_batch"])
    room = body["rooms"]["join"][room_id]
    assert [e["event_id"] for e in room["timeline"]["events"]] == [after_merge]
    assert [e["event_id"] for e in room["state"]["events"] if e["type"] == "m.room.topic"] == [
        winner.event_id
    ]


async def test_other_processes_hear_of_a_write_inside_its_commit(
    hs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With workers, what the persister tells the other processes of a write (drop the
    room's caches, the event, the state change) is queued among the commit's own
    callbacks, where the stream position is published too: one bus batch, news first.
    Told after the write returned, the position could go out alone (PostgreSQL's pool
    release yields to the bus's sender), and a /sync on another process moved past the
    event with the room's old cached timeline: the event was never shown there."""
    s = hs.services
    real_transaction = s.db.transaction
    committing = 0  # transactions between COMMIT and the end of their `async with`

    @contextlib.asynccontextmanager
    async def watched(**kwargs: Any) -> AsyncIterator[Transaction]:
        nonlocal committing
        ran = []

        def commit_callbacks_begin() -> None:
            nonlocal committing
            committing += 1
            ran.append(True)

        async with real_transaction(**kwargs) as txn:
            txn.call_after_commit(commit_callbacks_begin)  # the first of its callbacks
            yield txn
        if ran:
            committing -= 1

    told: list[tuple[str, str, bool]] = []

    class Relay:
        def room(self, room_id: str) -> None:
            told.append(("room", room_id, committing > 0))

        def event(self, event_id: str, position: int) -> None:
            told.append(("event", event_id, committing > 0))

        def state(
            self, room_id: str, changed: Mapping[StateKey, str | None], position: int
        ) -> None:
            told.append(("state", room_id, committing > 0))

    _, atok = await hs.register("alice")
    s.persister.relay = Relay()
    monkeypatch.setattr(s.db, "transaction", watched)
    room_id = await hs.create_room(atok)  # persist_new_room
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/state/m.room.topic", atok, {"topic": "raced"}
    )
    assert status == 200, body
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/send/m.room.message/t1", atok, {"body": "hi"}
    )
    assert status == 200, body
    invite = EventBuilder("other.example", BUILDER_KEY).build(
        room_version=get_room_version("10"),
        room_id="!remote:other.example",
        event_type="m.room.member",
        sender="@carol:other.example",
        content={"membership": "invite"},
        state_key=f"@alice:{hs.server_name}",
        prev_events=[],
        auth_events=[],
    )
    async with s.room_locks.lock(invite.room_id):
        await s.persister.persist_out_of_band_membership(invite)
    s.persister.relay = None
    kinds = [kind for kind, _, _ in told]
    assert {"room", "event", "state"} <= set(kinds), told
    assert ("room", invite.room_id, True) in told
    assert all(inside for _, _, inside in told), told
