"""Typed configuration: a YAML file plus environment overrides, validated at start.

Key names follow Synapse's homeserver.yaml wherever the concept is the same, so a Matrix
admin finds what they expect (`server_name`, `listeners`, `database`, `signing_key_path`,
`rc_message` ...). Every section is a dataclass; `load_config` walks the YAML against the
dataclasses and stops with a `ConfigError` that names the offending key and what is
allowed, so a typo never starts a half-configured server.

Environment overrides: `STARLING_<KEY>` for a top-level key and `STARLING_<SECTION>__<KEY>`
for nested ones (`STARLING_DATABASE__ARGS__DATABASE=/tmp/x.db`); values are parsed as YAML
scalars, so `true`, `8008` and `0.5` mean what they look like.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from starling.protocol.room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS

ENV_PREFIX = "STARLING_"


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and what is allowed."""


# --- sections ------------------------------------------------------------------------


@dataclass
class ListenerResource:
    names: list[Literal["client", "federation", "metrics", "health", "media", "keys", "openid"]] = (
        field(default_factory=lambda: ["client"])
    )
    compress: bool = False


@dataclass
class Listener:
    port: int = 8008
    bind_addresses: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    type: Literal["http", "metrics"] = "http"
    tls: bool = False
    x_forwarded: bool = False
    resources: list[ListenerResource] = field(default_factory=lambda: [ListenerResource()])


@dataclass
class DatabaseArgs:
    # sqlite3: `database` is the file path. psycopg2/postgresql: the connection parameters.
    database: str = "starling.db"
    user: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    cp_min: int = 2
    cp_max: int = 10


@dataclass
class DatabaseConfig:
    # "psycopg2" is what Synapse configs say; we connect with asyncpg either way.
    name: Literal["sqlite3", "psycopg2", "postgresql"] = "sqlite3"
    args: DatabaseArgs = field(default_factory=DatabaseArgs)

    @property
    def is_sqlite(self) -> bool:
        return self.name == "sqlite3"

    def postgres_dsn(self) -> str:
        a = self.args
        auth = a.user or "postgres"
        if a.password:
            auth += ":" + a.password
        host = a.host or "127.0.0.1"
        port = a.port or 5432
        return f"postgresql://{auth}@{host}:{port}/{a.database}"


@dataclass
class RedisConfig:
    """The bus between the processes of one server (Synapse's `redis:` keys). Unset (no
    `redis:` section, or `enabled: false`): one process, nothing shared."""

    enabled: bool = True
    host: str = "localhost"
    port: int = 6379
    password: str | None = None
    dbid: int = 0  # Synapse's name for the Redis database number


@dataclass
class RateLimit:
    per_second: float = 0.2
    burst_count: int = 10


def _rl(per_second: float, burst_count: int) -> Any:
    return field(default_factory=lambda: RateLimit(per_second, burst_count))


@dataclass
class LoginRateLimits:
    address: RateLimit = _rl(0.003, 5)
    account: RateLimit = _rl(0.003, 5)
    failed_attempts: RateLimit = _rl(0.17, 3)


@dataclass
class JoinRateLimits:
    local: RateLimit = _rl(0.1, 10)
    remote: RateLimit = _rl(0.01, 10)


@dataclass
class InviteRateLimits:
    per_room: RateLimit = _rl(0.3, 10)
    per_user: RateLimit = _rl(0.003, 5)
    per_issuer: RateLimit = _rl(0.3, 10)


@dataclass
class FederationRateLimit:
    """Synapse's `rc_federation`: per origin server, over `window_size` ms, requests past
    `sleep_limit` are delayed `sleep_delay` ms each, past `reject_limit` waiting ones are
    refused (429), and at most `concurrent` are processed at once."""

    window_size: int = 1000
    sleep_limit: int = 10
    sleep_delay: int = 500
    reject_limit: int = 50
    concurrent: int = 3


@dataclass
class TrustedKeyServer:
    """One entry of `trusted_key_servers`: a notary asked for keys a server did not give
    us itself. `verify_keys` (key ID -> unpadded base64) pins the notary's own keys."""

    server_name: str = ""
    verify_keys: dict[str, str] | None = None


def _default_trusted_key_servers() -> list[TrustedKeyServer]:
    # Synapse's default notary.
    return [
        TrustedKeyServer(
            "matrix.org", {"ed25519:auto": "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw"}
        )
    ]


# Synapse's DEFAULT_IP_RANGE_BLACKLIST: loopback, private, link-local, CGNAT,
# documentation, benchmarking, multicast and other special-purpose ranges.
DEFAULT_IP_RANGE_BLACKLIST = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
]


@dataclass
class HttpLimits:
    """Time-outs and caps at the HTTP edge against slow and abusive clients (seconds)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 60.0
    max_connections_per_ip: int = 1000  # 0: no cap


@dataclass
class PresenceConfig:
    enabled: bool = True


@dataclass
class MediaRetentionConfig:
    """Synapse's `media_retention` section: how long media nobody downloads is kept.
    Only the cache of other servers' media is purged here (local media: not yet)."""

    remote_media_lifetime: str | int | None = None
    local_media_lifetime: str | int | None = None


@dataclass
class RetentionPolicy:
    """Lifetimes of a room's messages (Synapse's `retention.default_policy`; durations)."""

    min_lifetime: str | int | None = None
    max_lifetime: str | int | None = None


@dataclass
class RetentionPurgeJob:
    """One of Synapse's `retention.purge_jobs`: every `interval`, purge the rooms whose
    max_lifetime lies in [shortest_max_lifetime, longest_max_lifetime] (unset: open)."""

    shortest_max_lifetime: str | int | None = None
    longest_max_lifetime: str | int | None = None
    interval: str | int = "1d"


