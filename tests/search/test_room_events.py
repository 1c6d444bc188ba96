"""POST /search (room_events): matching, rank and recent ordering, pagination, history
visibility, context, groupings, filters and parameter checking."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.harness import Harness

V3 = "/_matrix/client/v3"


async def search(
    hs: Harness, token: str, term: str, *, next_batch: str | None = None, **extra: Any
) -> dict[str, Any]:
    status, body = await raw_search(
        hs,
        token,
        {"search_categories": {"room_events": {"search_term": term, **extra}}},
        next_batch,
    )
    assert status == 200, body
    result: dict[str, Any] = body["search_categories"]["room_events"]
    return result


async def raw_search(
    hs: Harness, token: str, body: Any, next_batch: str | None = None
) -> tuple[int, Any]:
    params = {"next_batch": next_batch} if next_batch is not None else None
    return await hs.request("POST", f"{V3}/search", token, body, params=params)


def bodies(result: dict[str, Any]) -> list[str]:
    return [r["result"]["content"]["body"] for r in result["results"]]


async def join(hs: Harness, token: str, room_id: str) -> None:
    status, body = await hs.request("POST", f"{V3}/join/{room_id}", token, {})
    assert status == 200, body


async def test_finds_words_and_prefixes_in_joined_rooms(hs: Harness) -> None:
    _alice, tok = await hs.register("alice")
    room = await hs.create_room(tok, name="Fruit market")
    other_room = await hs.create_room(tok)
    await hs.send_message(tok, room, "I like apples and pears")
    await hs.send_message(tok, room, "Bananas are yellow")
    await hs.send_message(tok, other_room, "Apple pie recipe")
    _, stranger = await hs.register("stranger")

    result = await search(hs, tok, "apple")
    assert sorted(bodies(result)) == ["Apple pie recipe", "I like apples and pears"]
    assert result["count"] == 2
    assert result["highlights"] == ["apple"]
    first = result["results"][0]
    assert isinstance(first["rank"], float)
    assert first["result"]["room_id"] in (room, other_room)
    assert first["result"]["type"] == "m.room.message"
    assert "event_id" in first["result"] and "sender" in first["result"]
    assert bodies(await search(hs, tok, "banan yel")) == ["Bananas are yellow"]
    assert bodies(await search(hs, tok, "banana apple")) == []
    assert (await search(hs, stranger, "apple"))["results"] == []
    # The room name is searched too (content.name), and keys narrow the fields.
    named = await search(hs, tok, "market")
    assert [r["result"]["type"] for r in named["results"]] == ["m.room.name"]
    assert (await search(hs, tok, "market", keys=["content.body"]))["results"] == []


async def test_rank_and_recent_ordering(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room = await hs.create_room(tok)
    await hs.send_message(tok, room, "kiwi kiwi kiwi kiwi")
    await hs.send_message(tok, room, "one kiwi among many other words in a long sentence here")
    await hs.send_message(tok, room, "a kiwi again, with some words")
    by_rank = await search(hs, tok, "kiwi", order_by="rank")
    assert bodies(by_rank)[0] == "kiwi kiwi kiwi kiwi"
    ranks = [r["rank"] for r in by_rank["results"]]
    assert ranks == sorted(ranks, reverse=True)
    recent = await search(hs, tok, "kiwi", order_by="recent")
    assert bodies(recent) == [
        "a kiwi again, with some words",
        "one kiwi among many other words in a long sentence here",
        "kiwi kiwi kiwi kiwi",
    ]


@pytest.mark.parametrize("order_by", ["rank", "recent"])
async def test_pagination(hs: Harness, order_by: str) -> None:
    _, tok = await hs.register("alice")
    room = await hs.create_room(tok)
    sent = [f"mango number {i}" for i in range(7)]
    for text in sent:
        await hs.send_message(tok, room, text)
    await hs.send_message(tok, room, "unrelated")
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        result = await search(
            hs, tok, "mango", next_batch=token, order_by=order_by, filter={"limit": 3}
        )
        pages += 1
        assert result["count"] == 7
        seen += bodies(result)
        token = result.get("next_batch")
        if token is None:
            break
        assert pages < 10
    assert pages == 3
    assert sorted(seen) == sorted(sent)
    if order_by == "recent":
        assert seen == list(reversed(sent))


async def test_history_visibility_and_departure(hs: Harness) -> None:
    _alice, atok = await hs.register("alice")
    _bob, btok = await hs.register("bob")
    room = await hs.create_room(
        atok,
        preset="public_chat",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"},
            }
        ],
    )
    await hs.send_message(atok, room, "secret before bob")
    await join(hs, btok, room)
    await hs.send_message(atok, room, "secret while bob is here")
    assert bodies(await search(hs, btok, "secret")) == ["secret while bob is here"]
    status, _ = await hs.request("POST", f"{V3}/rooms/{room}/leave", btok, {})
    assert status == 200
    await hs.send_message(atok, room, "secret after bob left")
    # A left room is still searched, up to the departure.
    assert bodies(await search(hs, btok, "secret")) == ["secret while bob is here"]
    assert len(bodies(await search(hs, atok, "secret"))) == 3


async def test_shared_history_is_visible_to_later_joiners(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room = await hs.create_room(atok, preset="public_chat")
    await hs.send_message(atok, room, "older papaya")
    await join(hs, btok, room)
    assert bodies(await search(hs, btok, "papaya")) == ["older papaya"]


async def test_redacted_events_are_not_found(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room = await hs.create_room(tok)
    event_id = await hs.send_message(tok, room, "cherry to be removed")
    assert len(bodies(await search(hs, tok, "cherry"))) == 1
    status, body = await hs.request("PUT", f"{V3}/rooms/{room}/redact/{event_id}/txn1", tok, {})
    assert status == 200, body
    assert (await search(hs, tok, "cherry"))["results"] == []


async def test_context_and_profiles(hs: Harness) -> None:
    alice, tok = await hs.register("alice")
    room = await hs.create_room(tok)
    for i in range(3):
        await hs.send_message(tok, room, f"before {i}")
    await hs.send_message(tok, room, "the lime result")
    for i in range(3):
        await hs.send_message(tok, room, f"after {i}")
    result = await search(
        hs,
        tok,
        "lime",
        event_context={"before_limit": 2, "after_limit": 1, "include_profile": True},
    )
    (hit,) = result["results"]
    context = hit["context"]
    assert [e["content"]["body"] for e in context["events_before"]] == ["before 2", "before 1"]
    assert [e["content"]["body"] for e in context["events_after"]] == ["after 0"]
    assert context["profile_info"][alice] == {"displayname": "alice"}
    assert isinstance(context["start"], str) and isinstance(context["end"], str)
    # The tokens work with /messages.
    status, page = await hs.request(
        "GET",
        f"{V3}/rooms/{room}/messages",
        tok,
        params={"from": context["end"], "dir": "f", "limit": "1"},
    )
    assert status == 200 and page["chunk"][0]["content"]["body"] == "after 1", page
    no_context = await search(hs, tok, "lime")
    assert "context" not in no_context["results"][0]


async def test_groupings_and_filters(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room1 = await hs.create_room(atok, preset="public_chat")
    room2 = await hs.create_room(atok, preset="public_chat")
    await join(hs, btok, room1)
    a1 = await hs.send_message(atok, room1, "plum one")
    b1 = await hs.send_message(btok, room1, "plum two")
    a2 = await hs.send_message(atok, room2, "plum three")
    result = await search(
        hs,
        atok,
        "plum",
        order_by="recent",
        groupings={"group_by": [{"key": "room_id"}, {"key": "sender"}]},
    )
    groups = result["groups"]
    assert groups["room_id"][room1]["results"] == [b1, a1]
    assert groups["room_id"][room2]["results"] == [a2]
    assert groups["sender"][alice]["results"] == [a2, a1]
    assert groups["sender"][bob]["results"] == [b1]

    only_room1 = await search(hs, atok, "plum", filter={"rooms": [room1]})
    assert sorted(bodies(only_room1)) == ["plum one", "plum two"]
    only_bob = await search(hs, atok, "plum", filter={"senders": [bob]})
    assert bodies(only_bob) == ["plum two"]
    not_messages = await search(hs, atok, "plum", filter={"not_types": ["m.room.message"]})
    assert not_messages["results"] == []


async def test_group_pagination_stays_in_its_room(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room1 = await hs.create_room(tok)
    room2 = await hs.create_room(tok)
    for i in range(3):
        await hs.send_message(tok, room1, f"grape {i}")
        await hs.send_message(tok, room2, f"grape {i}")
    result = await search(
        hs,
        tok,
        "grape",
        order_by="recent",
        filter={"limit": 2},
        groupings={"group_by": [{"key": "room_id"}]},
    )
    groups = result["groups"]["room_id"]
    assert set(groups) == {room1, room2}
    for room_id, group in groups.items():
        more = await search(
            hs,
            tok,
            "grape",
            order_by="recent",
            filter={"limit": 10},
            next_batch=group["next_batch"],
        )
        assert [r["result"]["room_id"] for r in more["results"]] == [room_id, room_id]
        assert bodies(more) == ["grape 1", "grape 0"]


async def test_include_state(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room = await hs.create_room(tok, name="Stateful")
    await hs.send_message(tok, room, "melon")
    result = await search(hs, tok, "melon", include_state=True)
    types = {e["type"] for e in result["state"][room]}
    assert {"m.room.create", "m.room.name"} <= types


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({}, "M_MISSING_PARAM"),
        ({"search_categories": []}, "M_BAD_JSON"),
        ({"search_categories": {}}, "M_UNKNOWN"),
        ({"search_categories": {"rooms": {"search_term": "x"}}}, "M_UNKNOWN"),
        ({"search_categories": {"room_events": {}}}, "M_MISSING_PARAM"),
        ({"search_categories": {"room_events": {"search_term": 3}}}, "M_BAD_JSON"),
        (
            {"search_categories": {"room_events": {"search_term": "x", "order_by": "best"}}},
            "M_UNKNOWN",
        ),
        (
            {"search_categories": {"room_events": {"search_term": "x", "keys": ["content.x"]}}},
            "M_INVALID_PARAM",
        ),
        (
            {"search_categories": {"room_events": {"search_term": "x", "keys": "content.body"}}},
            "M_BAD_JSON",
        ),
        (
            {"search_categories": {"room_events": {"search_term": "x", "filter": {"limit": -1}}}},
            "M_BAD_JSON",
        ),
        (
            {
                "search_categories": {
                    "room_events": {"search_term": "x", "event_context": {"before_limit": -1}}
                }
            },
            "M_INVALID_PARAM",
        ),
        (
            {
                "search_categories": {
                    "room_events": {
                        "search_term": "x",
                        "groupings": {"group_by": [{"key": "type"}]},
                    }
                }
            },
            "M_UNKNOWN",
        ),
    ],
)
async def test_bad_input(hs: Harness, body: dict[str, Any], errcode: str) -> None:
    _, tok = await hs.register()
    status, resp = await raw_search(hs, tok, body)
    assert status == 400 and resp["errcode"] == errcode, resp


@pytest.mark.parametrize("token", ["nope", "k", "t12~room", "kabc", "x" * 600])
async def test_bad_next_batch(hs: Harness, token: str) -> None:
    _, tok = await hs.register()
    body = {"search_categories": {"room_events": {"search_term": "x"}}}
    status, resp = await raw_search(hs, tok, body, token)
    assert status == 400 and resp["errcode"] == "M_INVALID_PARAM", resp


async def test_token_of_another_ordering_is_refused(hs: Harness) -> None:
    _, tok = await hs.register()
    body = {"search_categories": {"room_events": {"search_term": "x", "order_by": "recent"}}}
    status, resp = await raw_search(hs, tok, body, "k5")
    assert status == 400 and resp["errcode"] == "M_INVALID_PARAM", resp
