"""The composition root: builds every service with explicit arguments and the HTTP apps.

Nothing else in Starling constructs services; each one receives exactly the collaborators
it uses here. `Homeserver.start` opens the database (applying migrations), builds the
services and one aiohttp application per configured listener; `stop` drains them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from starling.account_data.service import AccountDataService
from starling.accounts.auth import RequestAuthenticator
from starling.accounts.client_ips import ClientIps
from starling.accounts.email import EmailValidation
from starling.accounts.external import ExternalAccounts
from starling.accounts.oidc import SsoService
from starling.accounts.passwords import PasswordHasher
from starling.accounts.registration import local_user_id
from starling.accounts.registration_tokens import RegistrationTokens
from starling.accounts.service import AccountService
from starling.accounts.shared_secret import SharedSecretRegistration
from starling.accounts.uia import UserInteractiveAuth
from starling.admin.audit import AuditLog
from starling.admin.history import AdminHistory
from starling.admin.media import AdminMedia
from starling.admin.notices import ServerNotices
from starling.admin.reports import ContentReports
from starling.admin.rooms import AdminRooms
from starling.admin.users import AdminUsers
from starling.api.admin.console import add_console_routes
from starling.api.admin.registration import admin_table
from starling.api.cbor import cbor_middleware
from starling.api.client.email import email_submit_table
from starling.api.client.routes import client_table
from starling.api.client.sso import SsoRoutes, oidc_callback_table
from starling.api.connection_guard import ConnectionLimits, GuardedAppRunner, PeerCounter
from starling.api.discovery import DiscoveryResource, register_metrics
from starling.api.federation.auth import (
    FEDERATION_AUTH,
    OriginAuthenticator,
    authenticate_origin,
    release_slot_middleware,
)
from starling.api.federation.routes import federation_table, keys_table, openid_table
from starling.api.http import make_web_app
from starling.api.inprocess import in_process
from starling.api.media import media_tables
from starling.api.routing import Guards, mount
from starling.api.services import Services
from starling.api.webhooks import webhooks_table
from starling.appservice.client import AppServiceClient
from starling.appservice.queries import AppServiceQueries
from starling.appservice.registration import load_registrations
from starling.appservice.registry import AppServiceRegistry
from starling.appservice.sender import AppServiceSender, E2eePositions
from starling.cluster.roles import ClusterRoles
from starling.config import Config, ConfigError, Listener, parse_size
from starling.directory.publication import PublicationRules
from starling.directory.service import DirectoryService
from starling.directory.service import RemotePublicRooms as RemotePublicRoomsFetcher
from starling.directory.summary import RoomSummaries
from starling.e2ee.dehydrated import DehydratedDevices
from starling.e2ee.federation_keys import RemoteKeys
from starling.e2ee.remote_device_lists import RemoteDeviceLists
from starling.e2ee.services import build_e2ee
from starling.errors import MatrixError
from starling.federation.device_lists import DeviceListFederation
from starling.federation.hierarchy import RemoteHierarchy
from starling.federation.inbound import FederationInbound, build_federation_inbound
from starling.federation.ip_ranges import IPRangePolicy
from starling.federation.media import FederationMediaFetcher
from starling.federation.membership import ResidentMembership
from starling.federation.presence import PresenceFederation
from starling.federation.public_rooms import RemotePublicRooms
from starling.federation.queries import FederationQueries
from starling.federation.remote_membership import OutOfBandMemberships, RemoteMembership
from starling.federation.remote_queries import RemoteQueries
from starling.federation.room_edus import RoomEdus
from starling.federation.sender import FederationSender, JoinedHosts
from starling.federation.sender.backoff import BackoffPolicy
from starling.federation.third_party_invites import ThirdPartyInviteExchange
from starling.federation.timestamps import TimestampLookup
from starling.federation.transport import FederationTransport, build_federation_transport
from starling.identity.client import IdentityServerClient
from starling.identity.service import ThreepidService
from starling.media.filestore import FileStore
from starling.media.service import MediaService
from starling.modules.api import (
    MediaUpload,
    ModuleApi,
    ModuleCallbacks,
    ModuleServices,
    load_modules,
)
from starling.notifier import Notifier
from starling.openid.tokens import OpenIdTokens
from starling.presence.service import PresenceService
from starling.profile.service import ProfileService
from starling.protocol.event import Event
from starling.protocol.power_levels import server_of
from starling.protocol.signing import SigningKey
from starling.push.delivery import PushSender, room_details_from
from starling.push.evaluator import PushEvaluator
from starling.push.notifications import NotificationsService
from starling.push.pushers import PusherService
from starling.push.service import PushRulesService
from starling.push.upgrade import UpgradeUserState
from starling.ratelimit import RateLimits, TokenBuckets
from starling.receipts.service import ReceiptsService
from starling.receipts.unread import UnreadCounts
from starling.relations.service import RelationAggregator, RelationsService
from starling.rooms.builder import EventBuilder
from starling.rooms.client_events import ClientEvents
from starling.rooms.creation import RoomCreator
from starling.rooms.delayed import DelayedEvents
from starling.rooms.ephemeral import EphemeralMessages
from starling.rooms.erasure import ErasedUsers
from starling.rooms.event_service import RoomEventService
from starling.rooms.guests import GuestEvictor
from starling.rooms.hierarchy import SpaceHierarchy
from starling.rooms.locks import RoomLocks
from starling.rooms.membership import MembershipService
from starling.rooms.peeks import PeekService
from starling.rooms.persister import EventPersister
from starling.rooms.retention import RetentionLimits, RetentionWindow
from starling.rooms.state_calculator import StateCalculator
from starling.rooms.upgrade import RoomUpgrader
from starling.rooms.visibility import HistoryVisibility
from starling.search.service import SearchService
from starling.storage.account_data import AccountDataStore
from starling.storage.accounts import AccountStore, UIAuthStore, UserExists
from starling.storage.admin_history import HistoryStore
from starling.storage.admin_media import AdminMediaStore
from starling.storage.admin_rooms import AdminRoomStore
from starling.storage.admin_tasks import AdminTaskStore
from starling.storage.admin_users import AdminUserStore
from starling.storage.aliases import AliasExists, AliasStore
from starling.storage.appservice import AppServiceStore
from starling.storage.audit_log import AuditLogStore
from starling.storage.database import Database, open_database
from starling.storage.database import DatabaseConfig as StorageConfig
from starling.storage.dehydrated_devices import DehydratedDeviceStore
from starling.storage.delayed_events import DelayedEventStore
from starling.storage.directory import DirectoryStore
from starling.storage.e2ee_stores import E2eeStores
from starling.storage.event_expiry import EventExpiryStore
from starling.storage.event_timestamps import EventTimestampStore
from starling.storage.event_writes import EventWrites
from starling.storage.events import EventStore
from starling.storage.external_login import ExternalLoginStore
from starling.storage.federation_sender import FederationSenderStore
from starling.storage.federation_transactions import InboundTransactionStore
from starling.storage.filters import FilterStore
from starling.storage.media import MediaStore
from starling.storage.memberships import MembershipStore
from starling.storage.openid import OpenIdStore
from starling.storage.peeks import PeekStore
from starling.storage.presence import PresenceStore
from starling.storage.profiles import ProfileStore
from starling.storage.push_actions import PushActionStore
from starling.storage.pushers import PusherStore
from starling.storage.receipts import Receipt, ReceiptStore
from starling.storage.relations import RelationStore
from starling.storage.remote_device_lists import DeviceListOutboxStore
from starling.storage.reports import ReportStore
from starling.storage.search import SearchStore
from starling.storage.server_keys import ServerKeyStore
from starling.storage.sliding_connections import SlidingConnectionStore
from starling.storage.sliding_sync import SlidingSyncStore
from starling.storage.state import StateStore
from starling.storage.streams import StreamIdGenerator
from starling.storage.threepid_validation import ThreepidValidationStore
from starling.storage.threepids import ThreepidBindingStore
from starling.storage.user_directory import UserDirectoryStore
from starling.storage.webhooks import WebhookStore
from starling.sync.extension import SyncExtension
from starling.sync.filters import SyncFilters
from starling.sync.legacy import LegacySync
from starling.sync.sliding.wiring import build_sliding_sync
from starling.sync.wiring import build_sync
from starling.typing.service import TypingService
from starling.user_directory.service import UserDirectoryService
from starling.voip import TurnServers
from starling.webhooks.incoming import IncomingWebhooks
from starling.webhooks.outgoing import OutgoingWebhooks

if TYPE_CHECKING:
    # Imported where used: Redis (workers) and the CoAP/Noise stack (low_bandwidth) are
    # off by default, and their imports cost ~20 MiB of idle memory.
    from starling.cluster.bus import ClusterBus
    from starling.cluster.ratelimit import RedisBuckets
    from starling.cluster.wiring import ClusterParts
    from starling.lowbandwidth.server import LowBandwidthServer

logger = logging.getLogger(__name__)

# Largest request body on a listener serving federation: a full transaction, with room.
FEDERATION_MAX_REQUEST_BODY = 16 * 1024 * 1024

# How long in-flight requests may run on after SIGTERM before they are cut.
SHUTDOWN_GRACE_SECONDS = 3.0


def storage_config(config: Config) -> StorageConfig:
    """Where the storage layer finds the database that config.database describes."""
    args = config.database.args
    if config.database.is_sqlite:
        url = (
            args.database
            if args.database == ":memory:"
            else str(config.resolve_path(args.database))
        )
    else:
        url = config.database.postgres_dsn()
    return StorageConfig(url=url, pool_min_size=args.cp_min, pool_max_size=args.cp_max)


def tls_context(config: Config) -> ssl.SSLContext:
    """The server-side TLS context of `tls: true` listeners (tls_certificate_path and
    tls_private_key_path, PEM)."""
    assert config.tls_certificate_path and config.tls_private_key_path  # config checks it
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert = config.resolve_path(config.tls_certificate_path)
    key = config.resolve_path(config.tls_private_key_path)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise RuntimeError(f"cannot load TLS certificate {cert} / key {key}: {e}") from None
    return context


def load_signing_key(config: Config) -> SigningKey:
    path = config.resolve_path(config.signing_key_path)
    try:
        text = path.read_text(encoding="ascii")
    except OSError as e:
        raise RuntimeError(
            f"cannot read signing key {path}: {e.strerror} (starling generate-config writes one)"
        ) from None
    return SigningKey.from_key_file(text)


def load_app_services(config: Config) -> AppServiceRegistry:
    """The registrations in `app_service_config_files`; ConfigError if any is bad."""
    paths = [config.resolve_path(p) for p in config.app_service_config_files]
    return AppServiceRegistry(load_registrations(paths, config.server_name))


async def build_services(
    config: Config,
    db: Database,
    signing_key: SigningKey,
    *,
    federation: FederationTransport | None = None,
) -> Components:
    """Every service; `federation` replaces the federation transport (tests give one
    with fake DNS)."""
    federation = federation or build_federation_transport(config, ServerKeyStore(db), signing_key)
    account_store = AccountStore(db)
    app_services = load_app_services(config)
    app_service_client = AppServiceClient(
        verify_certificates=not config.use_insecure_ssl_client_just_for_testing_do_not_use
    )
    events_stream = await StreamIdGenerator.create(db, "events")
    event_store = EventStore(db, cache_size=parse_size(config.event_cache_size))
    state_store = StateStore(db)
    membership_store = MembershipStore(db)
    retention = RetentionLimits(config.retention)
    # What clients may read (history visibility, then retention): one judge for every path.
    erased = ErasedUsers(account_store.erased_among, config.server_name)
    visibility = HistoryVisibility(
        event_store,
        state_store,
        membership_store,
        RetentionWindow(retention, event_store, state_store) if retention.enabled else None,
        erased,
    )
    # /sync asks "which rooms / whose memberships changed since": remembered in memory
    # from here on (with workers, other processes' changes arrive through the bus), so
    # most incremental syncs need no query for it.
    event_store.track_room_changes(events_stream.current_position())
    state_store.member_changes.start(events_stream.current_position())
    membership_store.use_member_changes(state_store.member_changes)
    profile_store = ProfileStore(db)
    alias_store = AliasStore(db)
    # With workers, other processes write relations and keys too: the memories of
    # "this new event has no children" and of each device's key counts are for one
    # process only.
    single_process = not (config.redis is not None and config.redis.enabled)
    relation_store = RelationStore(db)
    relation_store.remember_childless = single_process
    search_store = SearchStore(db)

    async def user_exists(user_id: str) -> bool:
        return await account_store.user_exists(user_id)

    async def alias_exists(alias: str) -> bool:
        return await alias_store.get_alias(alias) is not None

    app_service_queries = AppServiceQueries(
        config.server_name,
        app_services,
        app_service_client,
        user_exists=user_exists,
        alias_exists=alias_exists,
    )

    async def profile_lookup(user_id: str) -> dict[str, Any]:
        profile = await profile_store.get_profile(user_id)
        if profile is None and await app_service_queries.query_user(user_id):
            # An unknown user of an application service's namespace (an invite, say):
            # the service was asked and has created it.
            profile = await profile_store.get_profile(user_id)
        return profile or {}

    state_calculator = StateCalculator(event_store, state_store)
    persister = EventPersister(
        event_store,
        state_store,
        membership_store,
        EventWrites(
            db,
            event_store,
            state_store,
            membership_store,
            events_stream,
            await StreamIdGenerator.create(db, "backfill"),
            relation_store,
            search_store,
        ),
        state_calculator,
    )
    room_locks = RoomLocks()
    room_events = RoomEventService(
        event_store,
        state_store,
        EventBuilder(config.server_name, signing_key),
        state_calculator,
        persister,
        room_locks,
    )
    rate_limits = RateLimits(config)
    membership = MembershipService(
        room_events,
        membership_store,
        profile_lookup,
        server_name=config.server_name,
        rate_limits=rate_limits,
    )
    room_events.add_listener(
        GuestEvictor(membership_store, membership, account_store.guests_among).on_event,
        writer_only=True,
    )
    ephemeral_messages = None
    if config.enable_ephemeral_messages:
        ephemeral_messages = EphemeralMessages(EventExpiryStore(db, event_store), event_store)
        room_events.add_listener(ephemeral_messages.on_new_event, writer_only=True)
    federation_sender = FederationSender(
        config.server_name,
        FederationSenderStore(db),
        event_store,
        JoinedHosts(state_store, event_store, membership_store),
        federation.client,
        events_stream.current_position,
    )
    # Only a wake-up: the sender reads the events stream from its stored positions.
    room_events.add_listener(federation_sender.on_new_event)
    federation.on_inbound_request.append(federation_sender.destination_is_up)

    async def invite(room_id: str, sender: str, target: str, is_direct: bool) -> Event:
        return await membership.invite(
            room_id, sender, target, is_direct=is_direct, ratelimit=False
        )

    async def create_alias(alias: str, room_id: str, creator: str) -> None:
        try:
            await alias_store.create_alias(alias, room_id, creator)
        except AliasExists:
            raise MatrixError(400, "M_ROOM_IN_USE", f"Room alias {alias} already exists") from None

    async def alias_taken(alias: str) -> bool:
        return await alias_store.get_alias(alias) is not None

    notifier = Notifier()
    extras = await build_room_extras(
        config,
        db,
        notifier,
        account_store,
        event_store,
        events_stream,
        membership_store,
        profile_store,
        alias_store,
        room_events,
        visibility,
        RemotePublicRooms(federation.client).fetch,
        RemoteQueries(federation.client),
    )

    async def may_publish(user_id: str, room_id: str) -> bool:
        user = await account_store.get_user(user_id)
        return await extras.directory.may_publish(
            user_id, room_id, admin=user is not None and user.admin
        )

    room_creator = RoomCreator(
        config.server_name,
        room_events,
        config.default_room_version,
        profile_lookup,
        alias_creator=create_alias,
        publish_room=extras.directory.publish,
        may_publish=may_publish,
        invite=invite,
        alias_taken=alias_taken,
        admins_only=config.restrict_room_creation_to_admins,
    )

    async def backfill(room_id: str) -> bool:
        # federation_inbound is built further down (it needs the directory and profiles).
        return await federation_inbound.backfiller.backfill(room_id)

    sync = build_sync(
        FilterStore(db),
        event_store,
        state_store,
        membership_store,
        room_events,
        notifier,
        backfill,
        visibility=visibility,
    )
    for extension in extras.sync_extensions():
        sync.sync.add_extension(extension)
    peeks = PeekService(
        PeekStore(db, await StreamIdGenerator.create(db, "peeks")),
        state_store,
        visibility,
        notifier,
        config.server_name,
    )
    sync.sync.use_peeks(peeks)
    room_events.add_listener(peeks.on_event, writer_only=True)
    sync.sync.use_ignored_users(extras.account_data.get_ignored_users)
    sync.formatter.use_aggregations(
        RelationAggregator(
            event_store,
            relation_store,
            extras.account_data.get_ignored_users,
            visibility.filter_events,
        ).bundle
    )
    relations = RelationsService(
        event_store,
        relation_store,
        visibility,
        sync.formatter,
        sync.room_history.access,
    )
    passwords = PasswordHasher()
    auth = RequestAuthenticator(account_store, app_services)
    client_ips = ClientIps(account_store)
    accounts = AccountService(
        config=config,
        store=account_store,
        uia=UserInteractiveAuth(UIAuthStore(db)),
        passwords=passwords,
        auth=auth,
        profiles=profile_store,
        memberships=membership_store,
        membership=membership,
        rate_limits=rate_limits,
        app_services=app_services,
    )
    external_accounts = ExternalAccounts(
        config.server_name,
        account_store,
        profile_store,
        ExternalLoginStore(db),
        app_services,
        set_threepids=AdminUserStore(db).set_threepids,
    )
    accounts.use_external_login(external_accounts, ExternalLoginStore(db))
    accounts.add_erasure_listener(erased.changed)
    if config.email is not None:
        accounts.use_email(
            EmailValidation(config, ThreepidValidationStore(db), buckets=rate_limits.buckets)
        )
    sso = SsoService(
        config, ExternalLoginStore(db), accounts.login_external, buckets=rate_limits.buckets
    )
    accounts.sso_providers = sso.identity_providers()
    extras.directory.use_app_services(app_services, app_service_queries.query_alias)
    app_service_sender = AppServiceSender(
        app_services,
        AppServiceStore(db),
        event_store,
        membership_store,
        alias_store,
        app_service_client,
        events_stream.current_position,
    )
    # Only a wake-up: the sender reads the events stream from its stored positions.
    room_events.add_listener(app_service_sender.on_new_event)
    incoming_webhooks, outgoing_webhooks = build_webhooks(
        config,
        db,
        account_store,
        profile_store,
        membership_store,
        membership,
        room_events,
        event_store,
        events_stream.current_position,
        rate_limits.buckets,
    )
    room_events.add_listener(outgoing_webhooks.on_new_event)

    def notify_e2ee(users: Iterable[str]) -> None:
        notifier.notify(users=users)
        # New to-device messages or device-list changes: MSC2409/MSC3202 services look.
        app_service_sender.wake()

    e2ee_stores = await E2eeStores.open(db)
    e2ee_stores.keys.remember_counts = single_process
    e2ee = build_e2ee(
        config.server_name,
        e2ee_stores,
        account_store,
        event_store,
        membership_store,
        notify_e2ee,
        rate_limits,
    )
    app_service_sender.use_e2ee(
        E2eePositions(e2ee.to_device.current_position, e2ee.device_lists.current_position)
    )
    room_events.add_listener(e2ee.device_lists.on_new_event, writer_only=True)
    accounts.add_device_listener(e2ee.keys.devices_changed)
    dehydrated_devices = DehydratedDevices(
        DehydratedDeviceStore(db),
        e2ee.keys,
        e2ee.to_device,
        accounts.create_device,
        accounts.delete_devices,
        lambda user_id, device_id: _device_exists(accounts, user_id, device_id),
    )
    accounts.add_device_listener(dehydrated_devices.devices_changed)
    sync.sync.add_extension(e2ee.to_device_extension)
    sync.sync.add_extension(e2ee.device_lists_extension)
    sliding_sync = build_sliding_sync(
        SlidingSyncStore(db),
        SlidingConnectionStore(db),
        event_store,
        state_store,
        membership_store,
        extras.account_data_store,
        room_events,
        notifier,
        sync.sync,
        sync.formatter,
        extras.account_data.get_ignored_users,
        e2ee.keys.key_counts,
        extras.unread_counts.counts,
        visibility=visibility,
    )
    sliding_sync.use_presence(extras.presence.set_presence_from_sync)
    accounts.add_device_listener(sliding_sync.devices_changed)
    accounts.add_device_listener(peeks.devices_changed)
    user_directory = UserDirectoryService(
        UserDirectoryStore(db),
        search_all_users=config.user_directory.search_all_users,
        enabled=config.user_directory.enabled,
        server_name=config.server_name,
        events=event_store,
    )
    room_events.add_listener(user_directory.on_new_event)
    room_events.add_state_listener(user_directory.on_state_change)
    search = SearchService(
        search_store,
        event_store,
        state_store,
        membership_store,
        visibility,
        sync.formatter,
        sync.room_history.state_events,
    )
    federation_inbound = build_federation_inbound(
        server_name=config.server_name,
        transaction_store=InboundTransactionStore(db),
        event_store=event_store,
        state_store=state_store,
        membership_store=membership_store,
        calculator=state_calculator,
        persister=persister,
        locks=room_locks,
        keyring=federation.keyring,
        client=federation.client,
        queries=FederationQueries(config.server_name, extras.directory, extras.profile),
    )
    federation_inbound.reads.use_erased(erased)
    resident, remote = build_federation_membership(
        config,
        signing_key,
        federation,
        federation_inbound,
        federation_sender,
        event_store,
        state_store,
        membership_store,
        account_store,
        persister,
        room_locks,
    )
    membership.use_remote(remote)
    # To-device messages across servers: a persisted outbox the sender reads, and the
    # inbound EDU handler.
    e2ee.federated_to_device.wake = federation_sender.stored_edus_added
    federation_sender.use_stored_edus(e2ee.federated_to_device)
    federation_inbound.edus.register("m.direct_to_device", e2ee.federated_to_device.on_edu)
    # Keys of other servers' users, for our clients' /keys/query and /keys/claim.
    remote_keys = RemoteKeys(federation.client)
    e2ee.keys.remote = remote_keys

    async def shares_room_with_ours(user_id: str) -> bool:
        sharing = await membership_store.users_sharing_a_room(user_id)
        return any(server_of(u) == config.server_name for u in sharing)

    # The cache of remote users' device lists (resynced through /user/devices).
    remote_device_lists = RemoteDeviceLists(
        config.server_name,
        e2ee.device_list_store,
        remote_keys,
        shares_room_with_ours,
        e2ee.device_lists.mark_remote_changed,
    )
    e2ee.keys.remote_cache = remote_device_lists

    async def remote_master_keys(requester: str, users: Sequence[str]) -> dict[str, Any]:
        answer = await e2ee.keys.query(requester, {u: [] for u in users})
        masters: dict[str, Any] = answer["master_keys"]
        return masters

    e2ee.cross_signing.remote_master_keys = remote_master_keys
    e2ee.remote_device_lists = remote_device_lists
    e2ee.device_lists.on_left = remote_device_lists.maybe_forget
    device_list_federation = DeviceListFederation(
        config.server_name,
        federation_sender,
        membership_store.users_sharing_a_room,
        e2ee.keys.query,
        e2ee.device_lists.mark_remote_changed,
        e2ee.device_list_store,
        remote_device_lists,
        DeviceListOutboxStore(db),
        federation_sender.stored_edus_added,
        e2ee.device_lists.new_position,
    )
    # Device-list updates go before to-device messages in each transaction, so that the
    # receiver knows a device before its first olm message.
    federation_sender.use_stored_edus(device_list_federation, first=True)
    e2ee.on_stop.append(device_list_federation.close)
    e2ee.device_lists.listeners.append(device_list_federation.on_change)
    federation_inbound.edus.register(
        "m.device_list_update", device_list_federation.on_device_list_update
    )
    federation_inbound.edus.register(
        "m.signing_key_update", device_list_federation.on_signing_key_update
    )
    presence_federation = PresenceFederation(
        config.server_name,
        federation_sender,
        membership_store.users_sharing_a_room,
        extras.presence,
        membership_store.get_joined_users,
    )
    room_events.add_listener(presence_federation.on_new_event)
    extras.presence.is_local = lambda user_id: server_of(user_id) == config.server_name
    extras.presence.on_local_changes = presence_federation.local_changes
    federation_inbound.edus.register("m.presence", presence_federation.on_edu)
    room_edus = RoomEdus(
        config.server_name,
        federation_sender,
        membership_store.get_joined_users,
        extras.typing,
        extras.receipts.on_remote_receipt,
    )
    extras.typing.on_local_change = room_edus.local_typing
    extras.receipts.on_local_receipt = room_edus.local_receipt
    federation_inbound.edus.register("m.typing", room_edus.on_typing)
    if app_service_sender.wants_ephemeral:
        forward_app_service_ephemeral(extras, app_service_sender)
    federation_inbound.edus.register("m.receipt", room_edus.on_receipt)
    pusher_store = PusherStore(db)
    unread_counts = extras.unread_counts

    async def badge_count(user_id: str) -> int:
        rooms = await membership_store.get_joined_rooms(user_id)
        counts = await unread_counts.counts(user_id, rooms)
        return sum(n for per_thread in counts.values() for n, _ in per_thread.values())

    push_action_store = PushActionStore(db)
    push_evaluator = PushEvaluator(
        push_action_store,
        event_store,
        membership_store,
        extras.push_rules,
        extras.account_data,
        events_stream.current_position,
        lambda user_id: server_of(user_id) == config.server_name,
    )
    push_sender = PushSender(
        pusher_store,
        push_action_store,
        event_store,
        badge_count,
        address_policy=IPRangePolicy(config.ip_range_blacklist, config.ip_range_whitelist),
        verify_certificates=not config.use_insecure_ssl_client_just_for_testing_do_not_use,
        room_details=room_details_from(
            state_store.get_current_state_ids, event_store.get_events_with_meta
        ),
        # The shared retry policy, from the sender's first wait up to a minute.
        backoff=lambda initial_ms: BackoffPolicy(
            initial_ms=initial_ms, short_cap_ms=60_000, long_cap_ms=60_000
        ),
    )
    # The evaluator reads the events stream from its stored position; the listener only
    # wakes it. It tells the sender whose pushers have new notifications.
    room_events.add_listener(push_evaluator.on_new_event)
    # An invite from another server is an out-of-band member event: no new-event
    # listener hears it, only the state listeners.
    room_events.add_state_listener(push_evaluator.on_state_change)
    push_evaluator.on_notified = push_sender.notified
    federation_receipt = extras.receipts.on_local_receipt

    async def on_local_receipt(receipt: Receipt) -> None:
        if federation_receipt is not None:
            await federation_receipt(receipt)
        if receipt.receipt_type in ("m.read", "m.read.private"):
            push_sender.badge_changed(receipt.user_id)

    extras.receipts.on_local_receipt = on_local_receipt
    shared_secret_registration = SharedSecretRegistration(config.registration_shared_secret)
    admin_users = AdminUsers(
        server_name=config.server_name,
        accounts=accounts,
        account_store=account_store,
        store=AdminUserStore(db),
        passwords=passwords,
        profiles=extras.profile,
        profile_store=profile_store,
        memberships=membership_store,
        auth=auth,
        rate_limits=rate_limits,
        shared_secret=shared_secret_registration,
        flush_seen=client_ips.flush,
    )
    await admin_users.load_rate_limit_overrides()
    admin_rooms = AdminRooms(
        server_name=config.server_name,
        store=AdminRoomStore(db, config.server_name, event_store, state_store, membership_store),
        room_events=room_events,
        events=event_store,
        membership=membership,
        memberships=membership_store,
        aliases=alias_store,
        creator=room_creator,
        accounts=account_store,
        profiles=profile_store,
        timestamps=EventTimestampStore(db),
        task_statuses=AdminTaskStore(db),
    )
    membership.use_room_blocks(admin_rooms.is_blocked)
    media = build_media(config, db, FederationMediaFetcher(federation.client), rate_limits.buckets)
    admin_media = AdminMedia(
        server_name=config.server_name,
        store=AdminMediaStore(db, config.server_name),
        media=media,
    )
    threepids = ThreepidService(
        IdentityServerClient(
            config.server_name,
            signing_key,
            address_policy=IPRangePolicy(config.ip_range_blacklist, config.ip_range_whitelist),
            verify_certificates=not config.use_insecure_ssl_client_just_for_testing_do_not_use,
        ),
        ThreepidBindingStore(db),
        room_events,
        profile_lookup,
        config.server_name,
    )

    async def invite_bound_3pid(room_id: str, sender: str, target: str) -> Event:
        return await membership.invite(room_id, sender, target)

    threepids.use_invite(invite_bound_3pid)
    room_creator.use_third_party_invites(threepids.invite)
    accounts.use_unbind_all(threepids.unbind_all)
    membership.use_signed_invites(threepids.accept_signed_invite)

    # A signed 3PID invite for a room on another server: its inviter's server sends it.
    async def send_third_party_invite(
        room_id: str, sender: str, target: str, content: dict[str, Any]
    ) -> Event:
        return await membership.invite(room_id, sender, target, content=content)

    third_party_exchange = ThirdPartyInviteExchange(
        config.server_name,
        federation.client,
        room_events,
        send_third_party_invite,
        threepids.client.key_is_valid,
    )
    threepids.use_exchange(third_party_exchange.exchange, federation_sender.record_relayed)
    room_upgrader = RoomUpgrader(
        config.server_name,
        room_events,
        event_store,
        alias_store,
        is_public=extras.directory.is_public,
        publish=extras.directory.publish,
        copy_user_state=UpgradeUserState(extras.account_data, extras.push_rules).copy,
        joined_users=membership_store.get_joined_users,
    )
    membership.use_after_remote_join(room_upgrader.transfer_after_join)
    reports = ContentReports(
        store=ReportStore(db),
        events=event_store,
        memberships=membership_store,
        rooms=AdminRoomStore(db, config.server_name, event_store, state_store, membership_store),
    )
    server_notices = ServerNotices(
        server_name=config.server_name,
        config=config.server_notices,
        accounts=account_store,
        profiles=profile_store,
        memberships=membership_store,
        membership=membership,
        creator=room_creator,
        room_events=room_events,
        account_data=extras.account_data,
    )
    client_events = ClientEvents(
        config.server_name,
        room_events,
        membership,
        event_store,
        alias_store,
        membership_store,
        rate_limits,
    )
    build_modules(
        config,
        db,
        client_events,
        room_events,
        membership,
        room_creator,
        media,
        accounts,
        external_accounts,
        account_store,
    )
    admin_history = AdminHistory(
        server_name=config.server_name,
        store=HistoryStore(db, config.server_name, event_store),
        room_events=room_events,
        client_events=client_events,
        retention=config.retention,
        tasks=AdminTaskStore(db),
    )
    hierarchy = SpaceHierarchy(
        room_events,
        event_store,
        membership_store,
        server_name=config.server_name,
        remote=RemoteHierarchy(federation.client).fetch,
        server_allowed=federation_inbound.access.server_allowed,
    )
    return Components(
        config=config,
        audit_log=AuditLog(AuditLogStore(db)),
        reports=reports,
        server_notices=server_notices,
        admin_users=admin_users,
        admin_rooms=admin_rooms,
        admin_media=admin_media,
        admin_history=admin_history,
        registration_tokens=RegistrationTokens(account_store),
        openid=OpenIdTokens(config.server_name, OpenIdStore(db)),
        turn=TurnServers(config),
        timestamps=TimestampLookup(
            config.server_name,
            EventTimestampStore(db),
            event_store,
            membership_store,
            federation.client,
            federation_inbound.access,
            federation_inbound.events,
            sync.room_history.access,
        ),
        client_events=client_events,
        sync_filters=SyncFilters(sync.filter_store),
        db=db,
        signing_key=signing_key,
        account_store=account_store,
        passwords=passwords,
        auth=auth,
        accounts=accounts,
        sso=sso,
        shared_secret_registration=shared_secret_registration,
        events_stream=events_stream,
        event_store=event_store,
        state_store=state_store,
        membership_store=membership_store,
        profile_store=profile_store,
        alias_store=alias_store,
        rate_limits=rate_limits,
        room_events=room_events,
        room_locks=room_locks,
        state_calculator=state_calculator,
        persister=persister,
        room_creator=room_creator,
        membership=membership,
        threepids=threepids,
        third_party_exchange=third_party_exchange,
        room_upgrader=room_upgrader,
        media=media,
        notifier=notifier,
        sync=sync.sync,
        peeks=peeks,
        sliding_sync=sliding_sync,
        room_history=sync.room_history,
        legacy_sync=LegacySync(
            sync.sync,
            event_store,
            membership_store,
            visibility,
            sync.formatter,
            sync.room_history,
            notifier,
            extras.presence.presence_events,
            extras.directory.is_public,
            extras.presence.user_syncing,
        ),
        filter_store=sync.filter_store,
        relations=relations,
        typing=extras.typing,
        receipts=extras.receipts,
        unread_counts=extras.unread_counts,
        account_data=extras.account_data,
        presence=extras.presence,
        profile=extras.profile,
        directory=extras.directory,
        push_rules=extras.push_rules,
        pushers=PusherService(pusher_store, events_stream.current_position),
        notifications=NotificationsService(
            push_action_store, event_store, extras.receipt_store, sync.formatter
        ),
        push_sender=push_sender,
        push_evaluator=push_evaluator,
        e2ee=e2ee,
        dehydrated_devices=dehydrated_devices,
        delayed_events=DelayedEvents(DelayedEventStore(db), client_events),
        ephemeral_messages=ephemeral_messages,
        user_directory=user_directory,
        search=search,
        hierarchy=hierarchy,
        room_summaries=RoomSummaries(extras.directory, hierarchy),
        federation=federation,
        federation_sender=federation_sender,
        federation_inbound=federation_inbound,
        federation_membership=resident,
        app_service_queries=app_service_queries,
        incoming_webhooks=incoming_webhooks,
        outgoing_webhooks=outgoing_webhooks,
        client_ips=client_ips,
        app_services=app_services,
        app_service_client=app_service_client,
        app_service_sender=app_service_sender,
    )


def build_modules(
    config: Config,
    db: Database,
    client_events: ClientEvents,
    room_events: RoomEventService,
    membership: MembershipService,
    room_creator: RoomCreator,
    media: MediaService,
    accounts: AccountService,
    external: ExternalAccounts,
    account_store: AccountStore,
) -> None:
    """Load the modules of `modules:` and plug their callbacks in (modules/api.py)."""
    if not config.modules:
        return
    callbacks = ModuleCallbacks()
    data = ExternalLoginStore(db)

    async def register_user(localpart: str, display_name: str | None) -> str:
        user_id = local_user_id(config.server_name, localpart.lower())
        try:
            await account_store.create_user(user_id, None)
        except UserExists:
            raise MatrixError(400, "M_USER_IN_USE", f"{user_id} is already taken") from None
        await profile_store_create(user_id, display_name or localpart.lower())
        return user_id

    profile_store_create = ProfileStore(db).create_profile

    async def send_event(
        room_id: str, sender: str, event_type: str, content: dict[str, Any], state_key: str | None
    ) -> str:
        if state_key is not None:
            return await client_events.set_state(room_id, sender, event_type, state_key, content)
        return await client_events.send(
            room_id, sender, event_type, content, device_id=None, txn_id=secrets.token_hex(8)
        )

    api = ModuleApi(
        config.server_name,
        callbacks,
        ModuleServices(
            user_exists=account_store.user_exists,
            register_user=register_user,
            send_event=send_event,
            get_data=data.get_module_data,
            put_data=data.put_module_data,
            delete_data=data.delete_module_data,
        ),
    )
    load_modules(config.modules, api)
    if callbacks.check_event_for_spam:
        client_events.use_policy(callbacks.check_event)
    if callbacks.user_may_invite:
        membership.use_invite_policy(callbacks.check_invite)
    if callbacks.user_may_create_room:
        room_creator.use_policy(callbacks.check_create_room)
    if callbacks.check_registration_for_spam:
        accounts.use_registration_policy(callbacks.check_registration)
    if callbacks.check_media_file_for_spam:

        async def upload_policy(
            user_id: str,
            content_type: str | None,
            upload_name: str | None,
            size: int,
            sha256: str,
            read: Callable[[], Awaitable[bytes]],
        ) -> str | None:
            upload = MediaUpload(user_id, content_type, upload_name, size, sha256, read)
            return await callbacks.check_media(upload)

        media.use_upload_policy(upload_policy)
    for login_type, fields, checker in callbacks.auth_checkers:
        accounts.add_auth_checker(login_type, fields, checker)
    if callbacks.event_listeners:
        pending: set[asyncio.Task[None]] = set()

        def tell(event: Event, position: int) -> None:
            data = {
                "event_id": event.event_id,
                "type": event.type,
                "room_id": event.room_id,
                "sender": event.sender,
                "content": event.content,
            }
            if event.state_key is not None:
                data["state_key"] = event.state_key
            task = asyncio.get_running_loop().create_task(callbacks.tell(data))
            pending.add(task)
            task.add_done_callback(pending.discard)

        room_events.add_listener(tell, writer_only=True)


def build_webhooks(
    config: Config,
    db: Database,
    accounts: AccountStore,
    profiles: ProfileStore,
    memberships: MembershipStore,
    membership: MembershipService,
    room_events: RoomEventService,
    event_store: EventStore,
    current_position: Callable[[], int],
    buckets: TokenBuckets | None = None,
) -> tuple[IncomingWebhooks, OutgoingWebhooks]:
    """Starling's own webhooks (config `webhooks`)."""

    async def ensure_user(user_id: str) -> None:
        if await accounts.user_exists(user_id):
            return
        try:
            await accounts.create_user(user_id, None)
        except UserExists:
            return
        await profiles.create_profile(user_id, user_id[1:].split(":", 1)[0])

    async def is_joined(room_id: str, user_id: str) -> bool:
        member = await memberships.get_membership(room_id, user_id)
        return member is not None and member.membership == "join"

    async def join(room_id: str, user_id: str) -> None:
        await membership.join(room_id, user_id)

    async def send(room_id: str, sender: str, content: dict[str, Any]) -> str:
        event = await room_events.send(room_id, sender, "m.room.message", content)
        return event.event_id

    incoming = IncomingWebhooks(
        config.server_name,
        config.webhooks.incoming,
        ensure_user=ensure_user,
        is_joined=is_joined,
        join=join,
        send=send,
        buckets=buckets,
    )
    outgoing = OutgoingWebhooks(
        config.webhooks.outgoing,
        WebhookStore(db),
        AppServiceStore(db),
        event_store,
        current_position,
        verify_certificates=not config.use_insecure_ssl_client_just_for_testing_do_not_use,
    )
    return incoming, outgoing