def _default_purge_jobs() -> list[RetentionPurgeJob]:
    return [RetentionPurgeJob()]


@dataclass
class RetentionConfig:
    """Synapse's `retention` section: message retention policies (m.room.retention) and
    the jobs that purge expired history."""

    enabled: bool = False
    default_policy: RetentionPolicy = field(default_factory=RetentionPolicy)
    allowed_lifetime_min: str | int | None = None
    allowed_lifetime_max: str | int | None = None
    purge_jobs: list[RetentionPurgeJob] = field(default_factory=_default_purge_jobs)


@dataclass
class UserDirectoryConfig:
    """Synapse's `user_directory` section."""

    enabled: bool = True
    # False: only users sharing a room with the searcher or in public rooms are found.
    search_all_users: bool = False


@dataclass
class PasswordPolicy:
    """Synapse's `password_config.policy` (MSC2000): what a user-chosen password needs."""

    enabled: bool = False
    minimum_length: int = 0
    require_digit: bool = False
    require_symbol: bool = False
    require_lowercase: bool = False
    require_uppercase: bool = False


@dataclass
class PasswordConfig:
    """Synapse's `password_config` section (its `policy` and `localdb_enabled`)."""

    policy: PasswordPolicy = field(default_factory=PasswordPolicy)
    # False: passwords are checked only by password providers (modules), never locally.
    localdb_enabled: bool = True


@dataclass
class OidcUserMapping:
    """`oidc_providers[].user_mapping_provider.config` (Synapse's default mapper's keys).
    Templates are Jinja-like: ``{{ user.claim }}``, optionally ``| lower``."""

    subject_claim: str = "sub"
    localpart_template: str = "{{ user.preferred_username }}"
    display_name_template: str | None = "{{ user.name }}"
    email_template: str | None = None


@dataclass
class OidcUserMappingProvider:
    # Synapse's default mapper is the only one (its name is accepted, for old configs).
    module: str | None = None
    config: OidcUserMapping = field(default_factory=OidcUserMapping)


@dataclass
class OidcAttributeRequirement:
    """A claim a user must have to sign in (Synapse's `attribute_requirements`): equal to
    `value`, or holding it when the claim is a list."""

    attribute: str = ""
    value: str = ""


@dataclass
class OidcProvider:
    """One of Synapse's `oidc_providers`: an OpenID Connect provider for m.login.sso."""

    idp_id: str = "oidc"
    idp_name: str = "OpenID Connect"
    # Shown by clients on the sign-in button (Synapse's keys): an mxc:// icon, a brand.
    idp_icon: str | None = None
    idp_brand: str | None = None
    # False: only people who signed in before (linked accounts) may; no new accounts.
    enable_registration: bool = True
    attribute_requirements: list[OidcAttributeRequirement] = field(default_factory=list)
    issuer: str = ""
    client_id: str = ""
    client_secret: str | None = None
    client_auth_method: Literal["client_secret_basic", "client_secret_post", "none"] = (
        "client_secret_basic"
    )
    scopes: list[str] = field(default_factory=lambda: ["openid", "profile"])
    # True: the endpoints come from <issuer>/.well-known/openid-configuration.
    discover: bool = True
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    jwks_uri: str | None = None
    # "auto": claims from the ID token; "userinfo_endpoint": also from userinfo.
    user_profile_method: Literal["auto", "userinfo_endpoint"] = "auto"
    pkce_method: Literal["auto", "always", "never"] = "always"
    # True: a first login may take over an existing account of the same localpart that
    # no identity of this provider is linked to yet (migrations). Off: a new localpart.
    allow_existing_users: bool = False
    user_mapping_provider: OidcUserMappingProvider = field(default_factory=OidcUserMappingProvider)


@dataclass
class EmailConfig:
    """Synapse's `email` section (the part for validating addresses): the SMTP server
    this server sends its mail through, and the sender. With it, users may add an email
    address to their account (and register with one), then log in with it."""

    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_pass: str | None = None
    # STARTTLS before anything else is sent (the server's certificate checked).
    require_transport_security: bool = False
    notif_from: str = ""
    app_name: str = "Matrix"
    # how long the emailed link stays good
    validation_token_lifetime: str = "1h"


@dataclass
class CasConfig:
    """Synapse's `cas_config`: sign-in through a CAS server (m.login.sso, and the legacy
    m.login.cas). The CAS user name becomes the localpart (Synapse's mapping); a first
    sign-in with the name of an existing account signs into that account, as Synapse's."""

    enabled: bool = False
    server_url: str = ""  # the CAS server's base URL: <server_url>/login, /proxyValidate
    idp_id: str = "cas"
    idp_name: str = "CAS"
    idp_icon: str | None = None
    idp_brand: str | None = None
    displayname_attribute: str | None = None
    # attribute -> required value (null: the attribute must be present)
    required_attributes: dict[str, str | None] = field(default_factory=dict)
    enable_registration: bool = True


@dataclass
class SsoConfig:
    """Synapse's `sso` section: client redirect URLs (prefixes) that SSO sends the login
    token to at once; any other gets a page asking the user to confirm first."""

    client_whitelist: list[str] = field(default_factory=list)


@dataclass
class PublicationRule:
    """One entry of `room_list_publication_rules` (Synapse's): globs over the publishing
    user, one of the room's aliases and the room ID; the first rule that matches decides."""

    user_id: str = "*"
    alias: str = "*"
    room_id: str = "*"
    action: Literal["allow", "deny"] = "allow"


@dataclass
class ServerNoticesConfig:
    """Synapse's `server_notices` section: off unless `system_mxid_localpart` is set."""

    system_mxid_localpart: str | None = None
    system_mxid_display_name: str | None = None
    system_mxid_avatar_url: str | None = None
    room_name: str = "Server Notices"
    room_topic: str | None = None
    auto_join: bool = False


