"""Server admins managing accounts: Synapse's user admin API rules (docs/admin_api/
user_admin_api.md), answered in Synapse's JSON shapes so existing admin tools work.

Only local users can be managed; a remote user ID is 400 M_INVALID_PARAM, an unknown local
one 404 M_NOT_FOUND. Creating accounts goes through the registration checks every path
shares; deactivation, device deletion and password changes go through the accounts service,
so device-list updates, token caches and room leaves happen exactly as for the user's own
requests.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from starling.accounts.auth import RequestAuthenticator
from starling.accounts.passwords import PasswordHasher
from starling.accounts.registration import check_password, local_user_id, register_local_user
from starling.accounts.service import AccountService
from starling.accounts.shared_secret import SharedSecretRegistration
from starling.config import RateLimit
from starling.errors import MatrixError, invalid_param, not_found
from starling.profile.service import ProfileService
from starling.ratelimit import RateLimits
from starling.storage.accounts import AccountStore, Device
from starling.storage.admin_users import ORDER_COLUMNS, AdminUserStore, UserDetails, UserFilter
from starling.storage.memberships import MembershipStore
from starling.storage.profiles import ProfileStore

__all__ = ["AdminUsers", "UserChanges", "UserFilter"]

USER_ORDERS = frozenset(ORDER_COLUMNS)
_PROFILE_FIELDS = ("displayname", "avatar_url")


def user_json(user: UserDetails, *, full: bool) -> dict[str, Any]:
    """A user as Synapse's list (``full=False``) or query endpoint shows it."""
    out: dict[str, Any] = {
        "name": user.user_id,
        "is_guest": user.is_guest,
        "admin": user.admin,
        "user_type": user.user_type,
        "deactivated": user.deactivated,
        "erased": user.erased,
        "shadow_banned": user.shadow_banned,
        "displayname": user.displayname,
        "avatar_url": user.avatar_url,
        "creation_ts": user.creation_ts,
        "last_seen_ts": user.last_seen_ts,
        "locked": user.locked,
        "approved": user.approved,
    }
    if full:
        out.update(
            {
                "threepids": [],
                "external_ids": [],
                "appservice_id": user.appservice_id,
                "consent_server_notice_sent": None,
                "consent_version": None,
                "consent_ts": None,
                "suspended": False,
            }
        )
    return out


def device_json(device: Device) -> dict[str, Any]:
    out: dict[str, Any] = {
        "device_id": device.device_id,
        "last_seen_ip": device.last_seen_ip,
        "last_seen_user_agent": device.last_seen_user_agent,
        "last_seen_ts": device.last_seen_ts,
        "user_id": device.user_id,
        "dehydrated": False,
    }
    if device.display_name is not None:
        out["display_name"] = device.display_name
    return out


@dataclass(frozen=True)
class UserChanges:
    """PUT /_synapse/admin/v2/users/{userId}: what the body asked for (absent: unchanged)."""

    password: str | None = None
    logout_devices: bool = True
    displayname: str | None = None
    avatar_url: str | None = None
    set_displayname: bool = False
    set_avatar_url: bool = False
    admin: bool | None = None
    deactivated: bool | None = None
    locked: bool | None = None
    approved: bool | None = None
    threepids: list[tuple[str, str]] | None = None
    """(medium, address), canonical: replaces the user's third-party IDs."""
    user_type: str | None = None
    set_user_type: bool = False
    external_ids: list[tuple[str, str]] | None = None
    """(auth_provider, external_id): replaces the user's external identities."""


def _now_ms() -> int:
    return int(time.time() * 1000)


# Synapse's built-in user types (UserTypes); None is an ordinary user.
USER_TYPES = frozenset({"support", "bot"})


