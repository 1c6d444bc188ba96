"""Send-to-device messaging: accepting messages, and handing each device its inbox.

Spec: client-server-api "Send-to-Device messaging". One request is one position on the
to_device stream and at most one message per recipient device, so a device's messages are
ordered by position. A message stays in the inbox until a /sync from a token past it
arrives (or the WebSocket's `ack` frame names such a token: the WebSocket's own chained
polls do not acknowledge, docs/transports.md); a response that had to stop early (at most `MAX_PER_SYNC` messages) records what
it carried, so the next /sync acknowledges exactly that and not the rest (and moves the
stream on, so that no later response shares its token).

Floods: each sending user is limited by `rc_to_device` (counted per recipient device), and
a request with a message for a device that holds `MAX_PENDING_PER_SENDER` messages from
this sender, or `MAX_INBOX` in all, is refused as a whole with 429 `M_LIMIT_EXCEEDED` -
the sender learns and may retry; nothing is silently dropped, and one flooding sender
does not shut out the others.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import orjson

from starling.errors import MatrixError, bad_json, invalid_param
from starling.protocol.canonical_json import CanonicalJsonError, encode_canonical_json
from starling.protocol.identifiers import is_valid_user_id
from starling.ratelimit import RateLimits
from starling.storage.e2ee_writes import E2eeWrites, InboxCounts
from starling.storage.streams import StreamIdGenerator
from starling.storage.to_device import ToDeviceStore

logger = logging.getLogger(__name__)

# Recommended by the spec: at most 100 messages per /sync response.
MAX_PER_SYNC = 100
# Most recipient devices in one request (after expanding "*"), and the largest content.
MAX_RECIPIENTS = 10_000
MAX_CONTENT_BYTES = 64 * 1024
# A device that never syncs must not grow its inbox without bound, nor may one sender
# fill it for everyone: past this many pending messages from one sender, or in all, a
# request with a message for it is refused (429), never dropped. The total is far above
# what a dead device collects from its owner's contacts in years of key sharing.
MAX_PENDING_PER_SENDER = 5_000
MAX_INBOX = 100_000
# How long a sender refused for a full inbox is asked to wait: the recipient has to
# sync first, which nobody can predict.
FULL_INBOX_RETRY_MS = 30_000
TXN_ID_LIFETIME_MS = 24 * 3600 * 1000
_PRUNE_EVERY_MS = 10 * 60 * 1000
# Devices remembered as having an empty inbox (a /sync shortcut; forgetting is harmless).
MAX_DRAINED = 50_000


class RemoteToDeviceOutbox(Protocol):
    """To-device messages for users on other servers (federation EDUs,
    e2ee/federated_to_device.py): the outbox rows the sending request's transaction
    writes, and the wake-up after its commit."""

    def outbound(
        self, sender: str, event_type: str, by_server: Mapping[str, Mapping[str, Any]]
    ) -> list[tuple[str, str]]: ...

    def wake_all(self, servers: Iterable[str]) -> None: ...


def _now_ms() -> int:
    return int(time.time() * 1000)


def _inbox_full(message: str) -> MatrixError:
    return MatrixError(
        429,
        "M_LIMIT_EXCEEDED",
        message,
        headers={"Retry-After": str(FULL_INBOX_RETRY_MS // 1000)},
        retry_after_ms=FULL_INBOX_RETRY_MS,
    )


class ToDeviceService:
    def __init__(
        self,
        server_name: str,
        writes: E2eeWrites,
        store: ToDeviceStore,
        stream: StreamIdGenerator,
        notify: Callable[[Iterable[str]], None],
        *,
        remote: RemoteToDeviceOutbox | None = None,
        clock_ms: Callable[[], int] = _now_ms,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self._server_name = server_name
        self._writes = writes
        self._store = store
        self._stream = stream
        self._notify = notify
        self.remote = remote
        self._clock_ms = clock_ms
        self._rate_limits = rate_limits
        self._last_prune = 0
        self.max_inbox = MAX_INBOX
        self.max_pending_per_sender = MAX_PENDING_PER_SENDER
        # (user, device) -> a position P such that the device's inbox held no message at
        # or below P when a sync found it empty up to P (see messages_for_sync); bounded.
        self._drained: OrderedDict[tuple[str, str], int] = OrderedDict()

    def current_position(self) -> int:
        return self._stream.current_position()

    async def send(
        self,
        sender: str,
        sender_device: str | None,
        event_type: str,
        txn_id: str,
        messages: Any,
    ) -> None:
        """PUT /sendToDevice/{eventType}/{txnId}: queue one message per target device."""
        if not isinstance(messages, dict):
            raise bad_json("'messages' must be an object")
        local: dict[str, dict[str, str]] = {}
        remote: dict[str, dict[str, Any]] = {}
        total = 0
        for user_id, by_device in messages.items():
            if not isinstance(by_device, dict):
                raise bad_json("'messages' must map user IDs to {device ID: content}")
            if not is_valid_user_id(user_id):
                raise invalid_param(f"{user_id!r} is not a valid user ID")
            for content in by_device.values():
                if not isinstance(content, dict):
                    raise bad_json("Each to-device message content must be an object")
                total += 1
            server = user_id.split(":", 1)[1]
            if server != self._server_name:
                for content in by_device.values():
                    self._encode(sender, event_type, content)  # same limits as local
                remote.setdefault(server, {})[user_id] = by_device
                continue
            local[user_id] = {}
            for device_id, content in by_device.items():
                local[user_id][device_id] = self._encode(sender, event_type, content)
        if total > MAX_RECIPIENTS:
            raise invalid_param(f"At most {MAX_RECIPIENTS} messages may be sent at once")
        rows = await self._expand(local)
        if len(rows) > MAX_RECIPIENTS:
            raise invalid_param(f"At most {MAX_RECIPIENTS} devices may be sent to at once")
        if self._rate_limits is not None:
            remote_count = sum(len(d) for by_user in remote.values() for d in by_user.values())
            await self._rate_limits.check_to_device(sender, len(rows) + remote_count)
        now = self._clock_ms()
        outbound: list[tuple[str, str]] = []
        if remote and self.remote is not None:
            outbound = self.remote.outbound(sender, event_type, remote)

        def prune_before() -> int | None:
            if now - self._last_prune <= _PRUNE_EVERY_MS:
                return None
            self._last_prune = now
            return now - TXN_ID_LIFETIME_MS

        def check_capacity(from_sender: InboxCounts, sizes: InboxCounts) -> None:
            self._refuse_if_full(sender, event_type, from_sender, sizes)

        if not await self._writes.send_to_device(
            sender,
            sender_device or "",
            txn_id,
            now,
            prune_before=prune_before,
            rows=rows,
            check_capacity=check_capacity,
            outbound=outbound,
        ):
            return  # a retry of a request already served
        if rows:
            self._notify({u for u, _, _ in rows})
        if remote:
            if self.remote is None:
                logger.info("to-device %s for %s not sent: no federation", event_type, remote)
            else:
                self.remote.wake_all(list(remote))

    def _refuse_if_full(
        self, sender: str, event_type: str, from_sender: InboxCounts, sizes: InboxCounts
    ) -> None:
        """429 for the whole request (the transaction, and so the claimed txn ID, rolls
        back) when a recipient's inbox is full (``sizes``: pending messages per
        recipient), or holds as many messages from this sender (``from_sender``) as one
        sender may have waiting: the client retries later; nothing is lost unseen."""
        flooded = sorted(k for k, n in from_sender.items() if n >= self.max_pending_per_sender)
        if flooded:
            user_id, device_id = flooded[0]
            raise _inbox_full(
                f"{user_id}'s device {device_id} has {self.max_pending_per_sender} messages"
                " from you waiting; retry once it has read them"
            )
        full = sorted(k for k, n in sizes.items() if n >= self.max_inbox)
        if full:
            logger.info(
                "refusing %s from %s: %d recipient inboxes full (first: %s %s)",
                event_type,
                sender,
                len(full),
                *full[0],
            )
            raise _inbox_full(f"The to-device inbox of {full[0][0]}'s device {full[0][1]} is full")

    def _encode(self, sender: str, event_type: str, content: dict[str, Any]) -> str:
        try:
            encoded = encode_canonical_json(
                {"content": content, "sender": sender, "type": event_type}
            )
        except CanonicalJsonError as e:
            raise bad_json(f"Message content is not valid JSON for Matrix: {e}") from None
        if len(encoded) > MAX_CONTENT_BYTES:
            raise MatrixError(
                413, "M_TOO_LARGE", f"A to-device message may be at most {MAX_CONTENT_BYTES} bytes"
            )
        return encoded.decode("utf-8")

    async def _expand(self, local: dict[str, dict[str, str]]) -> list[tuple[str, str, str]]:
        """Inbox rows for existing devices; "*" means every device of the user (a message
        for a specific device wins over "*" for that device)."""
        if not local:
            return []
        devices = await self._store.devices_of(list(local))
        rows: list[tuple[str, str, str]] = []
        for user_id, by_device in local.items():
            known = devices.get(user_id, set())
            targets: dict[str, str] = {}
            if "*" in by_device:
                targets = {d: by_device["*"] for d in known}
            for device_id, message in by_device.items():
                if device_id != "*" and device_id in known:
                    targets[device_id] = message
            rows.extend((user_id, d, m) for d, m in sorted(targets.items()))
        return rows

    async def messages_after(
        self, user_id: str, device_id: str, after: int | None, limit: int
    ) -> list[tuple[int, dict[str, Any]]]:
        """A device without /sync (a dehydrated one, MSC3814): its messages after `after`,
        having deleted those up to it (the client has them), oldest first."""
        if after is not None:
            after = await self._store.acknowledge(user_id, device_id, after)
        found = await self._store.get_messages(
            user_id, device_id, after or 0, self._stream.current_position(), limit
        )
        self._drained.pop((user_id, device_id), None)
        return [(position, orjson.loads(message)) for position, message in found]

    async def acknowledge(self, user_id: str, device_id: str, since: int) -> None:
        """The device has processed the response whose token held ``since`` (the
        WebSocket's `ack` frame): delete what it carried, as a /sync from it would.
        Clamped to the stream, as /sync clamps its `since`: a token from the future
        cannot acknowledge messages not yet delivered."""
        since = min(since, self._stream.current_position())
        await self._store.acknowledge(user_id, device_id, since)

    async def messages_for_sync(
        self,
        user_id: str,
        device_id: str,
        since: int | None,
        upto: int,
        *,
        acknowledge: bool = True,
    ) -> list[dict[str, Any]]:
        """The device's messages for a /sync from ``since`` whose token will hold ``upto``,
        acknowledging what the ``since`` token's response carried.

        ``acknowledge=False`` (the WebSocket's server-chained polls: the client may not
        have processed the ``since`` response yet) reads the same messages but deletes
        nothing; the client acknowledges later (an `ack` frame, or the `since` of its
        next stream or /sync), and a stream resumed from an older token gets them again.

        A device whose inbox a sync found empty up to P, syncing from P while the stream
        is still at P, has nothing to acknowledge or read: every message added since has
        a position above P (stream positions), so both queries are skipped."""
        key = (user_id, device_id)
        if since is not None and since == upto and self._drained.get(key) == since:
            self._drained.move_to_end(key)
            return []
        after = 0
        if since is not None and acknowledge:
            after = await self._store.acknowledge(user_id, device_id, since)
        elif since is not None:
            after = await self._store.delivered_upto(user_id, device_id, since)
        found = await self._store.get_messages(user_id, device_id, after, upto, MAX_PER_SYNC)
        if len(found) == MAX_PER_SYNC and found[-1][0] < upto:
            # Also moves the stream on, so the next response's token differs from this
            # one's: a token then tells which of the two the client has.
            await self._writes.record_partial_delivery(user_id, device_id, upto, found[-1][0])
        if found:
            self._drained.pop(key, None)
        elif acknowledge:
            # Everything at or below `after` was deleted, nothing is in (after, upto].
            # (Not armed for an unacknowledged read: messages at or below `after` may
            # still wait for their ack, which the shortcut above would skip.)
            self._drained[key] = upto
            self._drained.move_to_end(key)
            if len(self._drained) > MAX_DRAINED:
                self._drained.popitem(last=False)
        return [orjson.loads(message) for _, message in found]
