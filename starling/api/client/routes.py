"""The Client-Server API's route table: every endpoint we serve under /_matrix/client and
how it is guarded (see `starling.api.routing`).

Guests (spec: modules/guest_access.md) may call the endpoints the spec opens to them —
reading rooms they may see, joining, leaving and sending, their display name and devices,
whoami and the E2EE key endpoints — and, like Synapse, what clients need to run at all
(filters, capabilities, push rules, logout, TURN credentials); `guests=True` marks them.
"""

from __future__ import annotations

from starling.api.admin.users import AdminUserRoutes
from starling.api.client.account_data import AccountDataRoutes
from starling.api.client.accounts import AccountRoutes
from starling.api.client.appservice import AppServiceRoutes
from starling.api.client.capabilities import CapabilityRoutes
from starling.api.client.dehydrated import PREFIX as DEHYDRATED
from starling.api.client.dehydrated import DehydratedDeviceRoutes
from starling.api.client.delayed import PREFIX as DELAYED
from starling.api.client.delayed import DelayedEventRoutes
from starling.api.client.directory import DirectoryRoutes
from starling.api.client.filters import FilterRoutes
from starling.api.client.hierarchy import HierarchyRoutes
from starling.api.client.key_backup import KeyBackupRoutes
from starling.api.client.keys import KeyRoutes
from starling.api.client.legacy_sync import LegacySyncRoutes
from starling.api.client.openid import OpenIdRoutes
from starling.api.client.presence import PresenceRoutes
from starling.api.client.profile import ProfileRoutes
from starling.api.client.pushrules import PushRuleRoutes
from starling.api.client.receipts import ReceiptRoutes
from starling.api.client.relations import RelationRoutes
from starling.api.client.reports import ReportRoutes
from starling.api.client.room_reads import RoomReadRoutes
from starling.api.client.rooms import RoomRoutes
from starling.api.client.search import SearchRoutes
from starling.api.client.sliding_sync import SlidingSyncRoutes
from starling.api.client.sso import SsoRoutes
from starling.api.client.sync import SyncRoutes
from starling.api.client.timestamps import TimestampRoutes
from starling.api.client.to_device import ToDeviceRoutes
from starling.api.client.typing import TypingRoutes
from starling.api.client.uia_fallback import uia_fallback_routes
from starling.api.client.user_directory import UserDirectoryRoutes
from starling.api.client.voip import VoipRoutes
from starling.api.client.websocket import FEATURE as WS_FEATURE
from starling.api.client.websocket import WebSocketRoutes
from starling.api.routing import Auth, RateClass, Route, RouteTable, delete, get, post, put
from starling.api.services import Services

PREFIX = "/_matrix/client/{version}"
V1 = ("v1",)
V3_R0 = ("v3", "r0")
V3_UNSTABLE = ("v3", "unstable")
SIMPLIFIED_SLIDING_SYNC = ("unstable/org.matrix.simplified_msc3575",)
ROOM_SUMMARY_UNSTABLE = ("unstable/im.nheko.summary",)
NONE = Auth.NONE
OPTIONAL = Auth.OPTIONAL


