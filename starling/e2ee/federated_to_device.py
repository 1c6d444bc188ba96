"""To-device messages across servers (Server-Server API > Send-to-device messaging):
`m.direct_to_device` EDUs, both ways, exactly once and in order.

Outbound: a client's message for users of another server is written, in the same
transaction as the request's transaction ID, to a persisted outbox - one EDU per
(request, destination), with a fresh `message_id` - and the federation sender is told.
The sender carries outbox EDUs in stream order and deletes them once the destination
has accepted the transaction, so they survive restarts of either side and a destination
that was down gets them when it returns.

Inbound: an EDU is delivered to the named devices of our own users ("*": all of a
user's devices), and its `message_id` is recorded in the same transaction, so the same
EDU sent again (a retried transaction after the receiver crashed before answering) is
not delivered twice. The registry has already checked that `sender` belongs to the
origin.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from starling.protocol.canonical_json import CanonicalJsonError, encode_canonical_json
from starling.protocol.identifiers import is_valid_user_id
from starling.storage.e2ee_writes import E2eeWrites
from starling.storage.federation_to_device import FederationToDeviceStore
from starling.storage.to_device import ToDeviceStore

logger = logging.getLogger(__name__)

EDU_TYPE = "m.direct_to_device"
# message_ids remembered per origin: far longer than any sender retries a transaction.
RECEIVED_LIFETIME_MS = 7 * 24 * 3600 * 1000
_PRUNE_EVERY_MS = 3600 * 1000
MAX_MESSAGE_BYTES = 64 * 1024


def _now_ms() -> int:
    return int(time.time() * 1000)


class FederatedToDevice:
    def __init__(
        self,
        server_name: str,
        writes: E2eeWrites,
        store: FederationToDeviceStore,
        inbox: ToDeviceStore,
        notify: Callable[[Iterable[str]], None],
        *,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._server_name = server_name
        self._writes = writes
        self._store = store
        self._inbox = inbox
        self._notify = notify
        self._clock_ms = clock_ms
        self._last_prune = 0
        # Set by app.py once the federation sender exists: "destination has outbox EDUs".
        self.wake: Callable[[str], None] | None = None

    # --- outbound -------------------------------------------------------------------------

    def outbound(
        self, sender: str, event_type: str, by_server: Mapping[str, Mapping[str, Any]]
    ) -> list[tuple[str, str]]:
        """The outbox rows of one request: one EDU (its content JSON, with a fresh
        `message_id`) per destination server. The sending request's transaction writes
        them (E2eeWrites.send_to_device); `wake_all` follows its commit."""
        rows = []
        for server, messages in sorted(by_server.items()):
            content = {
                "sender": sender,
                "type": event_type,
                "message_id": secrets.token_urlsafe(16),
                "messages": messages,
            }
            rows.append((server, orjson.dumps(content).decode()))
        return rows

    def wake_all(self, servers: Iterable[str]) -> None:
        """After the commit of outbox EDUs: tell the federation sender."""
        self._wake_all(servers)

    def _wake_all(self, servers: Iterable[str]) -> None:
        if self.wake is None:
            logger.info("to-device EDUs queued without a federation sender")
            return
        for server in servers:
            self.wake(server)

    async def destinations_pending(self) -> list[str]:
        """Destinations owed outbox EDUs (the sender asks at start)."""
        return await self._store.destinations_pending()

    async def pending(self, destination: str, limit: int) -> tuple[list[dict[str, Any]], int]:
        """The oldest EDUs owed to `destination` and the position to acknowledge them."""
        rows = await self._store.pending(destination, limit)
        edus = [{"edu_type": EDU_TYPE, "content": orjson.loads(body)} for _, body in rows]
        return edus, (rows[-1][0] if rows else 0)

    async def delivered(self, destination: str, upto: int) -> None:
        await self._store.delete_delivered(destination, upto)

    # --- inbound --------------------------------------------------------------------------

    async def on_edu(self, origin: str, content: dict[str, Any]) -> None:
        """An `m.direct_to_device` EDU from `origin` (its sender already checked)."""
        sender = content.get("sender")
        event_type = content.get("type")
        message_id = content.get("message_id")
        messages = content.get("messages")
        if not (
            isinstance(sender, str)
            and isinstance(event_type, str)
            and isinstance(message_id, str)
            and 0 < len(message_id) <= 255
            and isinstance(messages, dict)
        ):
            logger.info("dropped a malformed to-device EDU from %s", origin)
            return
        wanted: dict[str, dict[str, str]] = {}
        for user_id, by_device in messages.items():
            if not isinstance(by_device, dict) or not is_valid_user_id(user_id):
                continue
            if user_id.split(":", 1)[1] != self._server_name:
                continue  # not ours to deliver
            for device_id, body in by_device.items():
                if not isinstance(device_id, str) or not isinstance(body, dict):
                    continue
                try:
                    encoded = encode_canonical_json(
                        {"content": body, "sender": sender, "type": event_type}
                    )
                except CanonicalJsonError:
                    continue
                if len(encoded) <= MAX_MESSAGE_BYTES:
                    wanted.setdefault(user_id, {})[device_id] = encoded.decode()
        devices = await self._inbox.devices_of(list(wanted)) if wanted else {}
        rows: list[tuple[str, str, str]] = []
        for user_id, by_device in wanted.items():
            known = devices.get(user_id, set())
            targets = {d: by_device["*"] for d in known} if "*" in by_device else {}
            targets.update({d: m for d, m in by_device.items() if d != "*" and d in known})
            rows.extend((user_id, d, m) for d, m in sorted(targets.items()))
        now = self._clock_ms()

        def prune_before() -> int | None:
            if now - self._last_prune <= _PRUNE_EVERY_MS:
                return None
            self._last_prune = now
            return now - RECEIVED_LIFETIME_MS

        if not await self._writes.deliver_remote_to_device(
            origin, message_id, now, prune_before=prune_before, rows=rows, sender=sender
        ):
            logger.debug("to-device %s from %s already delivered", message_id, origin)
            return
        if rows:
            self._notify({u for u, _, _ in rows})