@dataclass
class ThumbnailSize:
    width: int = 32
    height: int = 32
    method: Literal["crop", "scale"] = "scale"


def _default_thumbnail_sizes() -> list[ThumbnailSize]:
    # The sizes the spec says servers SHOULD produce.
    return [
        ThumbnailSize(32, 32, "crop"),
        ThumbnailSize(96, 96, "crop"),
        ThumbnailSize(320, 240, "scale"),
        ThumbnailSize(640, 480, "scale"),
        ThumbnailSize(800, 600, "scale"),
    ]


@dataclass
class MediaUploadLimit:
    # At most max_size bytes uploaded per user in any time_period (e.g. 1d).
    time_period: str | int = "1d"
    max_size: str | int = "1G"


@dataclass
class IncomingWebhook:
    """POST <public URL>/_starling/webhooks/v1/incoming/{id}/{secret} posts to `room_id`."""

    id: str = ""
    room_id: str = ""
    secret: str = ""
    sender_localpart: str = "webhook"
    # string.Template over the posted JSON's top-level values ($name); None: its "text".
    template: str | None = None


@dataclass
class OutgoingWebhook:
    """The room's events (of these types, with one of the keywords if any) POSTed to `url`,
    signed with HMAC-SHA256 of `secret`."""

    id: str = ""
    room_id: str = ""
    url: str = ""
    secret: str = ""
    event_types: list[str] = field(default_factory=lambda: ["m.room.message"])
    keywords: list[str] = field(default_factory=list)
    max_attempts: int = 8


@dataclass
class WebSocketConfig:
    """The WebSocket transport's limits (docs/transports.md)."""

    # Largest client frame; a larger one closes the socket with 1009.
    max_message_size: str | int = "1M"
    # Request frames served at once per socket; more are refused M_LIMIT_EXCEEDED.
    max_in_flight: int = 8
    # Ping interval (seconds); a peer that does not pong within half of it is dropped.
    heartbeat: float = 30.0
    # Seconds a socket without an Authorization header has to send its auth frame.
    auth_timeout: float = 10.0


@dataclass
class LowBandwidthConfig:
    """Low-bandwidth Matrix (MSC3079) over CoAP on UDP, secured with Noise
    (docs/transports.md). Off unless `port` is set."""

    port: int | None = None
    bind_addresses: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    # The server's static Noise key (X25519, raw 32 bytes), created on first start.
    noise_key_path: str = "noise.key"
    # Live Noise sessions in all; the oldest idle one is dropped to admit a new one.
    max_sessions: int = 1000
    # Live sessions per client address (a handshake costs the server two X25519 operations).
    max_sessions_per_ip: int = 20
    # A session without traffic for this long is forgotten (seconds).
    session_idle_timeout: float = 600.0
    # Requests served at once per session; more are answered 4.29 M_LIMIT_EXCEEDED.
    max_in_flight: int = 8
    # Largest request body reassembled from Block1 blocks, and largest answer.
    max_body_size: str | int = "1M"


@dataclass
class WebhooksConfig:
    incoming: list[IncomingWebhook] = field(default_factory=list)
    outgoing: list[OutgoingWebhook] = field(default_factory=list)


