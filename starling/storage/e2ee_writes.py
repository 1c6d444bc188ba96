"""The E2EE writes that span several tables, each in one transaction of its own.

A key change and the device_lists stream row announcing it commit together (a reader
never sees new keys without the change, nor a change without the keys), and each write
allocates its stream positions through the device_lists StreamIdGenerator inside that
transaction. The services keep the rules (what to check, who hears about it) and run
their after-commit work (notify, listeners) once these methods return; a method that
raises has committed nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from starling.storage.database import Database, Transaction
from starling.storage.device_lists import DeviceListStore
from starling.storage.e2e_keys import E2eKeyStore, StoredSignature
from starling.storage.federation_to_device import FederationToDeviceStore
from starling.storage.streams import StreamIdGenerator
from starling.storage.to_device import InboxRow, ToDeviceStore

# (algorithm, key_id, key_json)
KeyRow = tuple[str, str, str]
# (user, device) -> pending messages (from one sender, in all), for those that have any
InboxCounts = Mapping[tuple[str, str], int]
# Asked once a write is sure to happen: the age below which to prune the remembered
# transaction/message IDs, or None for not now.
PruneBefore = Callable[[], int | None]


@dataclass(frozen=True, slots=True)
class DeviceChange:
    """These users' devices or keys changed. With ``observer``, only that user may see
    it. ``device_ids``: which devices (none for cross-signing keys); each gets its own
    stream position."""

    user_ids: Sequence[str]
    observer: str | None = None
    device_ids: Sequence[str] = ()


class E2eeWrites:
    def __init__(
        self,
        db: Database,
        keys: E2eKeyStore,
        to_device: ToDeviceStore,
        device_lists: DeviceListStore,
        device_lists_stream: StreamIdGenerator,
        to_device_stream: StreamIdGenerator,
        federation_to_device: FederationToDeviceStore,
    ) -> None:
        self._db = db
        self._keys = keys
        self._to_device = to_device
        self._device_lists = device_lists
        self._stream = device_lists_stream
        self._to_device_stream = to_device_stream
        self._federation_to_device = federation_to_device

    async def _add_change(self, txn: Transaction, change: DeviceChange) -> list[int]:
        """The change's stream positions (one per device, at least one); the row sits
        at the last."""
        ids = await self._stream.next_ids(txn, max(1, len(change.device_ids)))
        await self._device_lists.add_changes(txn, ids[-1], change.user_ids, change.observer)
        return ids

    async def _add_changes(
        self, txn: Transaction, changes: Sequence[DeviceChange]
    ) -> list[list[int]]:
        return [await self._add_change(txn, c) for c in changes]

    # -- the device_lists stream alone

    async def add_device_changes(self, changes: Sequence[DeviceChange]) -> list[list[int]]:
        """Record the changes (a remote user's devices changed); their positions."""
        async with self._db.transaction() as txn:
            return await self._add_changes(txn, changes)

    async def new_device_list_position(self) -> int:
        """A fresh position on the device_lists stream, with nothing written at it."""
        async with self._db.transaction() as txn:
            return await self._stream.next_id(txn)

    async def add_memberships(
        self, rows: Sequence[tuple[str, str, bool]], invites: Sequence[tuple[str, str]] = ()
    ) -> int:
        """``(room_id, user_id, joined)`` transitions and ``(room_id, user_id)`` invites at
        one new position, returned."""
        async with self._db.transaction() as txn:
            stream_id = await self._stream.next_id(txn)
            await self._device_lists.add_memberships(txn, stream_id, rows, invites)
        return stream_id

    # -- keys and the changes announcing them

    async def set_cross_signing_keys(
        self,
        user_id: str,
        keys: Mapping[str, tuple[str, str]],
        now_ms: int,
        changes: Sequence[DeviceChange],
    ) -> list[list[int]]:
        async with self._db.transaction() as txn:
            await self._keys.set_cross_signing_keys(txn, user_id, keys, now_ms)
            return await self._add_changes(txn, changes)

    async def store_signatures(
        self, signatures: Sequence[StoredSignature], changes: Sequence[DeviceChange]
    ) -> list[list[int]]:
        async with self._db.transaction() as txn:
            await self._keys.store_signatures(txn, signatures)
            return await self._add_changes(txn, changes)

    async def devices_changed(
        self, user_id: str, device_ids: Sequence[str], deleted: bool
    ) -> list[int]:
        """New devices are announced; deleted ones lose their keys and to-device inbox."""
        async with self._db.transaction() as txn:
            if deleted:
                await self._keys.delete_device_keys(txn, user_id, device_ids)
                await self._to_device.delete_inboxes(txn, user_id, device_ids)
            return await self._add_change(txn, DeviceChange([user_id], device_ids=device_ids))

    async def upload_keys(
        self,
        user_id: str,
        device_id: str,
        device_keys: str | None,
        one_time: Sequence[KeyRow],
        fallback: Sequence[KeyRow],
        now_ms: int,
        *,
        check_one_time: Callable[[Mapping[tuple[str, str], str]], None],
        check_counts: Callable[[Mapping[str, int]], None],
    ) -> tuple[list[int] | None, dict[str, int]]:
        """POST /keys/upload's write. New device keys that differ from the stored ones
        replace them with a change of the device; ``check_one_time`` sees the stored JSON
        of each uploaded one-time key ID, ``check_counts`` the one-time key counts after
        the write, and either may raise to roll everything back. Returns the change's
        positions (None: device keys unchanged) and the counts."""
        ids: list[int] | None = None
        async with self._db.transaction() as txn:
            if device_keys is not None:
                existing = await self._keys.device_keys_for_update(txn, user_id, device_id)
                if existing != device_keys:
                    await self._keys.set_device_keys(txn, user_id, device_id, device_keys, now_ms)
                    ids = await self._add_change(
                        txn, DeviceChange([user_id], device_ids=[device_id])
                    )
            if one_time:
                check_one_time(
                    await self._keys.add_one_time_keys(txn, user_id, device_id, one_time, now_ms)
                )
            await self._keys.set_fallback_keys(txn, user_id, device_id, fallback)
            counts = await self._keys.count_one_time_keys_in(txn, user_id, device_id)
            check_counts(counts)
        return ids, counts

    # -- to-device messages (the to_device stream)

    async def send_to_device(
        self,
        sender: str,
        sender_device: str,
        txn_id: str,
        now_ms: int,
        *,
        prune_before: PruneBefore,
        rows: Sequence[InboxRow],
        check_capacity: Callable[[InboxCounts, InboxCounts], None],
        outbound: Sequence[tuple[str, str]],
    ) -> bool:
        """PUT /sendToDevice in one transaction: claim the request's transaction ID
        (False: already claimed, nothing written), put ``rows`` in the inboxes at one new
        position once ``check_capacity`` (pending from the sender, pending in all, per
        recipient) did not raise, and the ``(destination, EDU content JSON)`` rows in the
        federation outbox at the next one."""
        async with self._db.transaction() as txn:
            if not await self._to_device.claim_txn(txn, sender, sender_device, txn_id, now_ms):
                return False
            older_than = prune_before()
            if older_than is not None:
                await self._to_device.prune_txns(txn, older_than)
            if rows:
                recipients = [(u, d) for u, d, _ in rows]
                check_capacity(
                    await self._to_device.pending_from(txn, sender, recipients),
                    await self._to_device.inbox_sizes(txn, recipients),
                )
                stream_id = await self._to_device_stream.next_id(txn)
                await self._to_device.add_messages(txn, stream_id, rows, sender)
            if outbound:
                stream_id = await self._to_device_stream.next_id(txn)
                await self._federation_to_device.add_outbound(txn, stream_id, outbound)
        return True

    async def deliver_remote_to_device(
        self,
        origin: str,
        message_id: str,
        now_ms: int,
        *,
        prune_before: PruneBefore,
        rows: Sequence[InboxRow],
        sender: str,
    ) -> bool:
        """An inbound EDU in one transaction: claim its ``message_id`` (False: already
        delivered, nothing written) and put ``rows`` in the inboxes at one new position."""
        async with self._db.transaction() as txn:
            if not await self._federation_to_device.claim_message_id(
                txn, origin, message_id, now_ms
            ):
                return False
            older_than = prune_before()
            if older_than is not None:
                await self._federation_to_device.prune_received(txn, older_than)
            if rows:
                stream_id = await self._to_device_stream.next_id(txn)
                await self._to_device.add_messages(txn, stream_id, rows, sender)
        return True

    async def record_partial_delivery(
        self, user_id: str, device_id: str, token_position: int, delivered_upto: int
    ) -> None:
        """A /sync response stopped early: record what it carried, and move the stream
        on, so the next response's token differs from this one's (a token then tells
        which of the two the client has)."""
        async with self._db.transaction() as txn:
            await self._to_device.record_partial_delivery(
                txn, user_id, device_id, token_position, delivered_upto
            )
            await self._to_device_stream.next_id(txn)
