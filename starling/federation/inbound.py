"""Everything that answers other servers about rooms, built in one place for app.py: the
receipt pipeline (`FederationEventHandler`), inbound transactions, the EDU registry, the
DAG reads, name queries, backfill, and the room access rules (ACL, membership, history
visibility for servers) they share."""

from __future__ import annotations

from dataclasses import dataclass

from starling.federation.backfill import Backfiller
from starling.federation.edu import EduRegistry
from starling.federation.event_handler import FederationEventHandler
from starling.federation.ports import (
    FederationClientPort,
    PersisterPort,
    RoomLocksPort,
    StateCalculatorPort,
)
from starling.federation.queries import FederationQueries
from starling.federation.reads import FederationReads
from starling.federation.receipt.remote import RemoteEvents
from starling.federation.receipt.signatures import EventSignatureVerifier
from starling.federation.room_access import RoomAccess
from starling.federation.transactions import TransactionReceiver
from starling.storage.events import EventStore
from starling.storage.federation_transactions import InboundTransactionStore
from starling.storage.memberships import MembershipStore
from starling.storage.state import StateStore


@dataclass(frozen=True)
class FederationInbound:
    events: FederationEventHandler
    transactions: TransactionReceiver
    edus: EduRegistry
    reads: FederationReads
    queries: FederationQueries
    backfiller: Backfiller
    access: RoomAccess


def build_federation_inbound(
    *,
    server_name: str,
    transaction_store: InboundTransactionStore,
    event_store: EventStore,
    state_store: StateStore,
    membership_store: MembershipStore,
    calculator: StateCalculatorPort,
    persister: PersisterPort,
    locks: RoomLocksPort,
    keyring: EventSignatureVerifier,
    client: FederationClientPort,
    queries: FederationQueries,
) -> FederationInbound:
    access = RoomAccess(event_store, state_store, membership_store)
    remote = RemoteEvents(client)
    handler = FederationEventHandler(
        events=event_store,
        state=state_store,
        memberships=membership_store,
        calculator=calculator,
        persister=persister,
        locks=locks,
        keyring=keyring,
        remote=remote,
        server_allowed=access.server_allowed,
    )
    edus = EduRegistry(access.server_allowed)
    return FederationInbound(
        events=handler,
        transactions=TransactionReceiver(handler, event_store, transaction_store, edus),
        edus=edus,
        reads=FederationReads(server_name, event_store, access),
        queries=queries,
        backfiller=Backfiller(server_name, event_store, membership_store, remote, handler),
        access=access,
    )