@dataclass
class Config:
    server_name: str = ""
    public_baseurl: str | None = None
    listeners: list[Listener] = field(default_factory=lambda: [Listener()])
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    # Several processes (workers) of this server share PostgreSQL and this Redis
    # (docs/scaling.md). None: a single process, exactly as without workers.
    redis: RedisConfig | None = None
    # Which process runs each singleton (Synapse's keys): the main process (started
    # without --worker) is "main". Background jobs: media retention, device-list resyncs.
    run_background_tasks_on: str = "main"
    federation_sender_instances: list[str] = field(default_factory=lambda: ["main"])
    pusher_instances: list[str] = field(default_factory=lambda: ["main"])
    notify_appservices_from_worker: str = "main"
    signing_key_path: str = "signing.key"
    media_store_path: str = "media_store"
    max_upload_size: str | int = "50M"
    # Largest accepted JSON request body, in bytes (media uploads have max_upload_size).
    max_request_body_size: int = 1024 * 1024
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_config: str | None = None
    # Events kept decoded in memory (Synapse's key and default; K = 1024).
    event_cache_size: str | int = "10K"

    enable_registration: bool = False
    enable_registration_without_verification: bool = False
    registration_requires_token: bool = False
    # Google reCAPTCHA (Synapse's keys; accounts/recaptcha.py): with
    # enable_registration_captcha every registration flow starts with m.login.recaptcha.
    # With the private key alone the stage is checked when a client submits it, unasked.
    enable_registration_captcha: bool = False
    recaptcha_public_key: str | None = None
    recaptcha_private_key: str | None = None
    recaptcha_siteverify_api: str = "https://www.recaptcha.net/recaptcha/api/siteverify"
    registration_shared_secret: str | None = None
    # New accounts from /register wait for an admin's approval (Synapse's MSC3866).
    registration_requires_approval: bool = False
    allow_guest_access: bool = False
    # Other servers may read our published room directory (Synapse's key and default).
    allow_public_rooms_over_federation: bool = False
    # The body-based mention push rules spec v1.17 removed (Synapse still has them).
    legacy_mention_push_rules: bool = False
    # Application-service registration files (Synapse's format; starling/appservice/).
    app_service_config_files: list[str] = field(default_factory=list)
    # Python modules (Synapse's key): [{module: dotted.Class, config: {...}}]; starling/modules/.
    modules: list[dict[str, Any]] = field(default_factory=list)
    # OpenID Connect providers for m.login.sso (Synapse's keys): accounts/oidc.py.
    oidc_providers: list[OidcProvider] = field(default_factory=list)
    sso: SsoConfig = field(default_factory=SsoConfig)
    cas_config: CasConfig = field(default_factory=CasConfig)
    # MSC2228 (Synapse's experimental key): messages with org.matrix.self_destruct_after
    # are censored at that time (rooms/ephemeral.py).
    enable_ephemeral_messages: bool = False
    # Synapse's `email`: None (the default) sends no mail, so no address validation.
    email: EmailConfig | None = None
    # Starling's own webhooks (no Synapse equivalent): starling/webhooks/.
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    # Transports beyond HTTPS+JSON (docs/transports.md).
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    low_bandwidth: LowBandwidthConfig = field(default_factory=LowBandwidthConfig)
    default_room_version: str = DEFAULT_ROOM_VERSION

    # .well-known: served when set (Synapse: serve_server_wellknown).
    serve_server_wellknown: bool = False
    serve_client_wellknown: bool = True
    extra_well_known_client_content: dict[str, Any] = field(default_factory=dict)

    enable_metrics: bool = False
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    user_directory: UserDirectoryConfig = field(default_factory=UserDirectoryConfig)
    server_notices: ServerNoticesConfig = field(default_factory=ServerNoticesConfig)
    password_config: PasswordConfig = field(default_factory=PasswordConfig)
    # None: anyone who may moderate a room may publish it (Synapse before 1.126).
    room_list_publication_rules: list[PublicationRule] | None = None
    # Only server admins (and application services) may create rooms (Starling's own).
    restrict_room_creation_to_admins: bool = False

    # VoIP: TURN servers handed to clients (/voip/turnServer), Synapse's keys.
    turn_uris: list[str] = field(default_factory=list)
    turn_shared_secret: str | None = None
    turn_username: str | None = None
    turn_password: str | None = None
    turn_user_lifetime: str | int = "1h"
    turn_allow_guests: bool = True

    rc_message: RateLimit = _rl(0.2, 10)
    rc_registration: RateLimit = _rl(0.17, 3)
    rc_login: LoginRateLimits = field(default_factory=LoginRateLimits)
    rc_joins: JoinRateLimits = field(default_factory=JoinRateLimits)
    rc_joins_per_room: RateLimit = _rl(1, 10)
    rc_invites: InviteRateLimits = field(default_factory=InviteRateLimits)
    rc_admin_redaction: RateLimit | None = None
    # To-device messages per sending user, counted per recipient device (not Synapse's).
    rc_to_device: RateLimit = _rl(100, 10_000)
    rc_federation: FederationRateLimit = field(default_factory=FederationRateLimit)

    # TLS for listeners with `tls: true` (Synapse's keys): PEM certificate chain and key.
    tls_certificate_path: str | None = None
    tls_private_key_path: str | None = None

    # Federation (Synapse's keys). None: federate with anyone; a list: only with these.
    federation_domain_whitelist: list[str] | None = None
    federation_verify_certificates: bool = True
    # PEM files of the CAs trusted for federation, replacing the system's when set.
    federation_custom_ca_list: list[str] = field(default_factory=list)
    # Server names (globs, e.g. *.onion) whose certificates are not verified.
    federation_certificate_verification_whitelist: list[str] = field(default_factory=list)
    # Outbound connections (federation) to these IP ranges are refused, unless whitelisted.
    ip_range_blacklist: list[str] = field(default_factory=lambda: list(DEFAULT_IP_RANGE_BLACKLIST))
    ip_range_whitelist: list[str] = field(default_factory=list)
    # Synapse's key: push gateways (and later app services) are called without checking
    # their certificates. Only for test rigs (SyTest's gateway has a test CA); never in use.
    use_insecure_ssl_client_just_for_testing_do_not_use: bool = False
    trusted_key_servers: list[TrustedKeyServer] = field(
        default_factory=_default_trusted_key_servers
    )
    # Keys this server signed with before: {"ed25519:id": {"key": base64, "expired_ts": ms}}.
    old_signing_keys: dict[str, Any] = field(default_factory=dict)
    # How long others may cache our /_matrix/key/v2/server answer (valid_until_ts).
    key_refresh_interval: str | int = "1d"

    # media repository (Synapse's names)
    max_image_pixels: str | int = "32M"
    dynamic_thumbnails: bool = False
    thumbnail_sizes: list[ThumbnailSize] = field(default_factory=_default_thumbnail_sizes)
    enable_authenticated_media: bool = True
    max_pending_media_uploads: int = 5
    unused_expiration_time: str | int = "24h"
    media_upload_limits: list[MediaUploadLimit] = field(default_factory=list)
    media_retention: MediaRetentionConfig = field(default_factory=MediaRetentionConfig)
    # message retention policies (Synapse's `retention`)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    # Bytes of other servers' media one client address may make this server download.
    remote_media_download_burst_count: str | int = "500M"
    remote_media_download_per_second: str | int = "87K"
    rc_media_create: RateLimit = _rl(10, 50)
    url_preview_enabled: bool = False
    url_preview_ip_range_blacklist: list[str] = field(default_factory=list)
    url_preview_ip_range_whitelist: list[str] = field(default_factory=list)
    url_preview_url_blacklist: list[dict[str, str]] = field(default_factory=list)
    max_spider_size: str | int = "10M"

    # Where relative paths in this file are resolved from (the config file's directory).
    config_dir: str = field(default=".", metadata={"internal": True})

    # --- derived -----------------------------------------------------------------
    def resolve_path(self, p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else Path(self.config_dir) / path

    @property
    def max_upload_size_bytes(self) -> int:
        return parse_size(self.max_upload_size)

    @property
    def client_base_url(self) -> str:
        if self.public_baseurl:
            return self.public_baseurl.rstrip("/") + "/"
        for listener in self.listeners:
            if listener.type == "http" and any("client" in r.names for r in listener.resources):
                return f"http://{self.server_name.split(':')[0]}:{listener.port}/"
        return f"https://{self.server_name}/"


# --- validation ------------------------------------------------------------------------


def parse_size(value: str | int) -> int:
    """'50M' -> bytes; Synapse's size suffixes K, M, G (powers of 1024)."""
    if isinstance(value, int):
        return value
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    v = value.strip().upper()
    try:
        if v and v[-1] in units:
            return int(v[:-1]) * units[v[-1]]
        return int(v)
    except ValueError:
        raise ValueError(f"{value!r} is not a size (like 50M or 1048576)") from None


def _check_retention(r: RetentionConfig) -> None:
    """Every duration of the `retention` section parses and is positive; min <= max."""

    def ms(name: str, value: str | int | None) -> int | None:
        if value is None:
            return None
        try:
            out = parse_duration(value)
        except ValueError as e:
            raise ConfigError(f"retention.{name}: {e}") from None
        if out <= 0:
            raise ConfigError(f"retention.{name}: must be positive")
        return out

    pairs = [
        ("default_policy.min_lifetime", "default_policy.max_lifetime",
         r.default_policy.min_lifetime, r.default_policy.max_lifetime),
        ("allowed_lifetime_min", "allowed_lifetime_max",
         r.allowed_lifetime_min, r.allowed_lifetime_max),
    ]  # fmt: skip
    for i, job in enumerate(r.purge_jobs):
        ms(f"purge_jobs[{i}].interval", job.interval)
        pairs.append(
            (f"purge_jobs[{i}].shortest_max_lifetime", f"purge_jobs[{i}].longest_max_lifetime",
             job.shortest_max_lifetime, job.longest_max_lifetime)
        )  # fmt: skip
    for low_name, high_name, low, high in pairs:
        lo, hi = ms(low_name, low), ms(high_name, high)
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"retention.{low_name}: greater than {high_name}")
    if r.enabled and not r.purge_jobs:
        raise ConfigError("retention.purge_jobs: at least one job is needed")


