"""A room shared with a fake remote server, and the receipt pipeline over in-memory
collaborators (tests/federation/memory_room.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from starling.federation.event_handler import FederationEventHandler
from starling.federation.receipt.remote import RemoteEvents
from starling.federation.room_access import RoomAccess
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from tests.federation.dag import Dag, FakeServer
from tests.federation.fakes import FakeKeyring, FakeRemote
from tests.federation.memory_room import MemoryRooms

# One room version per family of differences (event IDs, redaction, auth rules, v12 IDs).
ROOM_VERSIONS = ["1", "3", "6", "8", "10", "11", "12"]

REMOTE = "remote.example"
LOCAL = "local.test"


@dataclass
class Scenario:
    remote: FakeServer
    local: FakeServer
    dag: Dag
    rooms: MemoryRooms
    client: FakeRemote
    keyring: FakeKeyring
    handler: FederationEventHandler

    @property
    def alice(self) -> str:
        return self.remote.user("alice")

    @property
    def bob(self) -> str:
        return self.local.user("bob")

    async def send(self, event: object) -> str | None:
        from starling.protocol.event import Event

        assert isinstance(event, Event)
        return await self.handler.on_send_pdu(REMOTE, dict(event.pdu))


@pytest.fixture(params=ROOM_VERSIONS)
def room_version(request: pytest.FixtureRequest) -> RoomVersion:
    return KNOWN_ROOM_VERSIONS[request.param]


async def make_scenario(room_version: RoomVersion) -> Scenario:
    remote = FakeServer(REMOTE)
    local = FakeServer(LOCAL)
    dag = Dag(room_version, [remote, local])
    events = dag.standard_room(remote.user("alice"))
    events.append(dag.join(local.user("bob")))
    rooms = MemoryRooms()
    await rooms.seed(room_version, events)
    client = FakeRemote(dag)
    keyring = FakeKeyring([remote, local])
    access = RoomAccess(rooms, rooms, rooms)
    handler = FederationEventHandler(
        events=rooms,
        state=rooms,
        memberships=rooms,
        calculator=rooms,
        persister=rooms,
        locks=rooms,
        keyring=keyring,
        remote=RemoteEvents(client),
        server_allowed=access.server_allowed,
    )
    return Scenario(remote, local, dag, rooms, client, keyring, handler)


@pytest.fixture
async def scenario(room_version: RoomVersion) -> Scenario:
    return await make_scenario(room_version)
