"""What the HTTP edge may call: the domain services, built by `starling.app`.

Route tables take the service each route group calls from here and hand it only those;
no handler sees the database or a store (the import rules forbid `api → storage`).
"""

from __future__ import annotations

from dataclasses import dataclass

from starling.account_data.service import AccountDataService
from starling.accounts.auth import RequestAuthenticator
from starling.accounts.client_ips import ClientIps
from starling.accounts.oidc import SsoService
from starling.accounts.registration_tokens import RegistrationTokens
from starling.accounts.service import AccountService
from starling.accounts.shared_secret import SharedSecretRegistration
from starling.admin.audit import AuditLog
from starling.admin.history import AdminHistory
from starling.admin.media import AdminMedia
from starling.admin.notices import ServerNotices
from starling.admin.reports import ContentReports
from starling.admin.rooms import AdminRooms
from starling.admin.users import AdminUsers
from starling.appservice.queries import AppServiceQueries
from starling.config import Config
from starling.directory.service import DirectoryService
from starling.directory.summary import RoomSummaries
from starling.e2ee.dehydrated import DehydratedDevices
from starling.e2ee.services import E2ee
from starling.federation.inbound import FederationInbound
from starling.federation.membership import ResidentMembership
from starling.federation.sender import FederationSender
from starling.federation.third_party_invites import ThirdPartyInviteExchange
from starling.federation.timestamps import TimestampLookup
from starling.federation.transport import FederationTransport
from starling.identity.service import ThreepidService
from starling.media.service import MediaService
from starling.openid.tokens import OpenIdTokens
from starling.presence.service import PresenceService
from starling.profile.service import ProfileService
from starling.push.notifications import NotificationsService
from starling.push.pushers import PusherService
from starling.push.service import PushRulesService
from starling.ratelimit import RateLimits
from starling.receipts.service import ReceiptsService
from starling.relations.service import RelationsService
from starling.rooms.client_events import ClientEvents
from starling.rooms.creation import RoomCreator
from starling.rooms.delayed import DelayedEvents
from starling.rooms.event_service import RoomEventService
from starling.rooms.hierarchy import SpaceHierarchy
from starling.rooms.membership import MembershipService
from starling.rooms.peeks import PeekService
from starling.rooms.upgrade import RoomUpgrader
from starling.search.service import SearchService
from starling.sync.filters import SyncFilters
from starling.sync.history import RoomHistory
from starling.sync.legacy import LegacySync
from starling.sync.service import SyncService
from starling.sync.sliding.service import SlidingSyncService
from starling.typing.service import TypingService
from starling.user_directory.service import UserDirectoryService
from starling.voip import TurnServers
from starling.webhooks.incoming import IncomingWebhooks


@dataclass
class Services:
    """The domain services the API edge calls, built once in `app.build_services`."""

    config: Config
    # accounts
    auth: RequestAuthenticator
    accounts: AccountService
    # single sign-on: OpenID Connect providers for m.login.sso (accounts/oidc.py)
    sso: SsoService
    shared_secret_registration: SharedSecretRegistration
    # where devices were last seen (every authenticated request tells it)
    client_ips: ClientIps
    registration_tokens: RegistrationTokens
    # the admin API's services (Synapse's /_synapse/admin)
    admin_users: AdminUsers
    audit_log: AuditLog
    admin_rooms: AdminRooms
    admin_media: AdminMedia
    # purging history, redacting a user's events, retention policies
    admin_history: AdminHistory
    # content reports: users report events and rooms, admins read them
    reports: ContentReports
    server_notices: ServerNotices
    # rooms
    rate_limits: RateLimits
    room_events: RoomEventService
    room_creator: RoomCreator
    membership: MembershipService
    room_upgrader: RoomUpgrader
    # identity servers: 3PID binds and unbinds, third-party invites
    threepids: ThreepidService
    third_party_exchange: ThirdPartyInviteExchange
    client_events: ClientEvents
    # media
    media: MediaService
    # around the room: typing, receipts, account data, presence, profiles, the directory
    typing: TypingService
    receipts: ReceiptsService
    account_data: AccountDataService
    presence: PresenceService
    profile: ProfileService
    directory: DirectoryService
    # push rules, pushers and /notifications (delivery is behind Components)
    push_rules: PushRulesService
    pushers: PusherService
    notifications: NotificationsService
    # sync: /sync, filters, room reads
    sync: SyncService
    # peeking into world-readable rooms (MSC2753): rooms.peek in /sync
    peeks: PeekService
    sliding_sync: SlidingSyncService
    sync_filters: SyncFilters
    room_history: RoomHistory
    # the deprecated r0 reads: /events, /initialSync, /rooms/{roomId}/initialSync
    legacy_sync: LegacySync
    # relations: /relations and /threads (bundled aggregations go through the formatter)
    relations: RelationsService
    # end-to-end encryption: keys, cross-signing, to-device, device lists, key backup
    e2ee: E2ee
    # dehydrated devices (MSC3814)
    dehydrated_devices: DehydratedDevices
    # delayed events (MSC4140): scheduled sends, sent by a timer
    delayed_events: DelayedEvents
    # discovery: the user directory, server-side search of room events, space hierarchies
    user_directory: UserDirectoryService
    search: SearchService
    hierarchy: SpaceHierarchy
    # room summaries (/v1/room_summary, MSC3266): the hierarchy's entry for one room
    room_summaries: RoomSummaries
    # OpenID tokens for third parties (client request_token, federation userinfo)
    openid: OpenIdTokens
    # /timestamp_to_event (client and federation)
    timestamps: TimestampLookup
    # TURN server credentials (/voip/turnServer)
    turn: TurnServers
    # application services: their queries (users, aliases, third-party lookups, ping)
    app_service_queries: AppServiceQueries
    # incoming webhooks (Starling's own): a POST to a secret URL posts to a room
    incoming_webhooks: IncomingWebhooks
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
