"""What the federation receipt pipeline needs from the rest of the server, as protocols.

The concrete collaborators are fed-path's `StateCalculator` / `EventPersister` /
`RoomLocks` / `EventStore` and fed-transport's `FederationClient` / `Keyring`; the
pipeline is typed against exactly the methods it calls so that it can be built in
app.py from the real ones and in tests from in-process fakes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from starling.protocol.event import Event, StateKey
from starling.protocol.room_versions import RoomVersion
from starling.storage.events import StoredEvent


class Snapshot(Protocol):
    @property
    def ids(self) -> Mapping[StateKey, str]: ...


class FederationClientPort(Protocol):
    async def get_json(
        self,
        destination: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        *,
        timeout: float = 60.0,
    ) -> Any: ...

    async def post_json(
        self, destination: str, path: str, body: Any, *, timeout: float = 60.0
    ) -> Any: ...


class EventMetaView(Protocol):
    @property
    def rejected_reason(self) -> str | None: ...

    @property
    def soft_failed(self) -> bool: ...

    @property
    def outlier(self) -> bool: ...


class EventReader(Protocol):
    async def get_room_version(self, room_id: str) -> RoomVersion | None: ...

    async def get_events_with_meta(self, event_ids: Iterable[str]) -> Mapping[str, StoredEvent]: ...

    async def get_events(
        self, event_ids: Iterable[str], allow_rejected: bool = False
    ) -> Mapping[str, Event]: ...

    async def get_forward_extremities(self, room_id: str) -> list[str]: ...


class StateReader(Protocol):
    async def get_current_state_ids(self, room_id: str) -> Mapping[StateKey, str]: ...


class StateCalculatorPort(Protocol):
    async def state_before(self, event: Event) -> Any: ...

    async def state_after_events(
        self, room_id: str, room_version: RoomVersion, event_ids: Sequence[str]
    ) -> Any: ...

    async def resolve(
        self, room_version: RoomVersion, state_sets: Sequence[Mapping[StateKey, str]]
    ) -> dict[StateKey, str]: ...


class PersisterPort(Protocol):
    async def persist(
        self, event: Event, context: Any, *, new_room: RoomVersion | None = None
    ) -> int | None: ...

    async def persist_outliers(
        self,
        events: Sequence[Event],
        room_version: RoomVersion,
        *,
        rejected: Mapping[str, str] | None = None,
    ) -> None: ...


class RoomLocksPort(Protocol):
    def lock(self, room_id: str) -> AbstractAsyncContextManager[Any]: ...
