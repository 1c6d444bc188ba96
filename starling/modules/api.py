"""The module API: what a module listed in ``modules:`` may do, and nothing else.

A module is a class named by its dotted path (``module: my_pkg.MyModule``); it is built at
start as ``MyModule(config, api)`` with its ``config`` mapping and its own `ModuleApi`, as
Synapse's modules are. Callbacks are coroutine functions; a *check* returns `NOT_SPAM`
(or None) to allow, or a reason string to refuse (the client gets 403 M_FORBIDDEN with
that reason). Every module's check runs, in the order of ``modules:``; the first refusal
wins. Through ``api.register_spam_checker_callbacks(...)`` (Synapse's names):

- ``check_event_for_spam(event)``: a local user's room event (``type``, ``room_id``,
  ``sender``, ``content``, and ``state_key`` for state), before it is sent;
- ``user_may_invite(inviter, invitee, room_id)``: a local user's invite;
- ``user_may_create_room(user_id, request)``: ``POST /createRoom`` with its JSON body;
- ``check_registration_for_spam(localpart)``: ``POST /register`` (None: a generated
  name);
- ``check_media_file_for_spam(upload)``: an upload (`MediaUpload`: who, type, name,
  size, SHA-256 and ``await upload.read()`` for the bytes), before it is kept.

Password providers, ``api.register_password_auth_provider_callbacks(auth_checkers=
{(login_type, fields): checker})``: for ``m.login.password`` (fields ``("password",)``)
or a login type of the module's own (listed by ``GET /login``), ``await checker(username,
login_type, login_dict)`` gets the local part the client named (lower-cased) and the
request's `fields`; it returns an `ExternalIdentity` (the provider's stable subject, a
localpart and a display name for a first login) or None. An identity maps to one account
for good (`starling.accounts.external`): a first login creates it; an existing account
is never taken over unless the identity says ``allow_existing_user``. With
``password_config.localdb_enabled: false`` only providers check passwords.

Listeners: ``api.register_event_listener(cb)`` (``await cb(event)`` after every new event
is stored; errors are logged, never raised).

The handle: ``user_exists``, ``register_user(localpart, display_name)``,
``send_event(room_id, sender, type, content, state_key=None)`` and ``send_message`` as a
local user, and the module's own key-value data (``get_data``, ``put_data``,
``delete_data``: JSON values, kept in the database under the module's path). Modules
never get the server's internals.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from starling.accounts.external import ExternalIdentity
from starling.config import ConfigError

__all__ = ["NOT_SPAM", "ExternalIdentity", "MediaUpload", "ModuleApi", "ModuleServices"]

logger = logging.getLogger(__name__)

NOT_SPAM = "NOT_SPAM"
MAX_DATA_KEY = 255
MAX_DATA_VALUE = 64 * 1024

Verdict = str | None
EventCheck = Callable[[dict[str, Any]], Awaitable[Verdict]]
InviteCheck = Callable[[str, str, str], Awaitable[Verdict]]
CreateRoomCheck = Callable[[str, dict[str, Any]], Awaitable[Verdict]]
RegistrationCheck = Callable[[str | None], Awaitable[Verdict]]
EventListener = Callable[[dict[str, Any]], Awaitable[None]]
AuthChecker = Callable[[str, str, Mapping[str, Any]], Awaitable[ExternalIdentity | None]]


@dataclass(frozen=True)
class MediaUpload:
    """An upload a module may refuse. `read()` gives the content (at most
    ``max_upload_size`` bytes)."""

    user_id: str
    content_type: str | None
    upload_name: str | None
    size: int
    sha256: str
    read: Callable[[], Awaitable[bytes]]


MediaCheck = Callable[[MediaUpload], Awaitable[Verdict]]


def _refusal(verdict: object) -> str | None:
    if verdict is None or verdict == NOT_SPAM:
        return None
    return str(verdict) or "Refused by a server module"


@dataclass
class ModuleCallbacks:
    check_event_for_spam: list[EventCheck] = field(default_factory=list)
    user_may_invite: list[InviteCheck] = field(default_factory=list)
    user_may_create_room: list[CreateRoomCheck] = field(default_factory=list)
    check_registration_for_spam: list[RegistrationCheck] = field(default_factory=list)
    check_media_file_for_spam: list[MediaCheck] = field(default_factory=list)
    auth_checkers: list[tuple[str, tuple[str, ...], AuthChecker]] = field(default_factory=list)
    event_listeners: list[EventListener] = field(default_factory=list)

    async def check_event(self, event: dict[str, Any]) -> str | None:
        """None when every module allows `event`, else the first refusal's reason."""
        for check in self.check_event_for_spam:
            if (reason := _refusal(await check(event))) is not None:
                return reason
        return None

    async def check_invite(self, inviter: str, invitee: str, room_id: str) -> str | None:
        for check in self.user_may_invite:
            if (reason := _refusal(await check(inviter, invitee, room_id))) is not None:
                return reason
        return None

    async def check_create_room(self, user_id: str, request: dict[str, Any]) -> str | None:
        for check in self.user_may_create_room:
            if (reason := _refusal(await check(user_id, request))) is not None:
                return reason
        return None

    async def check_registration(self, localpart: str | None) -> str | None:
        for check in self.check_registration_for_spam:
            if (reason := _refusal(await check(localpart))) is not None:
                return reason
        return None

    async def check_media(self, upload: MediaUpload) -> str | None:
        for check in self.check_media_file_for_spam:
            if (reason := _refusal(await check(upload))) is not None:
                return reason
        return None

    async def tell(self, event: dict[str, Any]) -> None:
        for listener in self.event_listeners:
            try:
                await listener(event)
            except Exception:
                logger.exception("module event listener failed")


