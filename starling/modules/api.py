"""The module API: what a module listed in ``modules:`` may do, and nothing else.

A module is a class named by its dotted path (``module: my_pkg.MyModule``); it is built at
start as ``MyModule(config, api)`` with its ``config`` mapping and a `ModuleApi`, as
Synapse's modules are. Through the handle it can:

- refuse local users' room events: ``api.register_spam_checker_callbacks(
  check_event_for_spam=cb)``; ``await cb(event)`` gets the event as a dict (``type``,
  ``room_id``, ``sender``, ``content``, and ``state_key`` for state) and returns
  `NOT_SPAM` (or None) to allow it, or a reason string to refuse it (403 M_FORBIDDEN
  with that reason);
- be told of every new event: ``api.register_event_listener(cb)`` (``await cb(event)``
  after it is stored; errors are logged, never raised);
- look up a user (``await api.user_exists(user_id)``) and send a message as a local user
  (``await api.send_message(room_id, sender, body)``).

Modules never get the server's internals.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starling.config import ConfigError

logger = logging.getLogger(__name__)

NOT_SPAM = "NOT_SPAM"

EventCheck = Callable[[dict[str, Any]], Awaitable[str | None]]
EventListener = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class ModuleCallbacks:
    check_event_for_spam: list[EventCheck] = field(default_factory=list)
    event_listeners: list[EventListener] = field(default_factory=list)

    async def check_event(self, event: dict[str, Any]) -> str | None:
        """None when every module allows `event`, else the first refusal's reason."""
        for check in self.check_event_for_spam:
            verdict = await check(event)
            if verdict is not None and verdict != NOT_SPAM:
                return str(verdict) or "Refused by a server module"
        return None

    async def tell(self, event: dict[str, Any]) -> None:
        for listener in self.event_listeners:
            try:
                await listener(event)
            except Exception:
                logger.exception("module event listener failed")


class ModuleApi:
    def __init__(
        self,
        server_name: str,
        callbacks: ModuleCallbacks,
        *,
        user_exists: Callable[[str], Awaitable[bool]],
        send_message: Callable[[str, str, str], Awaitable[str]],
    ) -> None:
        self.server_name = server_name
        self._callbacks = callbacks
        self._user_exists = user_exists
        self._send_message = send_message

    def register_spam_checker_callbacks(
        self, *, check_event_for_spam: EventCheck | None = None
    ) -> None:
        if check_event_for_spam is not None:
            self._callbacks.check_event_for_spam.append(check_event_for_spam)

    def register_event_listener(self, callback: EventListener) -> None:
        self._callbacks.event_listeners.append(callback)

    async def user_exists(self, user_id: str) -> bool:
        return await self._user_exists(user_id)

    async def send_message(self, room_id: str, sender: str, body: str) -> str:
        """Send an ``m.text`` message as the local user `sender`; its event ID."""
        if not sender.endswith(":" + self.server_name):
            raise ValueError("modules may only send as local users")
        return await self._send_message(room_id, sender, body)


def load_modules(entries: Sequence[Mapping[str, Any]], api: ModuleApi) -> list[object]:
    """Import and build every module; ConfigError naming the one that fails."""
    modules = []
    for i, entry in enumerate(entries):
        path = entry.get("module")
        if not isinstance(path, str) or "." not in path:
            raise ConfigError(f"modules[{i}].module: a dotted path such as my_pkg.MyModule")
        config = entry.get("config") or {}
        if not isinstance(config, dict):
            raise ConfigError(f"modules[{i}].config: must be a mapping")
        module_name, _, class_name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"modules[{i}].module: cannot load {path!r}: {e}") from None
        try:
            modules.append(cls(config, api))
        except Exception as e:
            raise ConfigError(f"modules[{i}]: {path} refused its config: {e}") from None
    return modules
