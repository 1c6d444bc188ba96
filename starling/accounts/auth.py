"""Who is making a request: access token → Requester, with a small cache.

Every authenticated request asks this, so valid tokens are cached for a short time (a
revoked token is dropped from the cache at once by `invalidate_*`; the TTL only bounds
how long a token deleted behind our back, e.g. by another process, stays usable).

The first use of an access token issued by a refresh revokes the refresh token it
replaced (spec: "Refreshing access tokens"); a new token is always a cache miss, so that
check costs one lookup per fresh token.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starling.appservice.registration import AppService
from starling.appservice.registry import AppServiceRegistry
from starling.errors import MatrixError, forbidden, unknown_token
from starling.storage.accounts import AccountStore, TokenSession

TOKEN_CACHE_SECONDS = 60.0
TOKEN_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Requester:
    user_id: str
    device_id: str | None
    is_admin: bool
    access_token: str
    is_guest: bool = False
    shadow_banned: bool = False
    """Set by an admin: the user's sends succeed for them but reach nobody (Synapse)."""
    app_service: AppService | None = None
    """Set when an application service's ``as_token`` made the request."""

    @property
    def transaction_scope(self) -> str | None:
        """What a client's transaction ID is unique within: its device, or for an
        application service (which has none) the service (spec: "Transaction
        identifiers": scoped to the access token when there is no device)."""
        if self.device_id is None and self.app_service is not None:
            return f"as:{self.app_service.id}"
        return self.device_id

    @property
    def rate_limited(self) -> bool:
        return self.app_service is None or self.app_service.rate_limited


# Tokens we issue are ~44 characters; configured (appservice) ones are bounded by this too.
MAX_TOKEN_LENGTH = 1024