def parse_duration(value: str | int) -> int:
    """'24h' -> milliseconds; Synapse's suffixes s, m, h, d, w, y (a bare number is ms)."""
    if isinstance(value, int):
        return value
    units = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
    units["y"] = 365 * units["d"]
    v = value.strip().lower()
    try:
        if v and v[-1] in units:
            return int(v[:-1]) * units[v[-1]]
        return int(v)
    except ValueError:
        raise ValueError(f"{value!r} is not a duration (like 24h, 30m or 5000)") from None


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is list:
        return f"a list of ({_describe(get_args(tp)[0])})"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(
            f.name for f in dataclasses.fields(tp) if not f.metadata.get("internal")
        )
    if tp is type(None):
        return "null"
    return {int: "an integer", str: "a string", bool: "true or false", float: "a number"}.get(
        tp, str(tp)
    )


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _convert(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected null")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
        return _build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")


def _build(cls: Any, data: Mapping[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"unknown configuration key {where!r}; allowed here: {allowed}")
        kwargs[key] = _convert(value, hints[key], where)
    return cls(**kwargs)


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(ENV_PREFIX + "TEST"):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            continue
        if parts[0] not in {f.name for f in dataclasses.fields(Config)}:
            continue  # not a config key (e.g. STARLING_SPEC_DIR)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        target = data
        for p in parts[:-1]:
            nxt = target.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                target[p] = nxt
            target = nxt
        target[parts[-1]] = value


def _check_http_limits(limits: HttpLimits) -> None:
    for name in ("header_timeout", "body_timeout", "keepalive_timeout"):
        if not 0 < getattr(limits, name) <= 3600:
            raise ConfigError(f"http_limits.{name}: must be between 0 and 3600 seconds")
    if limits.max_connections_per_ip < 0:
        raise ConfigError("http_limits.max_connections_per_ip: must be 0 (no cap) or more")


def _size_in(value: str | int, key: str) -> None:
    try:
        size = parse_size(value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    if not 1024 <= size <= 64 * 1024 * 1024:
        raise ConfigError(f"{key}: must be from 1K to 64M")


def _check_transports(cfg: Config) -> None:
    ws = cfg.websocket
    _size_in(ws.max_message_size, "websocket.max_message_size")
    if not 1 <= ws.max_in_flight <= 1000:
        raise ConfigError("websocket.max_in_flight: must be from 1 to 1000")
    for name in ("heartbeat", "auth_timeout"):
        if not 0 < getattr(ws, name) <= 3600:
            raise ConfigError(f"websocket.{name}: must be between 0 and 3600 seconds")
    lb = cfg.low_bandwidth
    if lb.port is not None and not 0 <= lb.port <= 65535:
        raise ConfigError("low_bandwidth.port: must be a UDP port (0 picks a free one)")
    if lb.port is not None and not any(
        "client" in r.names for listener in cfg.listeners for r in listener.resources
    ):
        raise ConfigError(
            "low_bandwidth.port: needs a listener with the `client` resource (its requests "
            "are served through that listener's routes)"
        )
    if not 1 <= lb.max_sessions <= 1_000_000 or not 1 <= lb.max_sessions_per_ip <= lb.max_sessions:
        raise ConfigError(
            "low_bandwidth.max_sessions (1 to 1000000) and max_sessions_per_ip "
            "(1 to max_sessions): out of range"
        )
    if not 1 <= lb.max_in_flight <= 1000:
        raise ConfigError("low_bandwidth.max_in_flight: must be from 1 to 1000")
    if not 0 < lb.session_idle_timeout <= 86400:
        raise ConfigError("low_bandwidth.session_idle_timeout: must be between 0 and 86400 s")
    _size_in(lb.max_body_size, "low_bandwidth.max_body_size")


def _check_semantics(cfg: Config) -> None:
    from starling.protocol.identifiers import is_valid_server_name

    if not cfg.server_name:
        raise ConfigError("server_name: required (the domain in your users' IDs, e.g. example.org)")
    if not is_valid_server_name(cfg.server_name):
        raise ConfigError(f"server_name: {cfg.server_name!r} is not a valid Matrix server name")
    if not 0 <= cfg.password_config.policy.minimum_length <= 512:
        raise ConfigError("password_config.policy.minimum_length: must be from 0 to 512")
    localpart = cfg.server_notices.system_mxid_localpart
    if localpart is not None and not re.fullmatch(r"[a-z0-9._=\-/+]+", localpart):
        raise ConfigError(
            f"server_notices.system_mxid_localpart: {localpart!r} is not a valid localpart"
        )
    if cfg.default_room_version not in KNOWN_ROOM_VERSIONS:
        raise ConfigError(
            f"default_room_version: {cfg.default_room_version!r} is not supported; "
            f"allowed: {', '.join(KNOWN_ROOM_VERSIONS)}"
        )
    try:
        parse_size(cfg.max_upload_size)
    except ValueError as e:
        raise ConfigError(f"max_upload_size: {e}") from None
    try:
        if parse_duration(cfg.turn_user_lifetime) <= 0:
            raise ValueError("must be positive")
    except ValueError as e:
        raise ConfigError(f"turn_user_lifetime: {e}") from None
    _check_media(cfg)
    _check_federation(cfg)
    _check_webhooks(cfg.webhooks)
    _check_oidc(cfg)
    _check_http_limits(cfg.http_limits)
    _check_transports(cfg)
    if cfg.max_request_body_size < 1024:
        raise ConfigError("max_request_body_size: must be at least 1024 bytes")
    if not cfg.listeners:
        raise ConfigError("listeners: at least one listener is required")
    for i, listener in enumerate(cfg.listeners):
        if not 0 <= listener.port <= 65535:
            raise ConfigError(f"listeners[{i}].port: must be between 0 and 65535")
        if listener.tls and not (cfg.tls_certificate_path and cfg.tls_private_key_path):
            raise ConfigError(
                f"listeners[{i}].tls: needs tls_certificate_path and tls_private_key_path "
                "(PEM files; `starling generate-config --tls-self-signed` makes a pair)"
            )
    _check_recaptcha(cfg)
    if (
        cfg.enable_registration
        and not cfg.registration_requires_token
        and not cfg.enable_registration_captcha
        and not cfg.enable_registration_without_verification
    ):
        # Synapse's guard: anyone on the internet could create accounts with no check.
        raise ConfigError(
            "enable_registration: open registration without verification (no "
            "registration_requires_token or enable_registration_captcha) lets anyone "
            "create accounts; set registration_requires_token: true, or confirm with "
            "enable_registration_without_verification: true"
        )
    _check_workers(cfg)
    if cfg.database.args.cp_min < 1 or cfg.database.args.cp_max < cfg.database.args.cp_min:
        raise ConfigError("database.args: need 1 <= cp_min <= cp_max")
    for name in ("rc_message", "rc_registration", "rc_joins_per_room", "rc_to_device"):
        rl: RateLimit = getattr(cfg, name)
        if rl.per_second < 0 or rl.burst_count < 0:
            raise ConfigError(f"{name}: per_second and burst_count must not be negative")


def _check_recaptcha(cfg: Config) -> None:
    from urllib.parse import urlsplit

    for key in ("recaptcha_public_key", "recaptcha_private_key"):
        value = getattr(cfg, key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string")
    if cfg.enable_registration_captcha and not (
        cfg.recaptcha_public_key and cfg.recaptcha_private_key
    ):
        raise ConfigError(
            "enable_registration_captcha: needs recaptcha_public_key and recaptcha_private_key"
        )
    url = urlsplit(cfg.recaptcha_siteverify_api)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError("recaptcha_siteverify_api: must be an http(s) URL")


WORKER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def _check_workers(cfg: Config) -> None:
    redis = cfg.redis
    if redis is not None and redis.enabled:
        if cfg.database.is_sqlite:
            raise ConfigError(
                "redis: workers share one PostgreSQL database; SQLite serves one process "
                "(move with `starling port-db`, or remove the redis section)"
            )
        if not 0 < redis.port <= 65535:
            raise ConfigError("redis.port: must be between 1 and 65535")
        if redis.dbid < 0:
            raise ConfigError("redis.dbid: must be 0 or more")
        if (cfg.oidc_providers or cfg.cas_config.enabled) and not cfg.public_baseurl:
            # Without it each process names its own listener in the callback URL, and the
            # provider's redirect back (which may land on any process) fails the code
            # exchange (OIDC's redirect_uri, CAS's service) that must name the URL the
            # sign-in started with.
            raise ConfigError(
                "public_baseurl: must be set with workers and single sign-on (every "
                "process must give the identity provider the same callback URL)"
            )
    for key in ("federation_sender_instances", "pusher_instances"):
        names: list[str] = getattr(cfg, key)
        if len(names) != 1:
            # Synapse shards these by destination / user; Starling runs one of each.
            raise ConfigError(f"{key}: name exactly one process (sharding is not supported)")
    for key, name in (
        ("run_background_tasks_on", cfg.run_background_tasks_on),
        ("federation_sender_instances", cfg.federation_sender_instances[0]),
        ("pusher_instances", cfg.pusher_instances[0]),
        ("notify_appservices_from_worker", cfg.notify_appservices_from_worker),
    ):
        if not WORKER_NAME.fullmatch(name):
            raise ConfigError(
                f"{key}: {name!r} is not a worker name (lowercase letters, digits, _ and -)"
            )


MIN_WEBHOOK_SECRET_LENGTH = 16


def _check_webhooks(hooks: WebhooksConfig) -> None:
    from urllib.parse import urlsplit

    from starling.protocol.identifiers import is_valid_room_id

    seen: set[tuple[str, str]] = set()
    groups: list[tuple[str, list[IncomingWebhook | OutgoingWebhook]]] = [
        ("incoming", list(hooks.incoming)),
        ("outgoing", list(hooks.outgoing)),
    ]
    for kind, entries in groups:
        for i, hook in enumerate(entries):
            where = f"webhooks.{kind}[{i}]"
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", hook.id):
                raise ConfigError(f"{where}.id: 1-64 of A-Z a-z 0-9 _ . -")
            if (kind, hook.id) in seen:
                raise ConfigError(f"{where}.id: {hook.id!r} is used twice")
            seen.add((kind, hook.id))
            if not is_valid_room_id(hook.room_id):
                raise ConfigError(f"{where}.room_id: not a room ID")
            if len(hook.secret) < MIN_WEBHOOK_SECRET_LENGTH:
                raise ConfigError(
                    f"{where}.secret: at least {MIN_WEBHOOK_SECRET_LENGTH} characters"
                )
    for i, hook in enumerate(hooks.incoming):
        if not re.fullmatch(r"[a-z0-9._=\-/+]+", hook.sender_localpart):
            raise ConfigError(f"webhooks.incoming[{i}].sender_localpart: not a localpart")
    for i, out in enumerate(hooks.outgoing):
        if urlsplit(out.url).scheme not in ("http", "https") or not urlsplit(out.url).hostname:
            raise ConfigError(f"webhooks.outgoing[{i}].url: an http(s) URL")
        if not 1 <= out.max_attempts <= 100:
            raise ConfigError(f"webhooks.outgoing[{i}].max_attempts: between 1 and 100")


def _check_oidc(cfg: Config) -> None:
    from urllib.parse import urlsplit

    seen: set[str] = set()
    if cfg.email is not None:
        if "@" not in cfg.email.notif_from:
            raise ConfigError("email.notif_from: an address to send from is needed")
        if not 0 < cfg.email.smtp_port < 65536:
            raise ConfigError("email.smtp_port: must be a port number")
        try:
            if parse_duration(cfg.email.validation_token_lifetime) <= 0:
                raise ValueError("must be positive")
        except ValueError as e:
            raise ConfigError(f"email.validation_token_lifetime: {e}") from None
    cas = cfg.cas_config
    if cas.enabled:
        if urlsplit(cas.server_url).scheme not in ("http", "https"):
            raise ConfigError("cas_config.server_url: must be an http(s) URL")
        if not re.fullmatch(r"[A-Za-z0-9_.~-]{1,64}", cas.idp_id) or cas.idp_id.startswith("oidc"):
            raise ConfigError("cas_config.idp_id: 1-64 of A-Z a-z 0-9 _ . ~ -, not oidc...")
    for i, p in enumerate(cfg.oidc_providers):
        where = f"oidc_providers[{i}]"
        if not re.fullmatch(r"[A-Za-z0-9_.~-]{1,64}", p.idp_id):
            raise ConfigError(f"{where}.idp_id: 1-64 of A-Z a-z 0-9 _ . ~ -")
        if p.idp_id in seen:
            raise ConfigError(f"{where}.idp_id: {p.idp_id!r} is used twice")
        seen.add(p.idp_id)
        if not p.client_id:
            raise ConfigError(f"{where}.client_id: required")
        if p.client_auth_method != "none" and not p.client_secret:
            raise ConfigError(f"{where}.client_secret: required by {p.client_auth_method}")
        if "openid" not in p.scopes:
            raise ConfigError(f"{where}.scopes: must include openid")
        mapper = p.user_mapping_provider.module
        if mapper not in (None, "synapse.handlers.oidc.JinjaOidcMappingProvider"):
            raise ConfigError(
                f"{where}.user_mapping_provider.module: only Synapse's default"
                " (synapse.handlers.oidc.JinjaOidcMappingProvider) is supported"
            )
        urls = [p.issuer] if p.discover else [
            p.issuer, p.authorization_endpoint, p.token_endpoint, p.jwks_uri
        ]  # fmt: skip
        for url in urls:
            if not url or urlsplit(url).scheme not in ("http", "https"):
                raise ConfigError(
                    f"{where}: issuer (and without discover, authorization_endpoint,"
                    " token_endpoint, jwks_uri) must be http(s) URLs"
                )


def _check_federation(cfg: Config) -> None:
    import ipaddress

    from starling.protocol.identifiers import is_valid_server_name
    from starling.protocol.signing import KeyFormatError, decode_verify_key_base64

    for name in ("ip_range_blacklist", "ip_range_whitelist"):
        for i, cidr in enumerate(getattr(cfg, name)):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"{name}[{i}]: {cidr!r} is not an IP range") from None
    for i, server in enumerate(cfg.federation_domain_whitelist or []):
        if not is_valid_server_name(server):
            raise ConfigError(f"federation_domain_whitelist[{i}]: {server!r} is not a server name")
    for i, notary in enumerate(cfg.trusted_key_servers):
        where = f"trusted_key_servers[{i}]"
        if not is_valid_server_name(notary.server_name):
            raise ConfigError(f"{where}.server_name: {notary.server_name!r} is not a server name")
        for key_id, key in (notary.verify_keys or {}).items():
            try:
                decode_verify_key_base64(key_id, key)
            except (KeyFormatError, TypeError) as e:
                raise ConfigError(f"{where}.verify_keys.{key_id}: {e}") from None
    for key_id, entry in cfg.old_signing_keys.items():
        where = f"old_signing_keys.{key_id}"
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("expired_ts"), int)
            or not isinstance(entry.get("key"), str)
        ):
            raise ConfigError(f"{where}: expected {{key: <base64>, expired_ts: <ms>}}")
        try:
            decode_verify_key_base64(key_id, entry["key"])
        except (KeyFormatError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from None
    try:
        if parse_duration(cfg.key_refresh_interval) < 60_000:
            raise ValueError("must be at least a minute")
    except ValueError as e:
        raise ConfigError(f"key_refresh_interval: {e}") from None
    rc = cfg.rc_federation
    if (
        min(rc.window_size, rc.sleep_limit, rc.reject_limit, rc.concurrent) < 1
        or rc.sleep_delay < 0
    ):
        raise ConfigError(
            "rc_federation: window_size, sleep_limit, reject_limit and concurrent must be "
            "at least 1, sleep_delay not negative"
        )


def _check_media(cfg: Config) -> None:
    import ipaddress
    import re

    try:
        if parse_size(cfg.event_cache_size) <= 0:
            raise ValueError("must be positive")
    except ValueError as e:
        raise ConfigError(f"event_cache_size: {e}") from None
    for name in ("remote_media_download_burst_count", "remote_media_download_per_second"):
        try:
            if parse_size(getattr(cfg, name)) < 0:
                raise ValueError("must not be negative")
        except ValueError as e:
            raise ConfigError(f"{name}: {e}") from None
    for name in ("max_image_pixels", "max_spider_size"):
        try:
            if parse_size(getattr(cfg, name)) <= 0:
                raise ValueError("must be positive")
        except ValueError as e:
            raise ConfigError(f"{name}: {e}") from None
    try:
        if parse_duration(cfg.unused_expiration_time) <= 0:
            raise ValueError("must be positive")
    except ValueError as e:
        raise ConfigError(f"unused_expiration_time: {e}") from None
    if cfg.media_retention.local_media_lifetime is not None:
        raise ConfigError(
            "media_retention.local_media_lifetime: not supported (only remote_media_lifetime)"
        )
    if cfg.media_retention.remote_media_lifetime is not None:
        try:
            if parse_duration(cfg.media_retention.remote_media_lifetime) <= 0:
                raise ValueError("must be positive")
        except ValueError as e:
            raise ConfigError(f"media_retention.remote_media_lifetime: {e}") from None
    _check_retention(cfg.retention)
    for i, limit in enumerate(cfg.media_upload_limits):
        try:
            if parse_duration(limit.time_period) <= 0 or parse_size(limit.max_size) < 0:
                raise ValueError("time_period must be positive, max_size not negative")
        except ValueError as e:
            raise ConfigError(f"media_upload_limits[{i}]: {e}") from None
    for i, size in enumerate(cfg.thumbnail_sizes):
        if not (1 <= size.width <= 10_000 and 1 <= size.height <= 10_000):
            raise ConfigError(f"thumbnail_sizes[{i}]: width and height must be 1..10000")
    if cfg.max_pending_media_uploads < 1:
        raise ConfigError("max_pending_media_uploads: must be at least 1")
    for name in ("url_preview_ip_range_blacklist", "url_preview_ip_range_whitelist"):
        for i, cidr in enumerate(getattr(cfg, name)):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"{name}[{i}]: {cidr!r} is not an IP range") from None
    url_parts = {"scheme", "netloc", "hostname", "path", "query", "fragment"}
    url_parts |= {"username", "password"}
    for i, entry in enumerate(cfg.url_preview_url_blacklist):
        if not entry or not all(isinstance(v, str) for v in entry.values()):
            raise ConfigError(
                f"url_preview_url_blacklist[{i}]: expected a mapping of URL parts to patterns"
            )
        unknown = set(entry) - url_parts
        if unknown:
            raise ConfigError(
                f"url_preview_url_blacklist[{i}]: unknown URL part {sorted(unknown)[0]!r}; "
                f"allowed: {', '.join(sorted(url_parts))}"
            )
        for part, pattern in entry.items():
            if pattern.startswith("^"):
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ConfigError(f"url_preview_url_blacklist[{i}].{part}: {e}") from None


def load_config_dict(
    data: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None, config_dir: str = "."
) -> Config:
    """Build and validate a Config from parsed YAML plus environment overrides."""
    merged: dict[str, Any] = dict(data or {})
    _apply_env(merged, os.environ if environ is None else environ)
    cfg: Config = _build(Config, merged, "")
    cfg.config_dir = config_dir
    _check_semantics(cfg)
    return cfg


def load_config(
    path: str | Path | Sequence[str | Path], environ: Mapping[str, str] | None = None
) -> Config:
    """Read, merge with the environment and validate a config file. Several files (as
    Synapse's repeated --config-path, e.g. the shared file then a worker's own listeners):
    a top-level key of a later file replaces the earlier one's; relative paths are
    resolved from the first file's directory."""
    if not isinstance(path, (str, Path)):
        paths = list(path)
        if not paths:
            raise ConfigError("no config file given")
        merged: dict[str, Any] = {}
        for one in paths:
            merged.update(_read_config_file(Path(one)) or {})
        return load_config_dict(merged, environ, config_dir=str(Path(paths[0]).resolve().parent))
    p = Path(path)
    return load_config_dict(_read_config_file(p), environ, config_dir=str(p.resolve().parent))


def _read_config_file(p: Path) -> dict[str, Any] | None:
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(p)!r}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
    return data


def all_keys() -> list[tuple[str, str, Any]]:
    """(dotted key, type description, default) for every key: drives docs and tests."""
    out: list[tuple[str, str, Any]] = []

    def walk(cls: Any, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            tp = hints[f.name]
            key = prefix + f.name
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            if dataclasses.is_dataclass(tp):
                out.append((key, "mapping", None))
                walk(tp, key + ".")
            else:
                out.append((key, _describe(tp), default))

    walk(Config, "")
    return out
