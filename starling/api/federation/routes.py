"""The Server-Server API's route tables: what we serve to other homeservers and how each
endpoint is guarded (see `starling.api.routing`).

Add an endpoint by appending a `Route` to the table it belongs to: a federation endpoint
is `Auth.FEDERATION` (the guard checks the request's X-Matrix signature, and the handler
reads the origin server with `routing.origin(request)`), unless the spec makes it
public (GET /version, the key server's endpoints), which are `Auth.NONE`. Versions other
than the table's default (v2 of send_join, invite, ...) go in the route's `versions`.
An area with many endpoints may hand its rows over from a `routes()` method (as
`membership.FederationMembershipApi` does) for the table to splice in.
"""

from __future__ import annotations

from starling.api.federation import version
from starling.api.federation.events import FederationEventsApi
from starling.api.federation.hierarchy import FederationHierarchyApi
from starling.api.federation.keys import KeysApi
from starling.api.federation.media import FederationMediaApi
from starling.api.federation.membership import FederationMembershipApi
from starling.api.federation.openid import FederationOpenIdApi
from starling.api.federation.public_rooms import PublicRoomsApi
from starling.api.federation.queries import FederationQueriesApi
from starling.api.federation.third_party import FederationThirdPartyApi
from starling.api.federation.threepid import FederationThreepidApi
from starling.api.federation.timestamps import FederationTimestampApi
from starling.api.federation.user_keys import UserKeysApi
from starling.api.routing import Auth, Route, RouteTable, get, post
from starling.api.services import Services

FEDERATION = Auth.FEDERATION
NONE = Auth.NONE


def federation_table(services: Services) -> RouteTable:
    """Every /_matrix/federation endpoint (paths under v1 unless marked)."""
    public_rooms = PublicRoomsApi(
        services.directory, allowed=services.config.allow_public_rooms_over_federation
    )
    inbound = services.federation_inbound
    routes: list[Route] = [
        get("/version", version.version, NONE),
        get("/publicRooms", public_rooms.get_public_rooms, FEDERATION),
        post("/publicRooms", public_rooms.post_public_rooms, FEDERATION),
        # the room DAG: /send, /event, /state(_ids), /event_auth, /backfill, missing events
        *FederationEventsApi(inbound.transactions, inbound.reads).routes(),
        # /query/directory, /query/profile
        *FederationQueriesApi(inbound.queries).routes(),
        # make_join/send_join, make_leave/send_leave, make_knock/send_knock, invite
        *FederationMembershipApi(services.federation_membership).routes(),
        # our users' devices and keys: /user/devices, /user/keys/query, /user/keys/claim
        *UserKeysApi(services.e2ee.federation_keys).routes(),
        # this server's media: /media/download, /media/thumbnail
        *FederationMediaApi(services.media).routes(),
        # OpenID tokens for third parties (unsigned): /openid/userinfo
        *FederationOpenIdApi(services.openid).routes(),
        # /timestamp_to_event/{roomId}
        *FederationTimestampApi(services.timestamps).routes(),
        # spaces: /hierarchy/{roomId}
        *FederationHierarchyApi(services.hierarchy).routes(),
        # identity servers: /3pid/onbind (unsigned)
        *FederationThreepidApi(services.threepids).routes(),
        # /exchange_third_party_invite/{roomId}
        *FederationThirdPartyApi(services.third_party_exchange).routes(),
    ]
    return RouteTable("federation", "/_matrix/federation/{version}", ("v1",), routes)


def openid_table(services: Services) -> RouteTable:
    """Only /openid/userinfo: Synapse's `openid` listener resource (integration managers
    reach it on a port that serves no other federation endpoint)."""
    return RouteTable(
        "openid",
        "/_matrix/federation/{version}",
        ("v1",),
        FederationOpenIdApi(services.openid).routes(),
    )


def keys_table(services: Services) -> RouteTable:
    """The key server: this server's signing keys, and notary queries (under v2)."""
    keys = KeysApi(services.federation.key_server)
    routes: list[Route] = [
        get("/server", keys.server_keys, NONE),
        # The deprecated form naming a key ID: the same answer (Synapse serves it too).
        get("/server/{key_id}", keys.server_keys, NONE),
        get("/query/{server_name}", keys.query_one, NONE),
        # The deprecated form naming a key ID (Synapse serves it too).
        get("/query/{server_name}/{key_id}", keys.query_one, NONE),
        post("/query", keys.query_many, NONE),
    ]
    return RouteTable("keys", "/_matrix/key/{version}", ("v2",), routes)