class AdminUsers:
    def __init__(
        self,
        *,
        server_name: str,
        accounts: AccountService,
        account_store: AccountStore,
        store: AdminUserStore,
        passwords: PasswordHasher,
        profiles: ProfileService,
        profile_store: ProfileStore,
        memberships: MembershipStore,
        auth: RequestAuthenticator,
        rate_limits: RateLimits,
        shared_secret: SharedSecretRegistration,
        flush_seen: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        # Writes where devices were last seen before reading them (whois, devices, users).
        self._flush_seen = flush_seen
        self._server_name = server_name
        self._accounts = accounts
        self._account_store = account_store
        self._store = store
        self._passwords = passwords
        self._profiles = profiles
        self._profile_store = profile_store
        self._memberships = memberships
        self._auth = auth
        self._rate_limits = rate_limits
        self._shared_secret = shared_secret

    # -- lookups

    def _local(self, user_id: str) -> None:
        if not user_id.endswith(":" + self._server_name):
            raise invalid_param("Can only manage local users")

    async def _details(self, user_id: str) -> UserDetails:
        self._local(user_id)
        found = await self._store.get_details(user_id)
        if found is None:
            raise not_found("User not found")
        return found

    async def list_users(
        self, where: UserFilter, order_by: str, backwards: bool, start: int, limit: int
    ) -> dict[str, Any]:
        if order_by not in USER_ORDERS:
            raise invalid_param(f"Unknown value for order_by: {order_by[:40]!r}")
        users, total = await self._store.list_users(where, order_by, backwards, start, limit)
        body: dict[str, Any] = {"users": [user_json(u, full=False) for u in users], "total": total}
        if start + len(users) < total:
            body["next_token"] = str(start + len(users))
        return body

    async def get_user(self, user_id: str) -> dict[str, Any]:
        out = user_json(await self._details(user_id), full=True)
        out["threepids"] = await self._store.threepids(user_id)
        out["external_ids"] = await self._store.external_ids(user_id)
        return out

    async def user_by_external_id(self, provider: str, external_id: str) -> str:
        """GET /_synapse/admin/v1/auth_providers/{provider}/users/{externalId}."""
        user_id = await self._store.user_by_external_id(provider, external_id)
        if user_id is None:
            raise not_found("User not found")
        return user_id

    async def register_with_shared_secret(
        self,
        nonce: str,
        username: str,
        password: str,
        mac: str,
        *,
        admin: bool,
        user_type: str | None,
        displayname: str | None,
    ) -> dict[str, Any]:
        """POST /_synapse/admin/v1/register: the nonce is spent by every attempt, the
        HMAC over the details checked, then the account made (with its user type)."""
        if user_type is not None and user_type not in USER_TYPES:
            # Spent like any other attempt, so a refused request cannot be replayed.
            self._shared_secret.discard_nonce(nonce)
            raise invalid_param("Invalid user type")
        self._shared_secret.verify(nonce, username, password, admin, user_type, mac)
        result = await self._accounts.register_by_admin(
            username, password, admin=admin, displayname=displayname
        )
        if user_type is not None:
            await self._store.set_user_type(result["user_id"], user_type)
        return result

    async def user_by_threepid(self, medium: str, address: str) -> str:
        """GET /_synapse/admin/v1/threepid/{medium}/users/{address}."""
        user_id = await self._store.user_by_threepid(medium, address)
        if user_id is None:
            raise not_found("User not found")
        return user_id

    async def is_admin(self, user_id: str) -> bool:
        return (await self._details(user_id)).admin

    # -- create or modify

    async def put_user(self, admin_id: str, user_id: str, changes: UserChanges) -> bool:
        """Create or modify the account; True if it was created."""
        self._local(user_id)
        if user_id == admin_id and changes.admin is False:
            raise invalid_param("You may not demote yourself.")
        if changes.password is not None:
            check_password(changes.password)
        if changes.set_user_type and changes.user_type not in (None, *USER_TYPES):
            raise invalid_param("Invalid user type")
        if changes.threepids:
            # Checked before anything changes; set_threepids checks again as it writes.
            taken = await self._store.threepid_taken(user_id, changes.threepids)
            if taken is not None:
                raise MatrixError(409, "M_THREEPID_IN_USE", f"{taken} is already in use")
        if changes.external_ids:
            ext = await self._store.external_id_taken(user_id, changes.external_ids)
            if ext is not None:
                raise MatrixError(409, "M_UNKNOWN", "External id is already in use.")
        existing = await self._store.get_details(user_id)
        created = existing is None
        if existing is None:
            if changes.deactivated:
                raise invalid_param("A new user cannot be deactivated")
            localpart = user_id[1:].split(":", 1)[0]
            await register_local_user(
                self._account_store,
                self._passwords,
                self._server_name,
                localpart,
                changes.password,
                admin=bool(changes.admin),
            )
            await self._profile_store.create_profile(
                user_id, changes.displayname if changes.set_displayname else localpart
            )
        else:
            if changes.admin is not None:
                await self._account_store.set_admin(user_id, changes.admin)
            if changes.deactivated is True and not existing.deactivated:
                await self._accounts.deactivate(user_id, erase=False)
            elif changes.deactivated is False and existing.deactivated:
                if changes.password is None:
                    raise invalid_param("Must provide a password to re-activate an account.")
                password_hash = await self._passwords.hash(changes.password)
                await self._store.reactivate(user_id, password_hash)
                self._accounts.erasure_changed(user_id)  # reactivation clears `erased`
            elif changes.password is not None and not existing.deactivated:
                await self._set_password(user_id, changes.password, changes.logout_devices)
        if changes.locked is not None:
            await self._store.set_flag(user_id, "locked", changes.locked)
        if changes.approved is not None:
            await self._store.set_flag(user_id, "approved", changes.approved)
        if changes.set_user_type:
            await self._store.set_user_type(user_id, changes.user_type)
        if changes.threepids is not None:
            taken = await self._store.set_threepids(user_id, changes.threepids, _now_ms())
            if taken is not None:
                raise MatrixError(409, "M_THREEPID_IN_USE", f"{taken} is already in use")
        if changes.external_ids is not None:
            await self._store.set_external_ids(user_id, changes.external_ids)
        if changes.deactivated is True:
            await self._store.set_threepids(user_id, [], _now_ms())  # as Synapse
        self._auth.invalidate_user(user_id)
        for field in _PROFILE_FIELDS:
            if getattr(changes, "set_" + field) and not (created and field == "displayname"):
                await self._profiles.set_field(user_id, user_id, field, getattr(changes, field))
        return created

    async def set_admin(self, admin_id: str, user_id: str, admin: bool) -> None:
        await self._details(user_id)
        if user_id == admin_id and not admin:
            raise invalid_param("You may not demote yourself.")
        await self._account_store.set_admin(user_id, admin)
        self._auth.invalidate_user(user_id)

    async def _set_password(self, user_id: str, password: str, logout_devices: bool) -> None:
        check_password(password)
        await self._account_store.set_password_hash(user_id, await self._passwords.hash(password))
        if logout_devices:
            await self._accounts.logout_all(user_id)

    async def reset_password(self, user_id: str, password: str, logout_devices: bool) -> None:
        """POST /_synapse/admin/v1/reset_password/{userId}."""
        user = await self._details(user_id)
        if user.deactivated:
            raise invalid_param("Cannot set a password for a deactivated user")
        await self._set_password(user_id, password, logout_devices)

    async def deactivate(self, user_id: str, *, erase: bool) -> None:
        """POST /_synapse/admin/v1/deactivate/{userId}: as the user's own deactivation,
        and with ``erase`` the profile goes and the account is marked erased."""
        await self._details(user_id)
        await self._accounts.deactivate(user_id, erase=erase)
        await self._store.set_threepids(user_id, [], _now_ms())  # as Synapse
        if erase:
            await self._store.set_flag(user_id, "erased", True)

    async def set_shadow_banned(self, user_id: str, banned: bool) -> None:
        await self._details(user_id)
        await self._store.set_flag(user_id, "shadow_banned", banned)
        self._auth.invalidate_user(user_id)

    async def username_available(self, username: str) -> None:
        """M_INVALID_USERNAME or M_USER_IN_USE, or nothing when it is free."""
        user_id = local_user_id(self._server_name, username.lower())
        if await self._account_store.user_exists(user_id):
            raise MatrixError(400, "M_USER_IN_USE", "User ID already taken.")

    async def login_as(self, admin_id: str, user_id: str, valid_until_ms: int | None) -> str:
        """POST /_synapse/admin/v1/users/{userId}/login: a token for no device (so the
        user's device list does not show it)."""
        if user_id == admin_id:
            raise invalid_param("Cannot use admin API to login as self")
        user = await self._details(user_id)
        if user.deactivated:
            raise invalid_param("Cannot log in as a deactivated user")
        token = "syt_" + secrets.token_urlsafe(32)
        await self._account_store.add_access_token(token, user_id, None, valid_until_ms)
        return token

    # -- sessions and devices

    async def _seen_written(self) -> None:
        if self._flush_seen is not None:
            await self._flush_seen()

    async def whois(self, user_id: str) -> dict[str, Any]:
        """GET /_synapse/admin/v1/whois/{userId}: per device, where, when and with which
        user agent it was last seen."""
        await self._details(user_id)
        await self._seen_written()
        devices: dict[str, Any] = {}
        for device in await self._accounts.list_devices(user_id):
            connections = []
            if device.last_seen_ts is not None:
                connections.append(
                    {
                        "ip": device.last_seen_ip,
                        "last_seen": device.last_seen_ts,
                        "user_agent": device.last_seen_user_agent,
                    }
                )
            devices[device.device_id] = {"sessions": [{"connections": connections}]}
        return {"user_id": user_id, "devices": devices}

    async def devices(self, user_id: str) -> list[dict[str, Any]]:
        await self._details(user_id)
        await self._seen_written()
        return [device_json(d) for d in await self._accounts.list_devices(user_id)]

    async def device(self, user_id: str, device_id: str) -> dict[str, Any]:
        await self._details(user_id)
        found = await self._accounts.get_device(user_id, device_id)
        if found is None:
            raise not_found("No device found")
        return device_json(found)

    async def create_device(self, user_id: str, device_id: str) -> None:
        await self._details(user_id)
        await self._accounts.create_device(user_id, device_id)

    async def rename_device(self, user_id: str, device_id: str, name: str | None) -> None:
        await self._details(user_id)
        if not await self._accounts.rename_device(user_id, device_id, name):
            raise not_found("No device found")

    async def delete_devices(self, user_id: str, device_ids: Sequence[str]) -> None:
        """Deleting a device that does not exist is not an error (Synapse)."""
        await self._details(user_id)
        await self._accounts.delete_devices(user_id, device_ids)

    # -- rooms

    async def joined_rooms(self, user_id: str) -> list[str]:
        self._local(user_id)
        if not await self._account_store.user_exists(user_id):
            raise not_found("User not found")
        return sorted(await self._memberships.get_joined_rooms(user_id))

    async def memberships(self, user_id: str) -> dict[str, str]:
        self._local(user_id)
        if not await self._account_store.user_exists(user_id):
            raise not_found("User not found")
        rooms = await self._memberships.get_rooms_for_user(user_id)
        return {room_id: m.membership for room_id, m in sorted(rooms.items())}

    async def account_data(self, user_id: str) -> dict[str, Any]:
        """GET /_synapse/admin/v1/users/{userId}/accountdata: global and per-room data."""
        await self._details(user_id)
        global_data: dict[str, Any] = {}
        rooms: dict[str, dict[str, Any]] = {}
        for room_id, data_type, raw in await self._store.account_data(user_id):
            content = orjson.loads(raw)
            if room_id:
                rooms.setdefault(room_id, {})[data_type] = content
            else:
                global_data[data_type] = content
        return {"account_data": {"global": global_data, "rooms": rooms}}

    # -- rate-limit overrides

    async def load_rate_limit_overrides(self) -> None:
        """At start (and, with workers, after a lost bus): the overrides admins set, into
        this process's running rate limits."""
        self._rate_limits.replace_message_overrides_here(
            {
                user_id: RateLimit(per_second, burst)
                for user_id, per_second, burst in await self._store.rate_limit_overrides()
            }
        )

    async def rate_limit_override(self, user_id: str) -> dict[str, int]:
        await self._details(user_id)
        for found, per_second, burst in await self._store.rate_limit_overrides():
            if found == user_id:
                return {"messages_per_second": per_second, "burst_count": burst}
        return {}

    async def set_rate_limit_override(
        self, user_id: str, per_second: int, burst: int
    ) -> dict[str, int]:
        await self._details(user_id)
        await self._store.set_rate_limit_override(user_id, per_second, burst)
        self._rate_limits.set_message_override(user_id, RateLimit(per_second, burst))
        return {"messages_per_second": per_second, "burst_count": burst}

    async def delete_rate_limit_override(self, user_id: str) -> None:
        await self._details(user_id)
        await self._store.delete_rate_limit_override(user_id)
        self._rate_limits.set_message_override(user_id, None)