def client_table(svc: Services) -> RouteTable:
    """Every Client-Server endpoint; paths are under /_matrix/client/v3 unless marked."""
    e2ee = svc.e2ee
    accounts = AccountRoutes(svc.server_name, svc.accounts, svc.threepids)
    rooms = RoomRoutes(
        svc.room_creator,
        svc.membership,
        svc.room_upgrader,
        svc.directory,
        svc.client_events,
        svc.threepids,
        svc.delayed_events,
        peeks=svc.peeks,
    )
    delayed = DelayedEventRoutes(svc.delayed_events)
    reads = RoomReadRoutes(svc.room_history)
    sync = SyncRoutes(svc.sync, svc.sync_filters)
    sliding = SlidingSyncRoutes(svc.sliding_sync)
    legacy = LegacySyncRoutes(svc.legacy_sync)
    filters = FilterRoutes(svc.server_name, svc.sync_filters)
    keys = KeyRoutes(e2ee.keys, e2ee.cross_signing, e2ee.device_lists, svc.accounts)
    to_device = ToDeviceRoutes(e2ee.to_device)
    backup = KeyBackupRoutes(e2ee.key_backup)
    typing = TypingRoutes(svc.typing)
    receipts = ReceiptRoutes(svc.receipts)
    presence = PresenceRoutes(svc.presence)
    profile = ProfileRoutes(svc.profile)
    account_data = AccountDataRoutes(svc.account_data)
    directory = DirectoryRoutes(svc.directory)
    capabilities = CapabilityRoutes(
        svc.config.default_room_version,
        threepid_changes=svc.accounts.email is not None and svc.accounts.email.enabled,
    )
    push = PushRuleRoutes(svc.push_rules, svc.pushers, svc.notifications)
    reports = ReportRoutes(svc.reports)
    relations = RelationRoutes(svc.relations)
    voip = VoipRoutes(svc.turn)
    openid = OpenIdRoutes(svc.openid)
    timestamps = TimestampRoutes(svc.timestamps)
    appservice = AppServiceRoutes(svc.app_service_queries)
    user_directory = UserDirectoryRoutes(svc.user_directory)
    search = SearchRoutes(svc.search)
    hierarchy = HierarchyRoutes(svc.hierarchy, svc.room_summaries)
    dehydrated = DehydratedDeviceRoutes(svc.dehydrated_devices)
    websocket = WebSocketRoutes(
        svc.auth,
        svc.config.websocket,
        svc.accounts.add_device_listener,
        e2ee.to_device_extension.acknowledge,
    )
    svc.auth.add_elsewhere_listener(websocket.invalidated_elsewhere)
    sso = SsoRoutes(
        svc.sso,
        svc.config.client_base_url.startswith("https:"),
        svc.accounts.complete_sso_ui_auth,
    )
    routes: list[Route] = [
        # Accounts: registration, login, tokens, account management, devices
        post("/register", accounts.register, NONE),
        get("/register/available", accounts.register_available, NONE),
        get(
            "/register/m.login.registration_token/validity",
            accounts.token_validity,
            NONE,
            versions=V1,
        ),
        get("/login", accounts.login_flows, NONE),
        post("/login", accounts.login, NONE),
        get("/login/sso/redirect", sso.redirect, NONE),
        get("/login/sso/redirect/{idpId}", sso.redirect_to, NONE),
        get("/login/cas/redirect", sso.cas_redirect, NONE, versions=V3_R0),
        get("/login/cas/ticket", sso.cas_ticket, NONE, versions=V3_R0),
        get("/auth/m.login.sso/fallback/web", sso.sso_fallback, NONE, versions=V3_R0),
        *uia_fallback_routes(svc.accounts, V3_R0),
        post("/refresh", accounts.refresh, NONE),
        post("/logout", accounts.logout, guests=True),
        post("/logout/all", accounts.logout_all),
        get("/account/whoami", accounts.whoami, guests=True),
        get("/account/3pid", accounts.threepids),
        # bind/unbind were under /unstable before v1.1 (clients and SyTest still use it)
        post("/account/3pid/bind", accounts.bind_threepid, versions=V3_UNSTABLE),
        post("/account/3pid/add", accounts.add_threepid, versions=V3_UNSTABLE),
        post("/account/3pid", accounts.add_threepid_deprecated, versions=V3_R0),
        post("/account/3pid/email/requestToken", accounts.account_email_token, NONE),
        post("/register/email/requestToken", accounts.register_email_token, NONE),
        post("/account/3pid/unbind", accounts.unbind_threepid, versions=V3_UNSTABLE),
        post("/account/3pid/delete", accounts.delete_threepid, versions=V3_UNSTABLE),
        post("/account/password", accounts.change_password),
        post("/account/deactivate", accounts.deactivate),
        get("/devices", accounts.list_devices, guests=True),
        get("/devices/{deviceId}", accounts.get_device, guests=True),
        put("/devices/{deviceId}", accounts.update_device, guests=True),
        delete("/devices/{deviceId}", accounts.delete_device),
        post("/delete_devices", accounts.delete_devices),
        # Rooms: creating, membership, sending
        post("/createRoom", rooms.create_room),
        # Not in the spec's guest list, but Synapse admits guests here too (the room must
        # still have guest_access can_join), and clients join by alias this way.
        post("/join/{roomIdOrAlias}", rooms.join, guests=True),
        post("/rooms/{roomId}/join", rooms.join, guests=True),
        post("/knock/{roomIdOrAlias}", rooms.knock),
        post("/peek/{roomIdOrAlias}", rooms.peek, guests=True),
        post("/rooms/{roomId}/unpeek", rooms.unpeek, guests=True),
        post("/rooms/{roomId}/leave", rooms.leave, guests=True),
        post("/rooms/{roomId}/forget", rooms.forget),
        post("/rooms/{roomId}/invite", rooms.invite),
        post("/rooms/{roomId}/kick", rooms.kick),
        post("/rooms/{roomId}/ban", rooms.ban),
        post("/rooms/{roomId}/unban", rooms.unban),
        get("/joined_rooms", rooms.joined_rooms),
        post("/rooms/{roomId}/upgrade", rooms.upgrade),
        put(
            "/rooms/{roomId}/send/{eventType}/{txnId}",
            rooms.send,
            guests=True,
            rate_limit=RateClass.MESSAGE,
        ),
        put("/rooms/{roomId}/state/{eventType}", rooms.put_state, guests=True),
        put("/rooms/{roomId}/state/{eventType}/{stateKey:.*}", rooms.put_state, guests=True),
        put("/rooms/{roomId}/redact/{eventId}/{txnId}", rooms.redact),
        post("/rooms/{roomId}/redact/{eventId}", rooms.redact, versions=V3_R0),
        post(
            "/rooms/{roomId}/send/{eventType}",
            rooms.send,
            guests=True,
            rate_limit=RateClass.MESSAGE,
            versions=V3_R0,
        ),
        # Reading rooms
        get("/rooms/{roomId}/event/{eventId}", reads.event, guests=True),
        get("/rooms/{roomId}/state", reads.state, guests=True),
        get("/rooms/{roomId}/state/{eventType}", reads.state_event, guests=True),
        get("/rooms/{roomId}/state/{eventType}/{stateKey:.*}", reads.state_event, guests=True),
        get("/rooms/{roomId}/members", reads.members, guests=True),
        get("/rooms/{roomId}/joined_members", reads.joined_members),
        get("/rooms/{roomId}/messages", reads.messages, guests=True),
        get("/rooms/{roomId}/context/{eventId}", reads.context, guests=True),
        get("/rooms/{roomId}/relations/{eventId}", relations.relations, versions=V1),
        get("/rooms/{roomId}/relations/{eventId}/{relType}", relations.relations, versions=V1),
        get(
            "/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}",
            relations.relations,
            versions=V1,
        ),
        get("/rooms/{roomId}/threads", relations.threads, versions=V1),
        get("/rooms/{roomId}/hierarchy", hierarchy.hierarchy, versions=V1),
        # Delayed events (MSC4140): managed by delay ID, with or without a token
        get("/delayed_events", delayed.list, versions=(DELAYED,)),
        post("/delayed_events/{delayId}", delayed.act_in_body, OPTIONAL, versions=(DELAYED,)),
        post("/delayed_events/{delayId}/{action}", delayed.act, OPTIONAL, versions=(DELAYED,)),
        # Dehydrated devices (MSC3814)
        get("/dehydrated_device", dehydrated.get, versions=(DEHYDRATED,)),
        put("/dehydrated_device", dehydrated.put, versions=(DEHYDRATED,)),
        delete("/dehydrated_device", dehydrated.delete, versions=(DEHYDRATED,)),
        get("/dehydrated_device/{deviceId}/events", dehydrated.events, versions=(DEHYDRATED,)),
        post(
            "/dehydrated_device/{deviceId}/events",
            dehydrated.events_post,
            versions=(DEHYDRATED,),
        ),
        get(
            "/room_summary/{roomIdOrAlias}",
            hierarchy.room_summary,
            OPTIONAL,
            guests=True,
            versions=V1,
        ),
        get(
            "/summary/{roomIdOrAlias}",
            hierarchy.unstable_summary,
            OPTIONAL,
            guests=True,
            versions=ROOM_SUMMARY_UNSTABLE,
        ),
        get(
            "/rooms/{roomIdOrAlias}/summary",
            hierarchy.unstable_summary,
            OPTIONAL,
            guests=True,
            versions=ROOM_SUMMARY_UNSTABLE,
        ),
        get(
            "/rooms/{roomId}/timestamp_to_event",
            timestamps.timestamp_to_event,
            versions=("v1", "unstable/org.matrix.msc3030"),
        ),
        # Sync and filters
        get("/sync", sync.sync, guests=True),
        post("/sync", sliding.sync, guests=True, versions=SIMPLIFIED_SLIDING_SYNC),
        get("/thread_updates", sliding.thread_updates, versions=("unstable/io.element.msc4360",)),
        post("/user/{userId}/filter", filters.create, guests=True),
        get("/user/{userId}/filter/{filterId}", filters.get, guests=True),
        post("/user/{userId}/openid/request_token", openid.request_token),
        # The deprecated r0 reads; guests may read /events of one (world-readable) room
        get("/events", legacy.events, guests=True, versions=V3_R0),
        get("/initialSync", legacy.initial_sync, versions=V3_R0),
        get("/rooms/{roomId}/initialSync", legacy.room_initial_sync, guests=True, versions=V3_R0),
        # End-to-end encryption: keys, cross-signing, to-device, key backup
        post("/keys/upload", keys.upload, guests=True),
        post("/keys/query", keys.query, guests=True),
        post("/keys/claim", keys.claim, guests=True),
        get("/keys/changes", keys.changes),
        # Also under /unstable, where clients used them before v1.1 (as Synapse serves).
        post("/keys/device_signing/upload", keys.upload_signing_keys, versions=V3_UNSTABLE),
        post("/keys/signatures/upload", keys.upload_signatures, versions=V3_UNSTABLE),
        put("/sendToDevice/{eventType}/{txnId}", to_device.send, guests=True),
        post("/room_keys/version", backup.create_version),
        get("/room_keys/version", backup.get_version),
        get("/room_keys/version/{version}", backup.get_version),
        put("/room_keys/version/{version}", backup.update_version),
        delete("/room_keys/version/{version}", backup.delete_version),
        *(
            route
            # {keyRoomId}: the room a backed-up key is for, an opaque client-chosen ID
            # that is only stored (Synapse stores any); the generic {roomId} check would
            # refuse IDs such as SyTest's "!abcd".
            for suffix in ("", "/{keyRoomId}", "/{keyRoomId}/{sessionId}")
            for route in (
                put(f"/room_keys/keys{suffix}", backup.put_keys),
                get(f"/room_keys/keys{suffix}", backup.get_keys),
                delete(f"/room_keys/keys{suffix}", backup.delete_keys),
            )
        ),
        # Around the room: typing, receipts, presence, profiles, account data, tags
        put("/rooms/{roomId}/typing/{userId}", typing.put_typing),
        post("/rooms/{roomId}/receipt/{receiptType}/{eventId}", receipts.post_receipt),
        post("/rooms/{roomId}/read_markers", receipts.post_read_markers),
        put("/presence/{userId}/status", presence.put_status),
        get("/presence/{userId}/status", presence.get_status),
        get("/profile/{userId}", profile.get_profile, OPTIONAL, guests=True),
        get("/profile/{userId}/{keyName}", profile.get_field, OPTIONAL, guests=True),
        put("/profile/{userId}/{keyName:displayname}", profile.put_field, guests=True),
        put("/profile/{userId}/{keyName}", profile.put_field),
        delete("/profile/{userId}/{keyName:displayname}", profile.delete_field, guests=True),
        delete("/profile/{userId}/{keyName}", profile.delete_field),
        put("/user/{userId}/account_data/{type}", account_data.put_global),
        get("/user/{userId}/account_data/{type}", account_data.get_global),
        put("/user/{userId}/rooms/{roomId}/account_data/{type}", account_data.put_room),
        get("/user/{userId}/rooms/{roomId}/account_data/{type}", account_data.get_room),
        get("/user/{userId}/rooms/{roomId}/tags", account_data.get_tags),
        put("/user/{userId}/rooms/{roomId}/tags/{tag}", account_data.put_tag),
        delete("/user/{userId}/rooms/{roomId}/tags/{tag}", account_data.delete_tag),
        # Room aliases and the room directory
        put("/directory/room/{roomAlias}", directory.put_alias),
        get("/directory/room/{roomAlias}", directory.get_alias, NONE),
        delete("/directory/room/{roomAlias}", directory.delete_alias),
        get("/rooms/{roomId}/aliases", directory.room_aliases),
        get("/directory/list/room/{roomId}", directory.get_visibility, NONE),
        put("/directory/list/room/{roomId}", directory.put_visibility),
        put(
            "/directory/list/appservice/{networkId}/{roomId}",
            directory.put_network_visibility,
        ),
        delete(
            "/directory/list/appservice/{networkId}/{roomId}",
            directory.put_network_visibility,
        ),
        get("/publicRooms", directory.get_public_rooms, OPTIONAL),
        post("/publicRooms", directory.post_public_rooms),
        # Server administration: where a user's devices were last seen (self or admin)
        get("/admin/whois/{userId}", AdminUserRoutes(svc.admin_users).client_whois),
        # Discovery: user directory, server-side search
        post("/user_directory/search", user_directory.search, versions=V3_R0),
        post("/search", search.search, versions=V3_R0),
        # Capabilities, push rules and pushers
        get("/capabilities", capabilities.get_capabilities, guests=True),
        get("/pushrules/", push.get_all, guests=True),
        get("/pushrules/global/", push.get_global, guests=True),
        get("/pushrules/global/{kind}/", push.get_kind, guests=True),
        get("/pushrules/global/{kind}/{ruleId}", push.get_rule, guests=True),
        put("/pushrules/global/{kind}/{ruleId}", push.put_rule),
        delete("/pushrules/global/{kind}/{ruleId}", push.delete_rule),
        get("/pushrules/global/{kind}/{ruleId}/enabled", push.get_enabled, guests=True),
        put("/pushrules/global/{kind}/{ruleId}/enabled", push.put_enabled),
        get("/pushrules/global/{kind}/{ruleId}/actions", push.get_actions, guests=True),
        put("/pushrules/global/{kind}/{ruleId}/actions", push.put_actions),
        # Anything else under /pushrules/ (after the routes above): 400, as Synapse
        get("/pushrules/{path:.*}", push.malformed, guests=True),
        put("/pushrules/{path:.*}", push.malformed),
        delete("/pushrules/{path:.*}", push.malformed),
        get("/pushers", push.get_pushers),
        post("/pushers/set", push.set_pusher),
        get("/notifications", push.get_notifications),
        # reporting content (the message rate limit bounds report floods)
        post(
            "/rooms/{roomId}/report/{eventId}",
            reports.report_event,
            rate_limit=RateClass.MESSAGE,
        ),
        post("/rooms/{roomId}/report", reports.report_room, rate_limit=RateClass.MESSAGE),
        # VoIP and third-party networks
        get("/voip/turnServer", voip.turn_server, guests=True),
        get("/thirdparty/protocols", appservice.protocols),
        get("/thirdparty/protocol/{protocol}", appservice.protocol),
        get("/thirdparty/location/{protocol}", appservice.location),
        get("/thirdparty/user/{protocol}", appservice.user),
        get("/thirdparty/location", appservice.location_reverse),
        get("/thirdparty/user", appservice.user_reverse),
        # Application services
        post("/appservice/{appserviceId}/ping", appservice.ping, versions=V1),
        # The WebSocket transport (docs/transports.md): it authenticates itself, from the
        # upgrade's Authorization header or its first frame, and every request it carries
        # goes through these routes' guards.
        get("/ws", websocket.connect, NONE, versions=(f"unstable/{WS_FEATURE}",)),
    ]
    return RouteTable("client", PREFIX, ("v3",), routes)
