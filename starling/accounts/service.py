"""AccountService: registration, login, sessions (access and refresh tokens), devices,
password changes and deactivation — the policy over the accounts store.

Devices change here (created at login/registration, deleted at logout, on request or on
deactivation); other services learn of it through :meth:`AccountService.add_device_listener`.
User-interactive auth for the endpoints that need it goes through :mod:`starling.accounts.uia`
with the stage checkers defined here (password, dummy, registration token).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from starling.accounts.auth import RequestAuthenticator, Requester
from starling.accounts.email import EMAIL_IDENTITY, EmailValidation
from starling.accounts.external import ExternalAccounts, ExternalIdentity
from starling.accounts.passwords import PasswordHasher
from starling.accounts.recaptcha import RECAPTCHA, Recaptcha
from starling.accounts.registration import check_password, local_user_id, register_local_user
from starling.accounts.uia import (
    DUMMY,
    PASSWORD,
    REGISTRATION_TOKEN,
    SSO,
    AuthRequired,
    CompletedAuth,
    StageChecker,
    StageFailed,
    UserInteractiveAuth,
    check_dummy,
)
from starling.appservice.registry import AppServiceRegistry, exclusive_error
from starling.config import Config, RateLimit
from starling.errors import (
    MatrixError,
    bad_json,
    forbidden,
    limit_exceeded,
    missing_param,
    missing_token,
    not_found,
)
from starling.ratelimit import RateLimits
from starling.rooms.membership import MembershipService
from starling.storage.accounts import AccountStore, UIAuthSession, UserExists
from starling.storage.accounts import Device as Device  # what list_devices answers
from starling.storage.external_login import ExternalLoginStore
from starling.storage.memberships import MembershipStore
from starling.storage.profiles import ProfileStore

logger = logging.getLogger(__name__)

# Synapse's defaults: refreshable access tokens live 5 minutes; device names 100 chars.
REFRESHABLE_TOKEN_LIFETIME_MS = 5 * 60 * 1000
MAX_DEVICE_DISPLAY_NAME_LENGTH = 100
MAX_DEVICE_ID_LENGTH = 255
MAX_TOKEN_LENGTH = 1024
MAX_LOGIN_NAME_LENGTH = 512
# Unauthenticated /register probes (each creates a UIA session) and availability checks:
# at least this generous, more when rc_registration is (e.g. --no-rate-limit).
PROBE_LIMIT = RateLimit(per_second=1.0, burst_count=20)
# m.login.token tokens (minted by the SSO callback) are good once, for this long.
LOGIN_TOKEN_LIFETIME_MS = 2 * 60 * 1000
# A password provider that has not answered by then counts as having said no.
AUTH_CHECKER_TIMEOUT = 20.0

# A password provider (module API ``auth_checkers``): (username, login type, the login
# request's fields) → who signed in, or None. `username` is the local part the client
# named, lower-cased.
AuthChecker = Callable[[str, str, Mapping[str, Any]], Awaitable[ExternalIdentity | None]]
# A module's verdict on a registration (the localpart asked for, or None for a generated
# one): None allows it, a reason refuses it.
RegistrationPolicy = Callable[[str | None], Awaitable[str | None]]


def probe_limit(rc_registration: RateLimit) -> RateLimit:
    return RateLimit(
        per_second=max(PROBE_LIMIT.per_second, rc_registration.per_second),
        burst_count=max(PROBE_LIMIT.burst_count, rc_registration.burst_count),
    )


TOKEN_VALIDITY_LIMIT = RateLimit(per_second=0.1, burst_count=5)  # Synapse's default

DeviceListener = Callable[[str, list[str], bool], Awaitable[None] | None]


def _now_ms() -> int:
    return int(time.time() * 1000)


def new_access_token() -> str:
    return "syt_" + secrets.token_urlsafe(30)


def new_refresh_token() -> str:
    return "syr_" + secrets.token_urlsafe(30)


def new_device_id() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


def identifier_user(body: Mapping[str, Any]) -> str:
    """The user named by a login or UIA password body: ``identifier`` (m.id.user) or the
    legacy top-level ``user``. Third-party identifiers are refused: none are bound here."""
    identifier = body.get("identifier")
    if identifier is None:
        if "medium" in body or "address" in body:
            raise _no_threepids()
        user = body.get("user")
        if user is None:
            raise missing_param("Missing 'identifier'")
        if not isinstance(user, str):
            raise bad_json("'user' must be a string")
        return user
    if not isinstance(identifier, dict):
        raise bad_json("'identifier' must be an object")
    kind = identifier.get("type")
    if kind == "m.id.user":
        user = identifier.get("user")
        if user is None:
            raise missing_param("Missing 'identifier.user'")
        if not isinstance(user, str):
            raise bad_json("'identifier.user' must be a string")
        return user
    if kind in ("m.id.thirdparty", "m.id.phone"):
        raise _no_threepids()
    raise MatrixError(400, "M_UNKNOWN", f"Unknown login identifier type {kind!r}")


def _no_threepids() -> MatrixError:
    return forbidden("Third-party identifiers are not supported: none are bound on this server")


@dataclass(frozen=True, slots=True)
class Session:
    """Credentials issued at login, registration or refresh."""

    user_id: str
    device_id: str
    access_token: str
    refresh_token: str | None = None
    expires_in_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "user_id": self.user_id,
            "access_token": self.access_token,
            "device_id": self.device_id,
        }
        if self.refresh_token is not None:
            out["refresh_token"] = self.refresh_token
            out["expires_in_ms"] = self.expires_in_ms
        return out


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    username: str | None
    password: str | None
    device_id: str | None
    initial_device_display_name: str | None
    # None when the request does not say (a later request of a session then uses the
    # first one's choice).
    inhibit_login: bool | None
    refresh_token: bool
    auth: Any
    # Synapse's `guest_access_token`: the guest account this registration upgrades.
    guest_access_token: str | None = None
    # The body's own `type` (as given, any JSON): m.login.application_service there is
    # the earlier form of an application service's registration.
    type: Any = None


APP_SERVICE_LOGIN = "m.login.application_service"
LoginRoute = Literal["app_service", "token", "provider", "password"]


class AccountService:
    """Accounts policy. Device listeners: ``add_device_listener(cb)`` registers
    ``cb(user_id, device_ids, deleted)``, called after the change is committed whenever
    devices of a local user are created (``deleted=False``: at login or registration)
    or deleted (``deleted=True``: logout, logout/all, device deletion, password change
    with ``logout_devices``, deactivation). It may be a plain function or a coroutine
    function; its errors are logged, never raised to the request."""

    def __init__(
        self,
        *,
        config: Config,
        store: AccountStore,
        uia: UserInteractiveAuth,
        passwords: PasswordHasher,
        auth: RequestAuthenticator,
        profiles: ProfileStore,
        memberships: MembershipStore,
        membership: MembershipService,
        rate_limits: RateLimits,
        clock_ms: Callable[[], int] = _now_ms,
        refreshable_token_lifetime_ms: int = REFRESHABLE_TOKEN_LIFETIME_MS,
        app_services: AppServiceRegistry | None = None,
    ) -> None:
        self._config = config
        self._app_services = app_services or AppServiceRegistry()
        self._store = store
        self.uia = uia
        self._passwords = passwords
        self._auth = auth
        self._profiles = profiles
        self._memberships = memberships
        self._membership = membership
        self._rate_limits = rate_limits
        self._clock_ms = clock_ms
        self.refreshable_token_lifetime_ms = refreshable_token_lifetime_ms
        self._buckets = rate_limits.buckets
        self._probe_limit = probe_limit(config.rc_registration)
        self._device_listeners: list[DeviceListener] = []
        self._erasure_listeners: list[Callable[[str], None]] = []
        # user ID -> monotonic time until which its logins are refused (failed attempts).
        # login type -> (the fields it needs, password providers in module order)
        self._auth_checkers: dict[str, tuple[tuple[str, ...], list[AuthChecker]]] = {}
        self._external: ExternalAccounts | None = None
        self._links: ExternalLoginStore | None = None
        self._email: EmailValidation | None = None
        # reCAPTCHA (accounts/recaptcha.py): its stage is checkable once the private key is
        # set; registration asks for it only with enable_registration_captcha.
        self.recaptcha = Recaptcha(config) if config.recaptcha_private_key else None
        self._registration_policy: RegistrationPolicy | None = None
        # (user_id, id_server) -> id_server_unbind_result: deactivation's unbinding of the
        # user's 3PIDs from identity servers (identity/service.py, set in app.py).
        self._unbind_all: Callable[[str, str | None], Awaitable[str]] | None = None
        # The SSO providers GET /login lists (accounts/oidc.py): id, name, icon, brand.
        self.sso_providers: list[dict[str, str]] = []

    @property
    def server_name(self) -> str:
        return self._config.server_name

    @property
    def has_app_services(self) -> bool:
        return bool(self._app_services)

    async def requester_for_token(self, token: str) -> Requester:
        return await self._auth.requester_for_token(token)

    async def app_service_requester(self, token: str | None) -> Requester:
        """The application service calling with `token` (m.login.application_service
        registration and login need its as_token)."""
        if token is None:
            raise missing_token()
        requester = await self._auth.requester_for_token(token)
        if requester.app_service is None:
            raise MatrixError(
                401, "M_UNKNOWN_TOKEN", "m.login.application_service needs an as_token"
            )
        return requester

    # -- device listeners

    def add_erasure_listener(self, callback: Callable[[str], None]) -> None:
        """`callback(user_id)` when a user is erased or reactivated here."""
        self._erasure_listeners.append(callback)

    def erasure_changed(self, user_id: str) -> None:
        for listener in self._erasure_listeners:
            listener(user_id)

    def add_device_listener(self, callback: DeviceListener) -> None:
        """See the class docstring."""
        self._device_listeners.append(callback)

    async def _devices_changed(self, user_id: str, device_ids: list[str], deleted: bool) -> None:
        if not device_ids:
            return
        for listener in self._device_listeners:
            try:
                result = listener(user_id, list(device_ids), deleted)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("device listener failed for %s", user_id)

    # -- sessions

    async def issue_session(
        self,
        user_id: str,
        device_id: str | None = None,
        initial_display_name: str | None = None,
        *,
        refreshable: bool = False,
    ) -> Session:
        """Log ``user_id`` in on ``device_id`` (a new device if None). Reusing a device
        invalidates the tokens it had (spec: relationship between tokens and devices)."""
        if initial_display_name is not None:
            initial_display_name = initial_display_name[:MAX_DEVICE_DISPLAY_NAME_LENGTH]
        if device_id is None:
            while True:
                device_id = new_device_id()
                if await self._store.upsert_device(user_id, device_id, initial_display_name):
                    break
            created = True
        else:
            created = await self._store.upsert_device(user_id, device_id, initial_display_name)
            if not created:
                await self._store.delete_device_tokens(user_id, device_id)
                self._auth.invalidate_device(user_id, device_id)
        access_token = new_access_token()
        session: Session
        if refreshable:
            refresh_token = new_refresh_token()
            lifetime = self.refreshable_token_lifetime_ms
            await self._store.add_refreshable_access_token(
                access_token, refresh_token, user_id, device_id, self._clock_ms() + lifetime
            )
            session = Session(user_id, device_id, access_token, refresh_token, lifetime)
        else:
            await self._store.add_access_token(access_token, user_id, device_id)
            session = Session(user_id, device_id, access_token)
        if created:
            await self._devices_changed(user_id, [device_id], False)
        return session

    async def refresh(self, refresh_token: str) -> Session:
        """POST /refresh: a new access token and refresh token for the same device."""
        if len(refresh_token) > MAX_TOKEN_LENGTH:
            raise _unknown_refresh_token()
        access_token = new_access_token()
        new_refresh = new_refresh_token()
        lifetime = self.refreshable_token_lifetime_ms
        rotated = await self._store.rotate_refresh_token(
            refresh_token, access_token, new_refresh, self._clock_ms() + lifetime
        )
        if rotated is None:
            raise _unknown_refresh_token()
        self._auth.invalidate_refresh_tokens(rotated.revoked_refresh_ids)
        return Session(rotated.user_id, rotated.device_id, access_token, new_refresh, lifetime)

    async def logout(self, requester: Requester) -> None:
        """Delete the requester's token and (as the spec asks) its device."""
        if requester.device_id is None:
            await self._store.delete_access_token(requester.access_token)
            self._auth.invalidate_token(requester.access_token)
            return
        await self.delete_devices(requester.user_id, [requester.device_id])
        self._auth.invalidate_token(requester.access_token)

    async def logout_all(self, user_id: str) -> None:
        devices = [d.device_id for d in await self._store.list_devices(user_id)]
        await self._store.delete_devices(user_id, devices)
        await self._store.delete_all_tokens(user_id)
        self._auth.invalidate_user(user_id)
        await self._devices_changed(user_id, devices, True)

    # -- login

    async def login_with_password(
        self,
        ip: str,
        user: str,
        password: str,
        *,
        device_id: str | None,
        initial_display_name: str | None,
        refreshable: bool,
    ) -> Session:
        user_id = self._login_user_id(user)
        # Unknown names are limited under their (bounded) spelling, like real accounts.
        key = user_id or user[:MAX_LOGIN_NAME_LENGTH]
        await self._rate_limits.check_login(ip, key)
        if user_id is None:
            await self._failed_login(key)
            raise _bad_login()
        await self._check_lockout(user_id)
        if PASSWORD in self._auth_checkers:
            localpart = user_id[1:].split(":", 1)[0]
            identity = await self._ask_providers(PASSWORD, localpart, {"password": password})
            if identity is not None:
                return await self._external_session(
                    await self._resolve(identity), device_id, initial_display_name, refreshable
                )
            if not self._config.password_config.localdb_enabled:
                await self._failed_login(user_id)
                raise _bad_login()
        record = await self._store.get_user(user_id)
        if record is None:
            await self._failed_login(user_id)
            raise _bad_login()
        # The password is checked first: a wrong one never learns the account's state.
        # Deactivation removes the password, so a deactivated account answers exactly as
        # a wrong password does (as it would to its former owner).
        if (
            record.password_hash is None
            or not await self._passwords.verify(record.password_hash, password)
            or record.deactivated
        ):
            await self._failed_login(user_id)
            raise _bad_login()
        if not await self._store.is_approved(user_id):
            raise awaiting_approval()
        if await self._store.is_locked(user_id):
            raise MatrixError(
                401, "M_USER_LOCKED", "This account has been locked", soft_logout=True
            )
        return await self.issue_session(
            user_id, device_id, initial_display_name, refreshable=refreshable
        )

    # -- external login: password providers, SSO, m.login.token (accounts/external.py)

    def use_external_login(self, external: ExternalAccounts, links: ExternalLoginStore) -> None:
        self._external = external
        self._links = links

    def add_auth_checker(
        self, login_type: str, fields: Sequence[str], checker: AuthChecker
    ) -> None:
        """A password provider for `login_type` (m.login.password or its own type), whose
        requests must carry `fields` (strings)."""
        known = self._auth_checkers.get(login_type)
        if known is not None and known[0] != tuple(fields):
            raise ValueError(f"{login_type} is already provided with other fields")
        self._auth_checkers.setdefault(login_type, (tuple(fields), []))[1].append(checker)

    def use_registration_policy(self, policy: RegistrationPolicy) -> None:
        self._registration_policy = policy

    def use_unbind_all(self, unbind_all: Callable[[str, str | None], Awaitable[str]]) -> None:
        self._unbind_all = unbind_all

    def login_flows(self) -> list[dict[str, Any]]:
        """GET /login's flows."""
        flows: list[dict[str, Any]] = []
        if self._config.password_config.localdb_enabled or PASSWORD in self._auth_checkers:
            flows.append({"type": PASSWORD})
        flows.extend({"type": t} for t in self._auth_checkers if t != PASSWORD)
        if self.sso_providers:
            flows.append(
                {
                    "type": "m.login.sso",
                    "identity_providers": self.sso_providers,
                }
            )
            flows.append({"type": "m.login.token"})
        if self._config.cas_config.enabled:
            flows.append({"type": "m.login.cas"})  # Synapse's legacy CAS login type
        if self.has_app_services:
            flows.append({"type": APP_SERVICE_LOGIN})
        return flows

    def provides_login_type(self, login_type: str) -> bool:
        return login_type in self._auth_checkers and login_type != PASSWORD

    def login_route(self, login_type: str) -> LoginRoute:
        """Which sign-in a POST /login of `login_type` is: an application service's,
        m.login.token (only with SSO configured), a password provider's own type, or
        m.login.password; any other type is 400 M_UNKNOWN."""
        if login_type == APP_SERVICE_LOGIN:
            return "app_service"
        if login_type == "m.login.token" and self.sso_providers:
            return "token"
        if self.provides_login_type(login_type):
            return "provider"
        if login_type != PASSWORD:
            raise MatrixError(400, "M_UNKNOWN", f"Unknown login type {login_type!r}")
        return "password"

    async def _ask_providers(
        self, login_type: str, username: str, body: Mapping[str, Any]
    ) -> ExternalIdentity | None:
        fields, checkers = self._auth_checkers[login_type]
        values: dict[str, Any] = {}
        for name in fields:
            value = body.get(name)
            if not isinstance(value, str):
                raise bad_json(f"{login_type} needs '{name}' (a string)")
            values[name] = value
        for checker in checkers:
            try:
                async with asyncio.timeout(AUTH_CHECKER_TIMEOUT):
                    identity = await checker(username, login_type, values)
            except (TimeoutError, Exception):
                # No detail: a provider's error may quote what it was given.
                logger.warning("a password provider failed for %s; trying the next", login_type)
                continue
            if identity is not None:
                return identity
        return None

    async def login_with_provider(
        self,
        ip: str,
        login_type: str,
        body: Mapping[str, Any],
        *,
        device_id: str | None,
        initial_display_name: str | None,
        refreshable: bool,
    ) -> Session:
        """POST /login with a login type a password provider added."""
        user = identifier_user(body)
        user_id = self._login_user_id(user)
        key = user_id or user[:MAX_LOGIN_NAME_LENGTH]
        await self._rate_limits.check_login(ip, key)
        if user_id is None:
            await self._failed_login(key)
            raise _bad_login()
        await self._check_lockout(user_id)
        identity = await self._ask_providers(login_type, user_id[1:].split(":", 1)[0], body)
        if identity is None:
            await self._failed_login(user_id)
            raise _bad_login()
        return await self._external_session(
            await self._resolve(identity), device_id, initial_display_name, refreshable
        )

    async def _resolve(self, identity: ExternalIdentity) -> str:
        if self._external is None:
            raise MatrixError(500, "M_UNKNOWN", "External login is not set up")
        return await self._external.resolve(identity)

    async def login_external(self, identity: ExternalIdentity) -> str:
        """An SSO callback's identity → its local user (created on first login), checked
        as a login would be; returns a one-use m.login.token token."""
        user_id = await self._resolve(identity)
        await self._check_can_log_in(user_id)
        if self._links is None:
            raise MatrixError(500, "M_UNKNOWN", "External login is not set up")
        token = secrets.token_urlsafe(32)
        await self._links.add_login_token(
            token, user_id, identity.provider, self._clock_ms() + LOGIN_TOKEN_LIFETIME_MS
        )
        return token

    async def login_with_token(
        self,
        ip: str,
        token: str,
        *,
        device_id: str | None,
        initial_display_name: str | None,
        refreshable: bool,
    ) -> Session:
        """POST /login with m.login.token (spec: "Token-based login")."""
        await self._rate_limits.check_login(ip, "m.login.token")
        user_id = None
        if self._links is not None and 0 < len(token) <= MAX_TOKEN_LENGTH:
            user_id = await self._links.consume_login_token(token, self._clock_ms())
        if user_id is None:
            raise forbidden("Invalid or expired login token")
        return await self._external_session(user_id, device_id, initial_display_name, refreshable)

    async def _check_can_log_in(self, user_id: str) -> None:
        record = await self._store.get_user(user_id)
        if record is None or record.deactivated:
            raise forbidden("This account has been deactivated")
        if not await self._store.is_approved(user_id):
            raise awaiting_approval()
        if await self._store.is_locked(user_id):
            raise MatrixError(
                401, "M_USER_LOCKED", "This account has been locked", soft_logout=True
            )

    async def _external_session(
        self,
        user_id: str,
        device_id: str | None,
        initial_display_name: str | None,
        refreshable: bool,
    ) -> Session:
        await self._check_can_log_in(user_id)
        return await self.issue_session(
            user_id, device_id, initial_display_name, refreshable=refreshable
        )

    def _login_user_id(self, user: str) -> str | None:
        """The local user ID a login names (case-insensitively, as Synapse), or None."""
        if len(user) > MAX_LOGIN_NAME_LENGTH:
            return None
        try:
            return local_user_id(self.server_name, user.lower())
        except MatrixError:
            return None

    async def _check_lockout(self, user_id: str) -> None:
        remaining_ms = await self._buckets.held("login_lockout", user_id)
        if remaining_ms > 0:
            raise limit_exceeded(remaining_ms)

    async def _failed_login(self, user_id: str) -> None:
        """Count a failed attempt; once the limit trips, every login (right or wrong) of
        this user is refused until it has refilled."""
        try:
            await self._rate_limits.check_failed_login(user_id)
        except MatrixError as e:
            retry_ms = int(e.extra.get("retry_after_ms", 1000))
            # On every process (the buckets are shared with workers).
            await self._buckets.hold("login_lockout", user_id, retry_ms)
            raise

    # -- user-interactive auth with a password (account management)

    async def login_identifier(self, body: Mapping[str, Any]) -> str:
        """The user a password login (or UIA password stage) names: by user ID or
        localpart, or by an email address on an account (medium/address, or an
        m.id.thirdparty identifier). An address on no account fails as a bad login."""
        identifier = body.get("identifier")
        medium: Any = None
        address: Any = None
        if isinstance(identifier, dict) and identifier.get("type") == "m.id.thirdparty":
            medium, address = identifier.get("medium"), identifier.get("address")
        elif identifier is None and ("medium" in body or "address" in body):
            medium, address = body.get("medium"), body.get("address")
        else:
            return identifier_user(body)
        if self._email is None or not self._email.enabled:
            raise _no_threepids()
        if not isinstance(medium, str) or not isinstance(address, str) or len(address) > 320:
            raise bad_json("'medium' and 'address' must be strings")
        user_id = await self._email.user_for_address(medium, address)
        if user_id is None:
            raise _bad_login()
        return user_id

    async def _check_password_stage(self, session: UIAuthSession, auth: Mapping[str, Any]) -> None:
        user = await self.login_identifier(auth)
        password = auth.get("password")
        if not isinstance(password, str):
            raise bad_json("'auth.password' must be a string")
        if self._login_user_id(user) != session.user_id or session.user_id is None:
            # Not a wrong password to retry: someone else's credentials (a stolen access
            # token proven with another account's password). 403, as Synapse.
            raise forbidden("The identifier is not the logged-in user")
        await self._check_lockout(session.user_id)
        if PASSWORD in self._auth_checkers and self._links is not None:
            # An account of a password provider proves itself there (its own link only).
            localpart = session.user_id[1:].split(":", 1)[0]
            identity = await self._ask_providers(PASSWORD, localpart, {"password": password})
            if identity is not None and session.user_id == (
                await self._links.user_for_external_id(identity.provider, identity.external_id)
            ):
                return
        record = await self._store.get_user(session.user_id)
        if (
            record is None
            or record.password_hash is None
            or not await self._passwords.verify(record.password_hash, password)
        ):
            await self._failed_login(session.user_id)
            raise StageFailed("M_FORBIDDEN", "Invalid password")

    async def require_password_auth(
        self, requester: Requester, auth: Any, uri: str, method: str
    ) -> CompletedAuth:
        """UIA for account management: m.login.password as the requester, or m.login.sso
        when the requester has signed in through CAS before (as Synapse offers SSO only
        to users with an SSO identity; the stage completes at the CAS ticket URL)."""
        flows = [[PASSWORD]]
        if await self.sso_stage_offered(requester.user_id):
            flows.append([SSO])
        return await self.uia.authenticate(
            auth,
            uri=uri,
            method=method,
            user_id=requester.user_id,
            flows=flows,
            checkers={PASSWORD: self._check_password_stage},
        )

    async def sso_stage_offered(self, user_id: str) -> bool:
        cas = self._config.cas_config
        if not cas.enabled or self._links is None:
            return False
        return any(p == cas.idp_id for p, _ in await self._links.external_ids_of(user_id))

    async def complete_sso_ui_auth(self, session_id: str, provider: str, external_id: str) -> bool:
        """The SSO callback signed `external_id` in at `provider` for UIA session
        `session_id` (see UserInteractiveAuth.complete_sso)."""
        user_id = None
        if self._links is not None:
            user_id = await self._links.user_for_external_id(provider, external_id)
        return await self.uia.complete_sso(session_id, user_id)

    async def complete_recaptcha_fallback(self, session_id: str, response: str, ip: str) -> bool:
        """The reCAPTCHA fallback page's form: check the widget's answer and record the
        stage for the UIA session (StageFailed when the captcha is wrong; False when the
        session is unknown)."""
        if self.recaptcha is None:
            raise MatrixError(404, "M_UNRECOGNIZED", "reCAPTCHA is not configured here")
        return await self.uia.complete_out_of_band(
            session_id, RECAPTCHA, self.recaptcha.checker(ip), {"response": response}
        )

    # -- registration

    def _check_registration_enabled(self) -> None:
        if not self._config.enable_registration:
            raise forbidden("Registration has been disabled")

    async def check_username_available(self, ip: str, username: str) -> None:
        """GET /register/available: M_INVALID_USERNAME, M_USER_IN_USE or nothing."""
        self._check_registration_enabled()
        await self._buckets.take("register_available", ip, self._probe_limit)
        user_id = self._registrable_user_id(username)
        if await self._store.user_exists(user_id):
            raise _user_in_use(user_id)

    def _registrable_user_id(self, username: str) -> str:
        user_id = local_user_id(self.server_name, username.lower())
        if user_id[1:].split(":", 1)[0].isdigit():
            # Numeric localparts are what guests get (as in Synapse).
            raise MatrixError(
                400, "M_INVALID_USERNAME", "Numeric user IDs are reserved for guest users"
            )
        if self._app_services.user_reserved(user_id):
            raise exclusive_error(f"{user_id} is reserved by an application service")
        return user_id

    async def registration_token_valid(self, ip: str, token: str) -> bool:
        """GET /register/m.login.registration_token/validity."""
        self._check_registration_enabled()
        await self._buckets.take("token_validity", ip, TOKEN_VALIDITY_LIMIT)
        if len(token) > MAX_TOKEN_LENGTH:
            return False
        found = await self._store.get_registration_token(token)
        if found is None:
            return False
        uses_left = found.uses_allowed is None or (
            found.pending + found.completed < found.uses_allowed
        )
        not_expired = found.expiry_time is None or found.expiry_time > self._clock_ms()
        return uses_left and not_expired

    async def _check_registration_token_stage(
        self, session: UIAuthSession, auth: Mapping[str, Any]
    ) -> None:
        token = auth.get("token")
        if token is None:
            raise missing_param("Missing 'auth.token'")
        if not isinstance(token, str):
            raise bad_json("'auth.token' must be a string")
        if session.registration_token is not None:
            if session.registration_token == token:
                return
            raise StageFailed("M_UNAUTHORIZED", "A different token is already in use")
        if len(token) > MAX_TOKEN_LENGTH or not await self.uia.reserve_registration_token(
            session, token
        ):
            raise StageFailed("M_UNAUTHORIZED", "Invalid registration token")

    def registration_flows(self) -> list[list[str]]:
        flows: list[list[str]]
        if self._config.registration_requires_token:
            flows = [[REGISTRATION_TOKEN]]
        elif self._email is not None and self._email.enabled:
            # An email address is welcome, not required (as Synapse without
            # registrations_require_3pid): the address becomes the account's.
            flows = [[DUMMY], [EMAIL_IDENTITY]]
        else:
            flows = [[DUMMY]]
        if self._config.enable_registration_captcha:
            # As Synapse: the captcha first, in every flow.
            flows = [[RECAPTCHA, *f] for f in flows]
        return flows

    def registration_params(self) -> dict[str, Any]:
        """The registration 401's ``params`` (spec: each stage's parameters)."""
        if self.recaptcha is not None and self._config.enable_registration_captcha:
            return {RECAPTCHA: self.recaptcha.params()}
        return {}

    def use_email(self, email: EmailValidation) -> None:
        """Email validation (accounts/email.py), set once at start."""
        self._email = email

    @property
    def email(self) -> EmailValidation | None:
        return self._email

    def sending_email(self) -> EmailValidation:
        """Email validation, for the endpoints that need it: 400 M_THREEPID_DENIED when
        this server sends no email."""
        if self._email is None or not self._email.enabled:
            raise MatrixError(
                400, "M_THREEPID_DENIED", "This server does not send email: no email addresses"
            )
        return self._email

    async def add_threepid_by_request(
        self, requester: Requester, body: dict[str, Any], uri: str, method: str
    ) -> None:
        """POST /account/3pid/add: a bad validation session fails before the password is
        asked for; then user-interactive auth; then the address is the account's."""
        email = self.sending_email()
        await email.validated(body)
        await self.require_password_auth(requester, body.get("auth"), uri, method)
        await email.add_to_account(requester.user_id, body)

    async def register_user(
        self,
        ip: str,
        req: RegistrationRequest,
        uri: str,
        access_token: Callable[[], str | None],
    ) -> dict[str, Any]:
        """POST /register?kind=user: an application service's registration of a user of
        its namespace when the body's `type` or its `auth` type is
        m.login.application_service (Synapse accepts both; the request's `access_token()`
        must then be the service's as_token), else a user's own. The token is read only
        for the former: a user's registration never looks at its Authorization header."""
        auth_type = req.auth.get("type") if isinstance(req.auth, dict) else None
        if APP_SERVICE_LOGIN in (req.type, auth_type):
            requester = await self.app_service_requester(access_token())
            return await self.register_app_service_user(requester, req.username, req)
        return await self.register(ip, req, uri)

    async def register(self, ip: str, req: RegistrationRequest, uri: str) -> dict[str, Any]:
        """POST /register (kind=user): validate, run UIA, create the account and log in.

        As Synapse does, a session remembers the parameters of its first request (the
        password only as its hash), so later requests may carry just `auth`; and once a
        session has registered an account, a request retried with it gets that account
        (logged in again) instead of an error."""
        self._check_registration_enabled()
        auth = req.auth if isinstance(req.auth, dict) else None
        session_id = auth.get("session") if auth is not None else None
        state = await self.uia.session_state(session_id) if isinstance(session_id, str) else None
        remembered = (state.params if state is not None else None) or {}
        if state is not None and state.result is not None:
            return await self._login_result(
                state.result,
                req.device_id or remembered.get("device_id"),
                req.initial_device_display_name or remembered.get("initial_device_display_name"),
                inhibit_login=bool(
                    remembered.get("inhibit_login")
                    if req.inhibit_login is None
                    else req.inhibit_login
                ),
                refreshable=req.refresh_token,
            )
        username = req.username if req.username is not None else remembered.get("username")
        device_id = req.device_id if req.device_id is not None else remembered.get("device_id")
        display_name = req.initial_device_display_name
        if display_name is None:
            display_name = remembered.get("initial_device_display_name")
        inhibit_login = req.inhibit_login
        if inhibit_login is None:
            inhibit_login = bool(remembered.get("inhibit_login", False))
        password_hash = remembered.get("password_hash") if req.password is None else None
        user_id = None
        guest_id = None
        if req.guest_access_token is not None:
            # Upgrading a guest account (as Synapse): its owner proves it with the guest's
            # token, and the account keeps its user ID, rooms and profile.
            guest_id = await self._guest_to_upgrade(req.guest_access_token, username)
            user_id = guest_id
        elif username is not None:
            user_id = self._registrable_user_id(username)
            if await self._store.user_exists(user_id):
                raise _user_in_use(user_id)
        if req.password is not None:
            check_password(req.password, self._config.password_config.policy)
        if self._registration_policy is not None:
            reason = await self._registration_policy(
                user_id[1:].split(":", 1)[0] if user_id is not None else None
            )
            if reason is not None:
                raise forbidden(reason)
        if req.auth is None:
            await self._buckets.take("register_probe", ip, self._probe_limit)
        else:
            if req.password is None and password_hash is None:
                raise missing_param("Missing 'password'")
            await self._rate_limits.check_registration(ip)
        checkers: dict[str, StageChecker] = {
            DUMMY: check_dummy,
            REGISTRATION_TOKEN: self._check_registration_token_stage,
        }
        if self._email is not None and self._email.enabled:
            checkers[EMAIL_IDENTITY] = self._email.check_registration_stage
        if self.recaptcha is not None:
            checkers[RECAPTCHA] = self.recaptcha.checker(ip)
        try:
            done = await self.uia.authenticate(
                req.auth,
                uri=uri,
                method="POST",
                user_id=None,
                flows=self.registration_flows(),
                checkers=checkers,
                params=self.registration_params(),
                keep_session=True,
                # A configured server checks a captcha it was not asked for, as Synapse.
                unoffered=(RECAPTCHA,),
            )
        except AuthRequired as e:
            session = e.body.get("session")
            if isinstance(session, str) and (state is None or state.params is None):
                await self.uia.remember_params(
                    session,
                    {
                        "username": username,
                        "password_hash": (
                            await self._passwords.hash(req.password)
                            if req.password is not None
                            else password_hash
                        ),
                        "device_id": device_id,
                        "initial_device_display_name": display_name,
                        "inhibit_login": inhibit_login,
                    },
                )
            raise
        if guest_id is not None:
            return await self._upgrade_guest(
                guest_id,
                req,
                password_hash,
                done.session_id,
                {
                    "device_id": device_id,
                    "display_name": display_name,
                    "inhibit_login": inhibit_login,
                },
            )
        try:
            if user_id is None:
                user_id = await self._create_generated_user(
                    req.password, is_guest=False, password_hash=password_hash
                )
            else:
                await register_local_user(
                    self._store,
                    self._passwords,
                    self.server_name,
                    user_id,
                    req.password,
                    password_hash=password_hash,
                )
        except BaseException:
            if done.registration_token is not None:
                await self._store.release_registration_token(done.registration_token)
            await self.uia.release(done.session_id)
            raise
        if done.registration_token is not None:
            await self._store.complete_registration_token(done.registration_token)
        if self._email is not None:
            await self._email.after_registration(done.session_id, user_id)
        await self.uia.record_result(done.session_id, user_id)
        if self._config.registration_requires_approval:
            # The account exists but logs in only once an admin approves it: the login
            # below answers M_USER_AWAITING_APPROVAL (403), as Synapse does.
            await self._store.set_approved(user_id, False)
        return await self._after_registration(
            user_id,
            device_id,
            display_name,
            inhibit_login=inhibit_login,
            refreshable=req.refresh_token,
        )

    async def _guest_to_upgrade(self, token: str, username: str | None) -> str:
        """The guest account a registration with `guest_access_token` upgrades: the token
        must be a guest's, and a `username`, if given, must be that guest's localpart."""
        requester = await self._auth.requester_for_token(token)
        if not requester.is_guest:
            raise forbidden("guest_access_token is not a guest's access token")
        if username is not None and (
            local_user_id(self.server_name, username.lower()) != requester.user_id
        ):
            raise forbidden(
                "Cannot register taken user ID without valid guest credentials for that user"
            )
        return requester.user_id

    async def _upgrade_guest(
        self,
        user_id: str,
        req: RegistrationRequest,
        password_hash: str | None,
        session_id: str,
        login: dict[str, Any],
    ) -> dict[str, Any]:
        """The guest account becomes a full account with the password (Synapse's
        `was_guest` registration); then a new device logs in as for any registration."""
        if req.password is not None:
            password_hash = await self._passwords.hash(req.password)
        if not await self._store.upgrade_guest(user_id, password_hash):
            await self.uia.release(session_id)
            raise forbidden("This account is no longer a guest account")
        self._auth.invalidate_user(user_id)
        await self.uia.record_result(session_id, user_id)
        return await self._login_result(
            user_id,
            login["device_id"],
            login["display_name"],
            inhibit_login=bool(login["inhibit_login"]),
            refreshable=req.refresh_token,
        )

    async def register_app_service_user(
        self, requester: Requester, username: str | None, req: RegistrationRequest
    ) -> dict[str, Any]:
        """POST /register with ``type: m.login.application_service``: the service creates
        a user of its namespace, with no password and no user-interactive auth (spec:
        application-service-api "Server admin style permissions")."""
        service = requester.app_service
        if service is None:
            raise MatrixError(401, "M_MISSING_TOKEN", "An application service token is required")
        if username is None:
            raise missing_param("Missing 'username'")
        user_id = local_user_id(self.server_name, username.lower())
        if not service.user_in_namespace(user_id):
            raise exclusive_error(f"{user_id} is not in this application service's namespace")
        if self._app_services.user_reserved(user_id, allowed=service):
            raise exclusive_error(f"{user_id} is reserved by another application service")
        try:
            await self._store.create_user(user_id, None, appservice_id=service.id)
        except UserExists:
            raise _user_in_use(user_id) from None
        return await self._after_registration(
            user_id,
            req.device_id,
            req.initial_device_display_name,
            inhibit_login=bool(req.inhibit_login),
            refreshable=req.refresh_token,
        )

    async def ensure_app_service_senders(self) -> None:
        """Each service's own user exists (created at start, as Synapse does)."""
        for service in self._app_services.services:
            if await self._store.user_exists(service.sender):
                continue
            try:
                await self._store.create_user(service.sender, None, appservice_id=service.id)
            except UserExists:
                continue
            localpart = service.sender[1:].split(":", 1)[0]
            await self._profiles.create_profile(service.sender, localpart)

    async def login_as_app_service_user(
        self,
        requester: Requester,
        user: str,
        *,
        device_id: str | None,
        initial_display_name: str | None,
        refreshable: bool,
    ) -> Session:
        """POST /login with ``m.login.application_service``: a session for a user of the
        calling service's namespace."""
        service = requester.app_service
        if service is None:
            raise MatrixError(401, "M_MISSING_TOKEN", "An application service token is required")
        user_id = self._login_user_id(user)
        if user_id is None or not service.owns_user(user_id):
            raise forbidden("This user is not in the application service's namespace")
        record = await self._store.get_user(user_id)
        if record is None or record.deactivated:
            raise forbidden("Invalid user")
        return await self.issue_session(
            user_id, device_id, initial_display_name, refreshable=refreshable
        )

    async def register_guest(
        self, ip: str, initial_display_name: str | None, refreshable: bool
    ) -> dict[str, Any]:
        """POST /register?kind=guest."""
        if not self._config.allow_guest_access:
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled")
        await self._rate_limits.check_registration(ip)
        user_id = await self._create_generated_user(None, is_guest=True)
        return await self._after_registration(
            user_id, None, initial_display_name, inhibit_login=False, refreshable=refreshable
        )

    async def register_by_admin(
        self, username: str, password: str | None, *, admin: bool, displayname: str | None
    ) -> dict[str, Any]:
        """Shared-secret registration: no UIA, no registration switch, no rate limit."""
        user_id = await register_local_user(
            self._store,
            self._passwords,
            self.server_name,
            username.lower(),
            password,
            admin=admin,
        )
        return await self._after_registration(
            user_id, None, None, inhibit_login=False, refreshable=False, displayname=displayname
        )

    async def _create_generated_user(
        self, password: str | None, *, is_guest: bool, password_hash: str | None = None
    ) -> str:
        """An account with a free numeric localpart (how Synapse names generated users)."""
        for _ in range(20):
            localpart = str(secrets.randbelow(9 * 10**9) + 10**9)
            user_id = f"@{localpart}:{self.server_name}"
            if await self._store.user_exists(user_id):
                continue
            try:
                return await register_local_user(
                    self._store,
                    self._passwords,
                    self.server_name,
                    localpart,
                    password,
                    is_guest=is_guest,
                    password_hash=password_hash,
                )
            except MatrixError as e:
                if e.errcode != "M_USER_IN_USE":
                    raise
        raise MatrixError(500, "M_UNKNOWN", "Could not allocate a user ID")

    async def _after_registration(
        self,
        user_id: str,
        device_id: str | None,
        initial_display_name: str | None,
        *,
        inhibit_login: bool,
        refreshable: bool,
        displayname: str | None = None,
    ) -> dict[str, Any]:
        localpart = user_id[1:].split(":", 1)[0]
        await self._profiles.create_profile(user_id, displayname or localpart)
        return await self._login_result(
            user_id,
            device_id,
            initial_display_name,
            inhibit_login=inhibit_login,
            refreshable=refreshable,
        )

    async def _login_result(
        self,
        user_id: str,
        device_id: str | None,
        initial_display_name: str | None,
        *,
        inhibit_login: bool,
        refreshable: bool,
    ) -> dict[str, Any]:
        if not await self._store.is_approved(user_id):
            raise awaiting_approval()
        if inhibit_login:
            return {"user_id": user_id, "home_server": self.server_name}
        session = await self.issue_session(
            user_id, device_id, initial_display_name, refreshable=refreshable
        )
        return {**session.to_json(), "home_server": self.server_name}

    # -- devices

    async def list_devices(self, user_id: str) -> list[Device]:
        return await self._store.list_devices(user_id)

    async def create_device(
        self, user_id: str, device_id: str, display_name: str | None = None
    ) -> bool:
        """Create the device (no token) unless it exists; True if it was created."""
        created = await self._store.upsert_device(user_id, device_id, display_name)
        if created:
            await self._devices_changed(user_id, [device_id], False)
        return created

    async def get_device(self, user_id: str, device_id: str) -> Device | None:
        return await self._store.get_device(user_id, device_id)

    async def rename_device(self, user_id: str, device_id: str, display_name: str | None) -> bool:
        if display_name is not None and len(display_name) > MAX_DEVICE_DISPLAY_NAME_LENGTH:
            raise MatrixError(
                400,
                "M_TOO_LARGE",
                f"Device display name is too long (max {MAX_DEVICE_DISPLAY_NAME_LENGTH})",
            )
        renamed = await self._store.update_device_display_name(user_id, device_id, display_name)
        if renamed:
            # The name is part of the device list others see (and other servers are sent).
            await self._devices_changed(user_id, [device_id], False)
        return renamed

    async def update_device(
        self, user_id: str, device_id: str, *, rename: bool, display_name: str | None
    ) -> None:
        """PUT /devices/{deviceId}: renamed when the body has `display_name` (null clears
        it); an unknown device is 404 either way."""
        if not rename:
            found = await self.get_device(user_id, device_id) is not None
        else:
            found = await self.rename_device(user_id, device_id, display_name)
        if not found:
            raise not_found("No such device")

    async def delete_device_by_request(
        self, requester: Requester, device_id: str, auth: Any, uri: str, method: str
    ) -> None:
        """DELETE /devices/{deviceId}: an unknown device is 404 before user-interactive
        auth is asked for."""
        if await self.get_device(requester.user_id, device_id) is None:
            raise not_found("No such device")
        await self.require_password_auth(requester, auth, uri, method)
        await self.delete_devices(requester.user_id, [device_id])

    async def delete_devices_by_request(
        self, requester: Requester, device_ids: Sequence[str], auth: Any, uri: str, method: str
    ) -> None:
        """POST /delete_devices: after user-interactive auth; unknown IDs are skipped."""
        await self.require_password_auth(requester, auth, uri, method)
        await self.delete_devices(requester.user_id, device_ids)

    async def delete_devices(self, user_id: str, device_ids: Sequence[str]) -> list[str]:
        """Delete those of ``device_ids`` that exist, with their tokens; return them."""
        wanted = set(device_ids)
        existing = [d.device_id for d in await self._store.list_devices(user_id)]
        doomed = [d for d in existing if d in wanted]
        if not doomed:
            return []
        await self._store.delete_devices(user_id, doomed)
        for device_id in doomed:
            self._auth.invalidate_device(user_id, device_id)
        await self._devices_changed(user_id, doomed, True)
        return doomed

    # -- password, deactivation

    def check_new_password(self, password: str) -> None:
        """A password a user chose: the length limits and password_config.policy."""
        check_password(password, self._config.password_config.policy)

    async def change_password_by_request(
        self,
        requester: Requester,
        new_password: str,
        auth: Any,
        uri: str,
        method: str,
        *,
        logout_devices: bool,
    ) -> None:
        """POST /account/password: the new password is checked before user-interactive
        auth, which would spend the session."""
        self.check_new_password(new_password)
        await self.require_password_auth(requester, auth, uri, method)
        await self.change_password(requester, new_password, logout_devices=logout_devices)

    async def change_password(
        self, requester: Requester, new_password: str, *, logout_devices: bool
    ) -> None:
        self.check_new_password(new_password)
        password_hash = await self._passwords.hash(new_password)
        await self._store.set_password_hash(requester.user_id, password_hash)
        if not logout_devices:
            return
        others = [
            d.device_id
            for d in await self._store.list_devices(requester.user_id)
            if d.device_id != requester.device_id
        ]
        await self._store.delete_devices(requester.user_id, others)
        await self._store.delete_tokens_except(requester.user_id, requester.access_token)
        self._auth.invalidate_user(requester.user_id)
        await self._devices_changed(requester.user_id, others, True)

    async def deactivate_by_request(
        self,
        requester: Requester,
        auth: Any,
        uri: str,
        method: str,
        *,
        erase: bool,
        id_server: str | None,
    ) -> str:
        """POST /account/deactivate; answers `id_server_unbind_result`. User-interactive
        auth first, except for an application service (it deactivates its users without);
        the 3PIDs bound through this server are unbound before the account goes (Synapse's
        order)."""
        if requester.app_service is None:
            await self.require_password_auth(requester, auth, uri, method)
        result = "success"
        if self._unbind_all is not None:
            result = await self._unbind_all(requester.user_id, id_server)
        await self.deactivate(requester.user_id, erase=erase)
        return result

    async def deactivate(self, user_id: str, *, erase: bool) -> None:
        """Deactivate: no password, no devices or tokens, out of every room."""
        await self._store.deactivate(user_id)
        await self.logout_all(user_id)
        if erase:
            # Erased (Synapse's GDPR erasure): the profile goes, and the user's events are
            # redacted for whoever was not joined when they were sent (rooms/erasure.py).
            await self._store.set_erased(user_id)
            self.erasure_changed(user_id)
            await self._profiles.set_field(user_id, "displayname", None)
            await self._profiles.set_field(user_id, "avatar_url", None)
        rooms = await self._memberships.get_rooms_for_user(user_id)
        for room_id, member in list(rooms.items()):
            if member.membership not in ("join", "invite", "knock"):
                continue
            try:
                await self._membership.leave(room_id, user_id)
            except MatrixError as e:
                logger.warning("deactivating %s: could not leave %s: %s", user_id, room_id, e)


def awaiting_approval() -> MatrixError:
    """An account registered under registration_requires_approval, not approved yet
    (Synapse's MSC3866 error)."""
    return MatrixError(
        403,
        "ORG.MATRIX.MSC3866_USER_AWAITING_APPROVAL",
        "This account is pending approval by a server administrator.",
        approval_notice_medium="org.matrix.msc3866.none",
    )


def _bad_login() -> MatrixError:
    return forbidden("Invalid username or password")


def _user_in_use(user_id: str) -> MatrixError:
    return MatrixError(400, "M_USER_IN_USE", f"User ID {user_id} is already taken")


def _unknown_refresh_token() -> MatrixError:
    return MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown or used refresh token", soft_logout=False)