@dataclass(frozen=True)
class ModuleServices:
    """What the server lends modules (wired in app.py); each a narrow function."""

    user_exists: Callable[[str], Awaitable[bool]]
    # (localpart, display name) → user ID; M_USER_IN_USE if taken.
    register_user: Callable[[str, str | None], Awaitable[str]]
    # (room_id, sender, type, content, state_key) → event ID
    send_event: Callable[[str, str, str, dict[str, Any], str | None], Awaitable[str]]
    get_data: Callable[[str, str], Awaitable[str | None]]
    put_data: Callable[[str, str, str], Awaitable[None]]
    delete_data: Callable[[str, str], Awaitable[None]]


class ModuleApi:
    def __init__(
        self,
        server_name: str,
        callbacks: ModuleCallbacks,
        services: ModuleServices,
        module_name: str = "",
    ) -> None:
        self.server_name = server_name
        self._callbacks = callbacks
        self._services = services
        self._module = module_name

    def for_module(self, module_name: str) -> ModuleApi:
        """The handle one module gets: its data is kept under its own name."""
        return ModuleApi(self.server_name, self._callbacks, self._services, module_name)

    # -- callbacks

    def register_spam_checker_callbacks(
        self,
        *,
        check_event_for_spam: EventCheck | None = None,
        user_may_invite: InviteCheck | None = None,
        user_may_create_room: CreateRoomCheck | None = None,
        check_registration_for_spam: RegistrationCheck | None = None,
        check_media_file_for_spam: MediaCheck | None = None,
    ) -> None:
        cb = self._callbacks
        if check_event_for_spam is not None:
            cb.check_event_for_spam.append(check_event_for_spam)
        if user_may_invite is not None:
            cb.user_may_invite.append(user_may_invite)
        if user_may_create_room is not None:
            cb.user_may_create_room.append(user_may_create_room)
        if check_registration_for_spam is not None:
            cb.check_registration_for_spam.append(check_registration_for_spam)
        if check_media_file_for_spam is not None:
            cb.check_media_file_for_spam.append(check_media_file_for_spam)

    def register_password_auth_provider_callbacks(
        self, *, auth_checkers: Mapping[tuple[str, tuple[str, ...]], AuthChecker]
    ) -> None:
        for (login_type, fields), checker in auth_checkers.items():
            if not login_type or not all(isinstance(f, str) for f in fields):
                raise ValueError("auth_checkers keys are (login type, (field, ...))")
            self._callbacks.auth_checkers.append((login_type, tuple(fields), checker))

    def register_event_listener(self, callback: EventListener) -> None:
        self._callbacks.event_listeners.append(callback)

    # -- the handle

    def _local(self, user_id: str) -> None:
        if not user_id.startswith("@") or not user_id.endswith(":" + self.server_name):
            raise ValueError("modules may only act as local users")

    async def user_exists(self, user_id: str) -> bool:
        return await self._services.user_exists(user_id)

    async def register_user(self, localpart: str, display_name: str | None = None) -> str:
        """Create a local account without a password; its user ID."""
        return await self._services.register_user(localpart, display_name)

    async def send_event(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None = None,
    ) -> str:
        """Send an event as the local user `sender` (checked like a client's); its ID."""
        self._local(sender)
        return await self._services.send_event(room_id, sender, event_type, content, state_key)

    async def send_message(self, room_id: str, sender: str, body: str) -> str:
        """Send an ``m.text`` message as the local user `sender`; its event ID."""
        return await self.send_event(
            room_id, sender, "m.room.message", {"msgtype": "m.text", "body": body}
        )

    def _key(self, key: str) -> str:
        if not self._module:
            raise ValueError("this handle belongs to no module")
        if not key or len(key) > MAX_DATA_KEY:
            raise ValueError(f"data keys are 1 to {MAX_DATA_KEY} characters")
        return key

    async def get_data(self, key: str) -> Any:
        """The module's value under `key`, or None."""
        raw = await self._services.get_data(self._module, self._key(key))
        return orjson.loads(raw) if raw is not None else None

    async def put_data(self, key: str, value: Any) -> None:
        raw = orjson.dumps(value).decode()
        if len(raw) > MAX_DATA_VALUE:
            raise ValueError(f"data values are at most {MAX_DATA_VALUE} bytes of JSON")
        await self._services.put_data(self._module, self._key(key), raw)

    async def delete_data(self, key: str) -> None:
        await self._services.delete_data(self._module, self._key(key))


# Synapse's module paths for the login providers Starling ships, so a Synapse
# configuration works unchanged.
ALIASES = {
    "ldap_auth_provider.LdapAuthProviderModule": "starling.modules.ldap.LdapAuthProvider",
}


def load_modules(entries: Sequence[Mapping[str, Any]], api: ModuleApi) -> list[object]:
    """Import and build every module; ConfigError naming the one that fails."""
    modules = []
    for i, entry in enumerate(entries):
        path = entry.get("module")
        if not isinstance(path, str) or "." not in path:
            raise ConfigError(f"modules[{i}].module: a dotted path such as my_pkg.MyModule")
        path = ALIASES.get(path, path)
        config = entry.get("config") or {}
        if not isinstance(config, dict):
            raise ConfigError(f"modules[{i}].config: must be a mapping")
        module_name, _, class_name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"modules[{i}].module: cannot load {path!r}: {e}") from None
        try:
            modules.append(cls(config, api.for_module(path)))
        except Exception as e:
            raise ConfigError(f"modules[{i}]: {path} refused its config: {e}") from None
    return modules
