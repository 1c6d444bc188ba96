"""TimestampLookup's choice between our answer and other servers' (fakes for storage,
federation and the pipeline): a remote answer wins only when closer and, if we have an
answer of our own, only once its event is held here; wrong-side or malformed answers are
ignored; servers are asked in order until one answers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from starling.federation.errors import FederationUnreachable
from starling.federation.timestamps import TimestampLookup

ROOM = "!room:here.example"


class Store:
    def __init__(self, local: tuple[str, int] | None) -> None:
        self.local = local

    async def closest_event(self, room_id: str, ts: int, forwards: bool) -> tuple[str, int] | None:
        return self.local


class Events:
    """`$local` is held and sits next to a gap; pulled events become held if `accept`."""

    def __init__(self, accept: bool) -> None:
        self.accept = accept
        self.held = {"$local"}

    async def get_event(self, event_id: str) -> Any:
        if event_id not in self.held:
            return None
        event = SimpleNamespace(room_id=ROOM, prev_event_ids=("$missing",))
        meta = SimpleNamespace(outlier=False, rejected_reason=None)
        return SimpleNamespace(event=event, meta=meta)

    async def get_backward_extremities(self, room_id: str) -> list[str]:
        return ["$missing"]


class Members:
    async def get_joined_users(self, room_id: str) -> frozenset[str]:
        return frozenset({"@a:down.example", "@b:up.example", "@c:up.example", "@me:here.example"})


class Client:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def get_json(self, destination: str, path: str, query: Any = None, **_: Any) -> Any:
        self.asked.append(destination)
        if "/event/" in path:
            return {"pdus": [{"room_id": ROOM, "type": "m.room.message"}]}
        answer = self.answers.get(destination)
        if answer is None:
            raise FederationUnreachable(destination, "down")
        return answer

    async def post_json(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("not used")


class Pipeline:
    def __init__(self, events: Events) -> None:
        self.events = events
        self.pulled = 0

    async def process_pulled_events(
        self, origin: str, room_id: str, pdus: list[dict[str, Any]], *, backfilled: bool
    ) -> None:
        self.pulled += 1
        if self.events.accept:
            self.events.held.add("$remote")


async def allow(user_id: str, room_id: str) -> None:
    return None


def lookup(local: tuple[str, int] | None, answers: dict[str, Any], accept: bool) -> Any:
    events = Events(accept)
    client = Client(answers)
    pipeline = Pipeline(events)
    service = TimestampLookup(
        "here.example",
        Store(local),  # type: ignore[arg-type]
        events,
        Members(),
        client,
        SimpleNamespace(),  # type: ignore[arg-type]
        pipeline,
        allow,
    )
    return service, client, pipeline


async def test_closer_remote_answer_wins_once_held() -> None:
    answers = {"up.example": {"event_id": "$remote", "origin_server_ts": 1010}}
    service, client, pipeline = lookup(("$local", 1100), answers, accept=True)
    got = await service.for_user("@me:here.example", ROOM, 1000, True)
    assert got == {"event_id": "$remote", "origin_server_ts": 1010}
    # up.example (two members) before down.example; the event fetched from it.
    assert client.asked == ["up.example", "up.example"] and pipeline.pulled == 1


async def test_remote_event_we_cannot_take_leaves_ours() -> None:
    answers = {"up.example": {"event_id": "$remote", "origin_server_ts": 1010}}
    service, _, _ = lookup(("$local", 1100), answers, accept=False)
    got = await service.for_user("@me:here.example", ROOM, 1000, True)
    assert got == {"event_id": "$local", "origin_server_ts": 1100}
    # With nothing of our own, the remote answer is given even so.
    service, _, _ = lookup(None, answers, accept=False)
    got = await service.for_user("@me:here.example", ROOM, 1000, True)
    assert got == {"event_id": "$remote", "origin_server_ts": 1010}


async def test_bad_and_farther_answers_are_ignored() -> None:
    for answer in (
        {"event_id": "$remote", "origin_server_ts": 900},  # before ts, asked forwards
        {"event_id": "$remote", "origin_server_ts": 1200},  # farther than ours
        {"event_id": "no-dollar", "origin_server_ts": 1010},
        {"event_id": "$remote", "origin_server_ts": True},
        ["not", "an", "object"],
    ):
        service, _, pipeline = lookup(("$local", 1100), {"up.example": answer}, accept=True)
        got = await service.for_user("@me:here.example", ROOM, 1000, True)
        assert got == {"event_id": "$local", "origin_server_ts": 1100}, answer
        assert pipeline.pulled == 0
    # Every server down: our answer stands.
    service, client, _ = lookup(("$local", 1100), {}, accept=True)
    got = await service.for_user("@me:here.example", ROOM, 1000, True)
    assert got["event_id"] == "$local" and client.asked == ["up.example", "down.example"]