def forward_app_service_ephemeral(extras: RoomExtras, sender: AppServiceSender) -> None:
    """Local typing, public read receipts and presence also go to the application services
    that asked for ephemeral data (MSC2409), after federation's own hooks."""
    typing = extras.typing
    receipts = extras.receipts
    typing_hook = typing.on_local_change
    receipt_hook = receipts.on_local_receipt

    async def typing_changed(room_id: str, user_id: str, is_typing: bool) -> None:
        if typing_hook is not None:
            await typing_hook(room_id, user_id, is_typing)
        edu = {
            "type": "m.typing",
            "room_id": room_id,
            "content": {"user_ids": typing.typing_users(room_id)},
        }
        await sender.room_ephemeral(room_id, edu)

    async def receipt_sent(receipt: Receipt) -> None:
        if receipt_hook is not None:
            await receipt_hook(receipt)
        if receipt.receipt_type != "m.read":
            return  # private receipts are the user's own
        data: dict[str, Any] = {"ts": receipt.ts}
        if receipt.thread_id:
            data["thread_id"] = receipt.thread_id
        edu = {
            "type": "m.receipt",
            "room_id": receipt.room_id,
            "content": {receipt.event_id: {"m.read": {receipt.user_id: data}}},
        }
        await sender.room_ephemeral(receipt.room_id, edu)

    presence_hook = extras.presence.on_local_changes

    async def presence_changed(changes: dict[str, dict[str, Any]]) -> None:
        if presence_hook is not None:
            await presence_hook(changes)
        for user_id, content in changes.items():
            await sender.presence(user_id, content)

    typing.on_local_change = typing_changed
    receipts.on_local_receipt = receipt_sent
    extras.presence.on_local_changes = presence_changed