class RequestAuthenticator:
    def __init__(self, store: AccountStore, app_services: AppServiceRegistry | None = None) -> None:
        self._store = store
        self._app_services = app_services or AppServiceRegistry()
        self._cache: dict[str, tuple[TokenSession, float]] = {}
        # Bumped by every invalidation: a token read that began before a logout (or a
        # deactivation, a device deletion) must not cache the session it found once
        # the logout has dropped it, or the token would work on for TOKEN_CACHE_SECONDS.
        self._generation = 0
        # Set with workers (starling/cluster): every invalidation is told to the other
        # processes, as (method name, arguments), so a revoked token fails everywhere.
        self.on_invalidate: Callable[[str, list[Any]], None] | None = None
        # Told of every invalidation another process made (open WebSockets recheck).
        self._elsewhere: list[Callable[[str, list[Any]], None]] = []

    def add_elsewhere_listener(self, listener: Callable[[str, list[Any]], None]) -> None:
        """Call `listener(method, args)` after applying another process's invalidation."""
        self._elsewhere.append(listener)

    def _tell(self, method: str, *args: Any) -> None:
        if self.on_invalidate is not None:
            self.on_invalidate(method, list(args))

    def invalidate_here(self, method: str, args: list[Any]) -> None:
        """Apply another process's invalidation (see on_invalidate): not told on."""
        if method == "clear":
            self._generation += 1
            self._cache.clear()
            return
        if method == "token":
            self._drop_token(args[0])
        elif method == "user":
            self._drop_user(args[0])
        elif method == "device":
            self._drop_device(args[0], args[1])
        elif method == "refresh":
            self._drop_refresh_tokens(args[0])
        for listener in self._elsewhere:
            listener(method, args)

    async def requester_for_token(
        self, token: str, user_id: str | None = None, device_id: str | None = None
    ) -> Requester:
        """The requester owning `token`; M_UNKNOWN_TOKEN (401) if none or expired.

        An application service's ``as_token`` acts as its sender, or as `user_id` (the
        request's ``user_id`` parameter, spec: "Identity assertion") when that user is
        in its namespace and registered, on `device_id` (the ``device_id`` parameter) when
        that device is the user's (400 M_UNKNOWN_DEVICE otherwise); both are ignored for
        any other token."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise unknown_token()  # longer than any token this server issues
        service = self._app_services.by_token(token) if self._app_services else None
        if service is not None:
            requester = await self._app_service_requester(service, token, user_id)
            if device_id is None:
                return requester
            if await self._store.get_device(requester.user_id, device_id) is None:
                raise MatrixError(400, "M_UNKNOWN_DEVICE", "The device is not the user's")
            return dataclasses.replace(requester, device_id=device_id)
        now = time.monotonic()
        hit = self._cache.get(token)
        owner: TokenSession | None
        if hit is not None and hit[1] > now:
            owner = hit[0]
        else:
            generation = self._generation
            owner = await self._store.get_token_session(token)
            if owner is None:
                raise unknown_token()
            if owner.refresh_token_id is not None and not owner.deactivated:
                revoked = await self._store.revoke_refresh_predecessors(owner.refresh_token_id)
                self.invalidate_refresh_tokens(revoked)
            if len(self._cache) >= TOKEN_CACHE_MAX:
                self._cache.clear()
            if generation == self._generation:  # nothing was revoked while it was read
                self._cache[token] = (owner, now + TOKEN_CACHE_SECONDS)
        if owner.deactivated:
            self._cache.pop(token, None)
            raise MatrixError(401, "M_USER_DEACTIVATED", "This account has been deactivated")
        if owner.locked:
            raise MatrixError(
                401, "M_USER_LOCKED", "This account has been locked", soft_logout=True
            )
        if owner.valid_until_ms is not None and owner.valid_until_ms <= time.time() * 1000:
            raise unknown_token("Access token has expired", soft_logout=True)
        return Requester(
            user_id=owner.user_id,
            device_id=owner.device_id,
            is_admin=owner.is_admin,
            access_token=token,
            is_guest=owner.is_guest,
            shadow_banned=owner.shadow_banned,
        )

    async def _app_service_requester(
        self, service: AppService, token: str, user_id: str | None
    ) -> Requester:
        if user_id is None or user_id == service.sender:
            return Requester(service.sender, None, False, token, app_service=service)
        if not service.user_in_namespace(user_id):
            raise forbidden("Application service cannot masquerade as this user")
        record = await self._store.get_user(user_id)
        if record is None:
            raise forbidden("Application service has not registered this user")
        if record.deactivated:
            raise MatrixError(401, "M_USER_DEACTIVATED", "This account has been deactivated")
        return Requester(user_id, None, False, token, app_service=service)

    def invalidate_token(self, token: str) -> None:
        self._drop_token(token)
        self._tell("token", token)

    def invalidate_user(self, user_id: str) -> None:
        self._drop_user(user_id)
        self._tell("user", user_id)

    def invalidate_device(self, user_id: str, device_id: str) -> None:
        self._drop_device(user_id, device_id)
        self._tell("device", user_id, device_id)

    def invalidate_refresh_tokens(self, refresh_token_ids: list[int]) -> None:
        """Drop the access tokens issued with these (now revoked) refresh tokens."""
        if not refresh_token_ids:
            return
        self._drop_refresh_tokens(refresh_token_ids)
        self._tell("refresh", refresh_token_ids)

    def _drop_token(self, token: str) -> None:
        self._generation += 1
        self._cache.pop(token, None)

    def _drop_user(self, user_id: str) -> None:
        self._generation += 1
        for token, (owner, _) in list(self._cache.items()):
            if owner.user_id == user_id:
                del self._cache[token]

    def _drop_device(self, user_id: str, device_id: str) -> None:
        self._generation += 1
        for token, (owner, _) in list(self._cache.items()):
            if owner.user_id == user_id and owner.device_id == device_id:
                del self._cache[token]

    def _drop_refresh_tokens(self, refresh_token_ids: list[int]) -> None:
        self._generation += 1
        ids = set(refresh_token_ids)
        for token, (owner, _) in list(self._cache.items()):
            if owner.refresh_token_id in ids:
                del self._cache[token]
