"""Typing notifications and read receipts across servers (Server-Server API > Typing
Notifications, Receipts): the `m.typing` and `m.receipt` EDUs, both ways.

Outbound: a local user's typing change, or public (`m.read`) receipt, is sent to every
other server with a user joined to the room. Private receipts (`m.read.private`) are
never sent. These EDUs are ephemeral and ride in the sender's memory queue.

Inbound: the registry has already dropped EDUs naming users of another server than the
origin and applied the rooms' server ACLs. A typing notification or receipt is only
taken from a user joined to the room (typing lasts 30 s unless renewed or stopped);
receipts keep their thread (`data.thread_id`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starling.protocol.identifiers import is_valid_event_id, is_valid_room_id
from starling.protocol.power_levels import server_of
from starling.receipts.service import MAIN_THREAD
from starling.storage.receipts import Receipt

logger = logging.getLogger(__name__)

FEDERATION_TYPING_TIMEOUT_MS = 30_000


class EduSender(Protocol):
    def send_edu(self, destination: str, edu_type: str, content: dict[str, Any]) -> None: ...


class TypingSink(Protocol):
    def started(self, room_id: str, user_id: str, timeout_ms: int) -> None: ...

    def stopped(self, room_id: str, user_id: str) -> None: ...


JoinedUsers = Callable[[str], Awaitable[frozenset[str]]]
"""room_id -> the users joined to it."""
RemoteReceipt = Callable[[Receipt], Awaitable[None]]


class RoomEdus:
    def __init__(
        self,
        server_name: str,
        sender: EduSender,
        joined_users: JoinedUsers,
        typing: TypingSink,
        store_receipt: RemoteReceipt,
    ) -> None:
        self._server_name = server_name
        self._sender = sender
        self._joined_users = joined_users
        self._typing = typing
        self._store_receipt = store_receipt

    async def _other_servers(self, room_id: str) -> set[str]:
        servers = {server_of(u) for u in await self._joined_users(room_id)}
        servers.discard(self._server_name)
        return servers

    # --- outbound -------------------------------------------------------------------------

    async def local_typing(self, room_id: str, user_id: str, typing: bool) -> None:
        content = {"room_id": room_id, "user_id": user_id, "typing": typing}
        for server in sorted(await self._other_servers(room_id)):
            self._sender.send_edu(server, "m.typing", content)

    async def local_receipt(self, receipt: Receipt) -> None:
        if receipt.receipt_type != "m.read":
            return  # private receipts stay on this server
        data: dict[str, Any] = {"ts": receipt.ts}
        if receipt.thread_id:
            data["thread_id"] = receipt.thread_id
        content = {
            receipt.room_id: {
                "m.read": {receipt.user_id: {"event_ids": [receipt.event_id], "data": data}}
            }
        }
        for server in sorted(await self._other_servers(receipt.room_id)):
            self._sender.send_edu(server, "m.receipt", content)

    # --- inbound --------------------------------------------------------------------------

    async def on_typing(self, origin: str, content: dict[str, Any]) -> None:
        room_id = content.get("room_id")
        user_id = content.get("user_id")
        typing = content.get("typing")
        if not isinstance(room_id, str) or not isinstance(typing, bool):
            return
        if not isinstance(user_id, str) or user_id not in await self._joined_users(room_id):
            logger.info("dropped typing from %s for %s: not joined to %s", origin, user_id, room_id)
            return
        if typing:
            self._typing.started(room_id, user_id, FEDERATION_TYPING_TIMEOUT_MS)
        else:
            self._typing.stopped(room_id, user_id)

    async def on_receipt(self, origin: str, content: dict[str, Any]) -> None:
        for room_id, by_type in content.items():
            if not is_valid_room_id(room_id) or not isinstance(by_type, dict):
                continue
            reads = by_type.get("m.read")
            if not isinstance(reads, dict):
                continue
            joined = await self._joined_users(room_id)
            for user_id, receipt in reads.items():
                parsed = _parse_receipt(room_id, user_id, receipt)
                if parsed is None or user_id not in joined:
                    continue
                await self._store_receipt(parsed)


def _parse_receipt(room_id: str, user_id: str, body: Any) -> Receipt | None:
    if not isinstance(body, dict):
        return None
    event_ids = body.get("event_ids")
    data = body.get("data")
    if not isinstance(event_ids, list) or not event_ids or not isinstance(data, dict):
        return None
    event_id = event_ids[0]
    ts = data.get("ts")
    thread_id = data.get("thread_id", "")
    if not isinstance(event_id, str) or not is_valid_event_id(event_id):
        return None
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
        ts = 0
    if not isinstance(thread_id, str) or (
        thread_id and thread_id != MAIN_THREAD and not is_valid_event_id(thread_id)
    ):
        return None
    return Receipt(room_id, "m.read", user_id, thread_id, event_id, ts)