def build_federation_membership(
    config: Config,
    signing_key: SigningKey,
    federation: FederationTransport,
    inbound: FederationInbound,
    sender: FederationSender,
    event_store: EventStore,
    state_store: StateStore,
    membership_store: MembershipStore,
    account_store: AccountStore,
    persister: EventPersister,
    room_locks: RoomLocks,
) -> tuple[ResidentMembership, RemoteMembership]:
    """Both sides of the membership handshakes with other servers: answering theirs
    (make_join/send_join, leaves, knocks, invites) and making ours."""
    builder = EventBuilder(config.server_name, signing_key)
    out_of_band = OutOfBandMemberships(persister, room_locks)
    resident = ResidentMembership(
        server_name=config.server_name,
        builder=builder,
        events=event_store,
        state=state_store,
        members=membership_store,
        receiver=inbound.events,
        server_allowed=inbound.access.server_allowed,
        record_relayed=sender.record_relayed,
        verifier=federation.keyring,
        invites=out_of_band,
        user_exists=account_store.user_exists,
    )
    remote = RemoteMembership(
        server_name=config.server_name,
        builder=builder,
        client=federation.client,
        joins=inbound.events,
        verifier=federation.keyring,
        store=out_of_band,
        memberships=membership_store,
        events=event_store,
        state=state_store,
    )
    return resident, remote


