"""The typed bag of services the HTTP handlers receive, built by starling.app.

Handlers take what they need from it; nothing here constructs anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from starling.account_data.service import AccountDataService
from starling.accounts.auth import RequestAuthenticator
from starling.accounts.passwords import PasswordHasher
from starling.accounts.service import AccountService
from starling.accounts.shared_secret import SharedSecretRegistration
from starling.config import Config
from starling.directory.service import DirectoryService
from starling.e2ee.services import E2ee
from starling.federation.inbound import FederationInbound
from starling.federation.membership import ResidentMembership
from starling.federation.sender import FederationSender
from starling.federation.transport import FederationTransport
from starling.media.service import MediaService
from starling.notifier import Notifier
from starling.presence.service import PresenceService
from starling.profile.service import ProfileService
from starling.protocol.signing import SigningKey
from starling.push.pushers import PusherService
from starling.push.service import PushRulesService
from starling.ratelimit import RateLimits
from starling.receipts.service import ReceiptsService
from starling.receipts.unread import UnreadCounts
from starling.rooms.creation import RoomCreator
from starling.rooms.event_service import RoomEventService
from starling.rooms.hierarchy import SpaceHierarchy
from starling.rooms.locks import RoomLocks
from starling.rooms.membership import MembershipService
from starling.rooms.persister import EventPersister
from starling.rooms.relations import RelationsService
from starling.rooms.state_calculator import StateCalculator
from starling.rooms.upgrade import RoomUpgrader
from starling.search.service import SearchService
from starling.storage.accounts import AccountStore
from starling.storage.aliases import AliasStore
from starling.storage.database import Database
from starling.storage.events import EventStore
from starling.storage.filters import FilterStore
from starling.storage.memberships import MembershipStore
from starling.storage.profiles import ProfileStore
from starling.storage.state import StateStore
from starling.storage.streams import StreamIdGenerator
from starling.sync.history import RoomHistory
from starling.sync.service import SyncService
from starling.typing.service import TypingService
from starling.user_directory.service import UserDirectoryService


@dataclass
class Services:
    """Everything the HTTP layer may call, built once in `build_services`.

    Each area adds its collaborators here and wires them in `build_services`; handlers
    receive this and use only what they need.
    """

    config: Config
    db: Database
    signing_key: SigningKey
    # accounts
    account_store: AccountStore
    passwords: PasswordHasher
    auth: RequestAuthenticator
    accounts: AccountService
    shared_secret_registration: SharedSecretRegistration
    # rooms
    events_stream: StreamIdGenerator
    event_store: EventStore
    state_store: StateStore
    membership_store: MembershipStore
    profile_store: ProfileStore
    alias_store: AliasStore
    rate_limits: RateLimits
    room_events: RoomEventService
    # the event path every federation flow shares (DESIGN §6): the per-room write lock,
    # the state calculator and the one persister
    room_locks: RoomLocks
    state_calculator: StateCalculator
    persister: EventPersister
    room_creator: RoomCreator
    membership: MembershipService
    room_upgrader: RoomUpgrader
    # media
    media: MediaService
    # around the room: wakes /sync long-polls; typing, receipts, unread counts, account
    # data, presence (the SyncExtensions), profiles and the directory
    notifier: Notifier
    typing: TypingService
    receipts: ReceiptsService
    unread_counts: UnreadCounts
    account_data: AccountDataService
    presence: PresenceService
    profile: ProfileService
    directory: DirectoryService
    # push rules (their evaluation feeds unread counts) and pushers (stored, not delivered)
    push_rules: PushRulesService
    pushers: PusherService
    # sync: /sync (extensions register with `sync.add_extension`), filters, room reads
    sync: SyncService
    room_history: RoomHistory
    filter_store: FilterStore
    # relations: /relations and /threads (bundled aggregations go through the formatter)
    relations: RelationsService
    # end-to-end encryption: keys, cross-signing, to-device, device lists, key backup
    e2ee: E2ee
    # discovery: the user directory, server-side search of room events, space hierarchies
    user_directory: UserDirectoryService
    search: SearchService
    hierarchy: SpaceHierarchy
    # federation transport: signed outbound client, keyring, key answers, inbound limits
    federation: FederationTransport
    # outbound federation: the per-destination transaction queues
    federation_sender: FederationSender
    # federation inbound: the receipt pipeline, /send, the DAG reads, queries, backfill
    federation_inbound: FederationInbound
    # the resident side of make_join/send_join, leaves, knocks and invites
    federation_membership: ResidentMembership

    @property
    def server_name(self) -> str:
        return self.config.server_name