@dataclass
class Components(Services):
    """The running server's whole object graph: the services the API edge calls, and the
    database, stores and internals behind them (for shutdown, the CLI and tests)."""

    db: Database
    signing_key: SigningKey
    account_store: AccountStore
    passwords: PasswordHasher
    events_stream: StreamIdGenerator
    event_store: EventStore
    state_store: StateStore
    membership_store: MembershipStore
    profile_store: ProfileStore
    alias_store: AliasStore
    filter_store: FilterStore
    # the event path every federation flow shares (DESIGN §6): the per-room write lock,
    # the state calculator and the one persister
    room_locks: RoomLocks
    state_calculator: StateCalculator
    persister: EventPersister
    notifier: Notifier
    unread_counts: UnreadCounts
    push_sender: PushSender
    push_evaluator: PushEvaluator
    app_services: AppServiceRegistry
    app_service_client: AppServiceClient
    app_service_sender: AppServiceSender
    outgoing_webhooks: OutgoingWebhooks
    # MSC2228 (enable_ephemeral_messages): None when off
    ephemeral_messages: EphemeralMessages | None = None


@dataclass
class RoomExtras:
    typing: TypingService
    receipts: ReceiptsService
    unread_counts: UnreadCounts
    account_data: AccountDataService
    presence: PresenceService
    profile: ProfileService
    directory: DirectoryService
    # read by sliding sync's list filters (m.direct, tags)
    account_data_store: AccountDataStore
    push_rules: PushRulesService
    receipt_store: ReceiptStore

    def sync_extensions(self) -> list[SyncExtension]:
        # Unread counts go last: they fill in the rooms the others put in the response.
        return [self.typing, self.receipts, self.account_data, self.presence, self.unread_counts]


async def _device_exists(accounts: AccountService, user_id: str, device_id: str) -> bool:
    return await accounts.get_device(user_id, device_id) is not None


async def build_room_extras(
    config: Config,
    db: Database,
    notifier: Notifier,
    account_store: AccountStore,
    event_store: EventStore,
    events_stream: StreamIdGenerator,
    membership_store: MembershipStore,
    profile_store: ProfileStore,
    alias_store: AliasStore,
    room_events: RoomEventService,
    visibility: HistoryVisibility,
    remote_public_rooms: RemotePublicRoomsFetcher | None = None,
    remote_queries: RemoteQueries | None = None,
) -> RoomExtras:
    """Typing, receipts, unread counts, account data, presence, profiles, directory."""
    account_data_store = AccountDataStore(db, await StreamIdGenerator.create(db, "account_data"))
    account_data = AccountDataService(account_data_store, notifier)
    receipt_store = ReceiptStore(db, await StreamIdGenerator.create(db, "receipts"))
    push_rules = PushRulesService(
        account_data,
        membership_store,
        profile_store,
        room_events,
        legacy_mention_rules=config.legacy_mention_push_rules,
    )
    presence = await PresenceService.create(
        PresenceStore(db, await StreamIdGenerator.create(db, "presence")),
        membership_store,
        notifier,
        enabled=config.presence.enabled,
    )
    extras = RoomExtras(
        typing=TypingService(membership_store, notifier),
        receipts=ReceiptsService(
            receipt_store,
            event_store,
            membership_store,
            account_data,
            notifier,
            visible=visibility.is_visible,
        ),
        unread_counts=UnreadCounts(
            receipt_store,
            event_store,
            events_stream,
            membership_store,
            profile_store,
            room_events,
            push_rules,
        ),
        account_data=account_data,
        account_data_store=account_data_store,
        presence=presence,
        profile=ProfileService(
            config.server_name,
            profile_store,
            account_store,
            membership_store,
            room_events,
            remote_queries.query_profile if remote_queries is not None else None,
        ),
        directory=DirectoryService(
            config.server_name,
            alias_store,
            DirectoryStore(db),
            membership_store,
            event_store,
            room_events,
            remote_public_rooms,
            remote_queries.query_directory if remote_queries is not None else None,
            PublicationRules(config.room_list_publication_rules),
        ),
        push_rules=push_rules,
        receipt_store=receipt_store,
    )
    room_events.add_listener(extras.directory.on_new_event)
    room_events.add_listener(extras.typing.on_new_event)
    local_suffix = ":" + config.server_name

    def activity(event: Event, position: int) -> None:
        if event.sender.endswith(local_suffix):
            presence.bump_active(event.sender)

    room_events.add_listener(activity)
    return extras


def build_media(
    config: Config,
    db: Database,
    remote: FederationMediaFetcher | None = None,
    buckets: TokenBuckets | None = None,
) -> MediaService:
    files = FileStore(config.resolve_path(config.media_store_path))
    files.setup()
    return MediaService(config, MediaStore(db), files, remote=remote, buckets=buckets)


def build_listener_app(
    services: Services, listener: Listener, *, extra_versions: dict[str, Any] | None = None
) -> web.Application:
    """The aiohttp application serving one listener's resources."""
    config = services.config
    names = {n for r in listener.resources for n in r.names}
    max_body = config.max_request_body_size
    if "federation" in names:
        # A transaction may carry 50 PDUs and 100 EDUs of up to 64 KiB each.
        max_body = max(max_body, FEDERATION_MAX_REQUEST_BODY)
    app = make_web_app(max_body, x_forwarded=listener.x_forwarded)
    if listener.type == "metrics":
        register_metrics(app)
        return app
    DiscoveryResource(config, extra_versions).register(
        app, client="client" in names, federation="federation" in names
    )
    guards = Guards(
        auth=services.auth,
        rate_limits=services.rate_limits,
        authenticate_origin=authenticate_origin,
        seen=services.client_ips.seen,
    )
    if "client" in names:
        # Outermost, so errors the edge turns into JSON are converted too (MSC3079).
        app.middlewares.insert(0, cbor_middleware)
        mount(app, client_table(services), guards)
        mount(app, webhooks_table(services.incoming_webhooks), guards)
        sso_routes = SsoRoutes(services.sso, services.config.client_base_url.startswith("https:"))
        mount(app, oidc_callback_table(sso_routes), guards)
        mount(app, email_submit_table(services.accounts.email), guards)
        mount(app, admin_table(services), guards)
        add_console_routes(app)
    if names & {"client", "media"}:
        client_media, legacy_media = media_tables(services)
        if "client" in names:
            mount(app, client_media, guards)
        mount(app, legacy_media, guards)
    if names & {"federation", "keys"}:
        app[FEDERATION_AUTH] = OriginAuthenticator(
            config.server_name, services.federation, config.federation_domain_whitelist
        )
        app.middlewares.append(release_slot_middleware)
        if "federation" in names:
            mount(app, federation_table(services), guards)
        if "keys" in names:
            mount(app, keys_table(services), guards)
    if "openid" in names and "federation" not in names:
        mount(app, openid_table(services), guards)
    if "metrics" in names and config.enable_metrics:
        register_metrics(app)
    return app


MAIN_INSTANCE = "main"


def cluster_roles(config: Config, instance: str) -> ClusterRoles:
    """The singletons `instance` runs: all of them without workers (no `redis:`)."""
    if config.redis is None or not config.redis.enabled:
        return ClusterRoles(True, True, True, True)
    return ClusterRoles(
        federation_sender=instance == config.federation_sender_instances[0],
        pusher=instance == config.pusher_instances[0],
        appservice_sender=instance == config.notify_appservices_from_worker,
        background_tasks=instance == config.run_background_tasks_on,
    )


@dataclass
class Homeserver:
    config: Config
    services: Components
    runners: list[web.AppRunner] = field(default_factory=list)
    bound: list[str] = field(default_factory=list)
    peers: PeerCounter = field(default_factory=PeerCounter)  # open connections per address
    low_bandwidth: LowBandwidthServer | None = None
    instance: str = MAIN_INSTANCE
    bus: ClusterBus | None = None
    shared_buckets: RedisBuckets | None = None

    @classmethod
    async def start(cls, config: Config, worker: str | None = None) -> Homeserver:
        """Build and start the server; `worker` names this process among several
        (docs/scaling.md; needs `redis:`), None for the main process."""
        signing_key = load_signing_key(config)
        clustered = config.redis is not None and config.redis.enabled
        if worker is not None and not clustered:
            raise ConfigError("--worker needs a redis: section (workers share Redis)")
        instance = worker or MAIN_INSTANCE
        db = await open_database(storage_config(config))
        try:
            services = await build_services(config, db, signing_key)
        except BaseException:
            await db.close()
            raise
        hs = cls(config=config, services=services, instance=instance)
        roles = cluster_roles(config, instance)
        try:
            if clustered:
                assert config.redis is not None
                from starling.cluster.bus import ClusterBus, channel_for
                from starling.cluster.ratelimit import RedisBuckets
                from starling.cluster.wiring import join_cluster

                a = config.database.args
                where = f"{a.host or '127.0.0.1'}:{a.port or 5432}/{a.database}"
                hs.bus = ClusterBus(instance, config.redis, channel_for(config.server_name, where))
                await hs.bus.start()
                hs.shared_buckets = RedisBuckets(config.redis, hs.bus.channel)
                await join_cluster(hs.bus, hs._cluster_parts(), roles)
            if roles.federation_sender:
                await hs.services.federation_sender.start()
            # Per process: each flushes the client addresses it saw.
            hs.services.client_ips.start()
            if roles.pusher:
                # The evaluator reads the events stream from its stored position and
                # wakes the sender in the same process.
                await hs.services.push_evaluator.start()
                await hs.services.push_sender.start()
            if roles.background_tasks:
                await hs.services.delayed_events.start()
                if hs.services.ephemeral_messages is not None:
                    await hs.services.ephemeral_messages.start()
                hs.services.media.start()
                hs.services.admin_history.start()
                if hs.services.e2ee.remote_device_lists is not None:
                    # Users left stale by the last run (a resync that had not succeeded).
                    await hs.services.e2ee.remote_device_lists.start()
                await hs.services.outgoing_webhooks.start()
            if roles.appservice_sender:
                await hs.services.accounts.ensure_app_service_senders()
                await hs.services.app_service_sender.start()
            await hs._start_listeners()
        except BaseException:
            await hs.stop()
            raise
        return hs

    def _cluster_parts(self) -> ClusterParts:
        from starling.cluster.wiring import ClusterParts

        s = self.services
        return ClusterParts(
            db=s.db,
            notifier=s.notifier,
            room_locks=s.room_locks,
            persister=s.persister,
            event_store=s.event_store,
            state_store=s.state_store,
            membership_store=s.membership_store,
            auth=s.auth,
            federation_sender=s.federation_sender,
            push_sender=s.push_sender,
            app_service_sender=s.app_service_sender,
            typing=s.typing,
            delayed_events=s.delayed_events,
            rate_limits=s.rate_limits,
            shared_buckets=self.shared_buckets,
            reload_rate_limit_overrides=s.admin_users.load_rate_limit_overrides,
            presence=s.presence,
            media=s.media,
        )

    async def _start_listeners(self) -> None:
        extra_versions: dict[str, Any] = {}
        lb_config = self.config.low_bandwidth
        if lb_config.port is not None:
            # Bound first, so /versions can publish its port and Noise key.
            from starling.lowbandwidth.server import LowBandwidthServer, load_or_create_key
            from starling.protocol.lowbandwidth.coap import FEATURE as LB_FEATURE

            key = load_or_create_key(self.config.resolve_path(lb_config.noise_key_path))
            self.low_bandwidth = LowBandwidthServer(lb_config, key)
            await self.low_bandwidth.start()
            extra_versions[LB_FEATURE] = self.low_bandwidth.advert()
            for host in lb_config.bind_addresses:
                self.bound.append(f"coap+noise://{host}:{self.low_bandwidth.port}")
        for listener in self.config.listeners:
            if listener.type == "metrics" and not self.config.enable_metrics:
                logger.warning(
                    "metrics listener on port %d ignored: enable_metrics is off", listener.port
                )
                continue
            app = build_listener_app(self.services, listener, extra_versions=extra_versions)
            if self.low_bandwidth is not None and self.low_bandwidth.dispatch is None:
                if any("client" in r.names for r in listener.resources):
                    self.low_bandwidth.dispatch = in_process(app)
            runner = self._runner(app, listener)
            await runner.setup()
            self.runners.append(runner)
            ssl_context = tls_context(self.config) if listener.tls else None
            for addr in listener.bind_addresses:
                site = web.TCPSite(
                    runner, addr, listener.port, reuse_address=True, ssl_context=ssl_context
                )
                await site.start()
                host = f"[{addr}]" if ":" in addr else addr
                scheme = "https" if ssl_context else "http"
                self.bound.append(f"{scheme}://{host}:{listener.port}")

    def _runner(self, app: web.Application, listener: Listener) -> web.AppRunner:
        """The listener's runner, with the slow-client deadlines and the per-address
        connection cap (not behind a proxy: there every connection is the proxy's)."""
        limits = self.config.http_limits
        return GuardedAppRunner(
            app,
            ConnectionLimits(
                header_timeout=limits.header_timeout,
                body_timeout=limits.body_timeout,
                keepalive_timeout=limits.keepalive_timeout,
                max_connections_per_ip=limits.max_connections_per_ip,
            ),
            None if listener.x_forwarded else self.peers,
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        )

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close the database."""
        # End /sync long-polls now, so draining does not wait for their timeouts.
        self.services.notifier.close()
        if self.low_bandwidth is not None:
            await self.low_bandwidth.stop()
        for runner in self.runners:
            try:
                await asyncio.wait_for(runner.cleanup(), SHUTDOWN_GRACE_SECONDS + 1)
            except TimeoutError:
                logger.warning("listener did not drain in time; closing anyway")
        self.runners.clear()
        self.services.typing.close()
        await self.services.presence.close()
        await self.services.media.close()
        await self.services.admin_history.close()
        await self.services.client_ips.close()
        for stop in self.services.e2ee.on_stop:
            await stop()
        await self.services.federation_sender.stop()
        if self.services.e2ee.remote_device_lists is not None:
            await self.services.e2ee.remote_device_lists.close()
        await self.services.push_evaluator.stop()
        await self.services.delayed_events.stop()
        if self.services.ephemeral_messages is not None:
            await self.services.ephemeral_messages.stop()
        await self.services.push_sender.stop()
        await self.services.app_service_sender.stop()
        await self.services.outgoing_webhooks.stop()
        await self.services.sso.close()
        await self.services.app_service_client.close()
        await self.services.threepids.client.close()
        await self.services.federation.close()
        self.services.passwords.close()
        if self.bus is not None:
            await self.bus.stop()
        if self.shared_buckets is not None:
            await self.shared_buckets.close()
        await self.services.room_locks.close()
        await self.services.db.close()
