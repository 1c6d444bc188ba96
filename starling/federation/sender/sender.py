"""The outbound federation sender (DESIGN §6 "Outbound federation"; spec: server-server
API, Transactions): one persisted queue per destination, read from the events stream.

Two stages, both driven by stored positions rather than in-memory "new event" callbacks:

* **Fan-out** reads the events stream from the sender's stored position, picks the events
  this server must send (its own users' events, and the joins/leaves/knocks it relays for
  the server that made them), works out each event's destinations (servers joined around
  it, plus an invitee's), and records per (destination, room) the newest event owed, then
  its new position — one transaction per batch. A destination that is in step gets the
  events handed over in memory as well, so the common case costs no further reads.
* **Per destination**, a task sends transactions of at most 50 PDUs and 100 EDUs
  (`PUT /_matrix/federation/v1/send/{txnId}`) and records how far it has delivered. On
  failure it backs off (see `backoff`) and drops its in-memory PDUs: from then on it is
  *catching up*, reading what it owes back from the database from its last delivered
  position. After a short outage it replays every missed event in order; after a long one
  (more than `REPLAY_LIMIT` events) it sends the newest events it owes in each room and
  lets the receiver fill the gap with `get_missing_events`.

A destination that comes back is caught up at once: any request from it
(`destination_is_up`, called by inbound request authentication) or a successful retry ends
the backoff and flushes its queue.

EDUs come from memory (`send_edu`: typing, receipts... lost with the process, as they may
be) or from a `StoredEdus` source (to-device messages: read back in order, deleted once a
transaction carrying them was accepted, so they survive restarts of either side).

The sender wakes on `wake()` (called after each persisted event) and never polls. One
process sends federation traffic; a second sender process would need the destination rows
claimed first (scale-out work).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from starling.federation.errors import FederationError, FederationUnreachable
from starling.federation.metrics import (
    DESTINATION_QUEUE,
    TRANSACTION_FAILURES,
    TRANSACTION_SECONDS,
)
from starling.federation.sender.backoff import BackoffPolicy
from starling.federation.sender.hosts import JoinedHosts, server_of
from starling.protocol.event import Event
from starling.storage.events import StoredEvent
from starling.storage.federation_sender import DestinationRow as DestinationRow
from starling.storage.federation_sender import FederationSenderStore

logger = logging.getLogger(__name__)

MAX_PDUS_PER_TXN = 50
MAX_EDUS_PER_TXN = 100
# Events read from the stream per fan-out round.
FAN_OUT_BATCH = 200
# A destination owed more events than this is caught up with each room's newest events.
REPLAY_LIMIT = 500
# EDUs waiting for one destination; the oldest are dropped past this.
MAX_QUEUED_EDUS = 5_000
TXN_TIMEOUT_SECONDS = 30.0
# Events fanned out to nobody between writes of the sender's position.
POSITION_WRITE_INTERVAL = 1_000


class TransactionClient(Protocol):
    async def put_json(
        self, destination: str, path: str, body: Any, *, timeout: float = 60.0
    ) -> Any: ...


class StoredEdus(Protocol):
    """EDUs kept in the database until delivered (device-list updates, to-device
    messages): read back per destination in order, deleted once a transaction carrying
    them was accepted."""

    async def destinations_pending(self) -> list[str]: ...

    async def pending(self, destination: str, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Up to `limit` EDUs and the token that acknowledges them."""
        ...

    async def delivered(self, destination: str, upto: int) -> None: ...


class SenderEvents(Protocol):
    async def get_events_with_meta(self, event_ids: Iterable[str]) -> Mapping[str, StoredEvent]: ...

    async def get_forward_extremities(self, room_id: str) -> list[str]: ...


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(eq=False)
class _Destination:
    name: str
    last_successful: int
    retry_interval_ms: int = 0
    retry_until_ms: int = 0
    failing_since_ms: int | None = None
    catching_up: bool = False
    # Set by fan-out when it records events for a destination that is catching up, so a
    # catch-up read racing with that fan-out is repeated instead of declaring it done.
    dirty: bool = False
    pending: list[tuple[int, Event]] = field(default_factory=list)
    edus: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_QUEUED_EDUS))
    # The stored-EDU source may hold EDUs for this destination.
    stored_edus: bool = False
    task: asyncio.Task[None] | None = None
    # Writing its row (a destination first met through an EDU); its retry state is only
    # written once this is done.
    row_written: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def backing_off(self) -> bool:
        return self.retry_interval_ms > 0 or self.failing_since_ms is not None


class FederationSender:
    def __init__(
        self,
        server_name: str,
        store: FederationSenderStore,
        events: SenderEvents,
        hosts: JoinedHosts,
        client: TransactionClient,
        events_position: Callable[[], int],
        *,
        backoff: BackoffPolicy | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._events = events
        self._hosts = hosts
        self._client = client
        self._events_position = events_position
        self._backoff = backoff or BackoffPolicy()
        self._clock = clock
        self._destinations: dict[str, _Destination] = {}
        self._position = 0
        self._stored_position = 0
        self._woken = asyncio.Event()
        self._fan_out_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._started = False
        # Transaction IDs only need to be unique per (origin, destination) over time: the
        # start time makes them unique across restarts, the counter within this run.
        self._txn_prefix = f"{clock():x}"
        self._txn_counter = itertools.count(1)
        self._stored_edus: list[StoredEdus] = []
        # Set with workers on the processes that do not send: what would start sending
        # here goes over the cluster bus to the one that does (starling/cluster).
        self.forward: Callable[[str, list[Any]], None] | None = None

    def use_stored_edus(self, source: StoredEdus, *, first: bool = False) -> None:
        """Carry `source`'s persisted EDUs (call before `start`). Sources fill each
        transaction in order; `first` puts this one before the others."""
        self._stored_edus.insert(0 if first else len(self._stored_edus), source)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        position = await self._store.get_position()
        if position is None:
            # First start: the past is not owed to anyone (rooms had no remote servers).
            position = self._events_position()
            await self._store.set_position(position)
        self._position = self._stored_position = position
        for row in await self._store.destinations_needing_attention():
            dest = self._from_row(row)
            dest.catching_up = row.newest_owed > row.last_successful
            self._destinations[row.destination] = dest
        for source in self._stored_edus:
            for name in await source.destinations_pending():
                self._destination(name).stored_edus = True
        self._started = True
        for dest in self._destinations.values():
            self._kick(dest)
        self._fan_out_task = asyncio.create_task(self._fan_out_loop(), name="federation-fan-out")
        self.wake()

    async def stop(self) -> None:
        self._stopping = True
        tasks: list[asyncio.Task[Any]] = []
        if self._fan_out_task is not None:
            tasks.append(self._fan_out_task)
        for dest in self._destinations.values():
            if dest.timer is not None:
                dest.timer.cancel()
            if dest.task is not None:
                tasks.append(dest.task)
        tasks.extend(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._started and self._position > self._stored_position:
            with contextlib.suppress(Exception):
                await self._store.set_position(self._position)

    def wake(self) -> None:
        """New events were persisted: fan them out (cheap; safe to call per event)."""
        self._woken.set()

    def on_new_event(self, event: Event, position: int) -> None:
        """A RoomEventService listener: only a wake-up, the events are read from the stream."""
        self.wake()

    def destination_is_up(self, server: str) -> None:
        """`server` just sent us a request: if we were backing off from it, stop and flush."""
        if self.forward is not None:
            self.forward("destination_is_up", [server])
            return
        dest = self._destinations.get(server)
        if dest is None or not dest.backing_off or self._stopping:
            return
        logger.info("federation: %s is back, catching it up", server)
        dest.retry_interval_ms = 0
        dest.retry_until_ms = 0
        dest.failing_since_ms = None
        if dest.timer is not None:
            dest.timer.cancel()
            dest.timer = None
        self._spawn(self._store.set_retry(server, 0, 0, None))
        self._kick(dest)

    async def list_destinations(
        self, offset: int, limit: int, name_contains: str | None = None
    ) -> tuple[list[DestinationRow], int]:
        """Admin: a page of destinations with their retry state, and the total."""
        return await self._store.list_destinations(offset, limit, name_contains)

    async def get_destination(self, destination: str) -> DestinationRow | None:
        return (await self._store.get_destinations([destination])).get(destination)

    async def reset_connection(self, destination: str) -> None:
        """Admin: forget the backoff for `destination` and try it now."""
        await self._store.set_retry(destination, 0, 0, None)
        self.destination_is_up(destination)

    def send_edu(self, destination: str, edu_type: str, content: dict[str, Any]) -> None:
        """Queue an EDU for `destination` (sent with the next transaction, in order)."""
        if self.forward is not None:
            self.forward("send_edu", [destination, edu_type, content])
            return
        if destination == self._server_name or self._stopping:
            return
        dest = self._destination(destination)
        dest.edus.append({"edu_type": edu_type, "content": content})
        self._kick(dest)

    def stored_edus_added(self, destination: str) -> None:
        """The stored-EDU source has new EDUs for `destination` (after its commit)."""
        if self.forward is not None:
            self.forward("stored_edus_added", [destination])
            return
        if destination == self._server_name or self._stopping:
            return
        dest = self._destination(destination)
        dest.stored_edus = True
        self._kick(dest)

    def _destination(self, name: str) -> _Destination:
        dest = self._destinations.get(name)
        if dest is None:
            dest = _Destination(name, last_successful=self._position)
            self._destinations[name] = dest
            dest.row_written = self._spawn(self._store.ensure_destination(name, self._position))
        return dest

    async def record_relayed(self, event_id: str, origin: str) -> None:
        """This server will send `event_id` (made by `origin`) to the room's other servers.
        Call before persisting the event."""
        await self._store.record_relayed(event_id, origin)

    @property
    def position(self) -> int:
        """How far the events stream has been fanned out to destination queues."""
        return self._position

    def is_backing_off(self, destination: str) -> bool:
        dest = self._destinations.get(destination)
        return dest is not None and dest.backing_off

    # --- fan-out --------------------------------------------------------------------------

    async def _fan_out_loop(self) -> None:
        while not self._stopping:
            await self._woken.wait()
            self._woken.clear()
            try:
                while await self._fan_out_batch():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("federation fan-out failed; retrying shortly")
                await asyncio.sleep(1.0)
                self._woken.set()

    async def _fan_out_batch(self) -> bool:
        """Fan out one batch of new events; False when there was nothing new."""
        upto = self._events_position()
        if upto <= self._position:
            return False
        rows = await self._store.stream_events(self._position, upto, FAN_OUT_BATCH)
        batch_end = upto if len(rows) < FAN_OUT_BATCH else rows[-1][1]
        to_send = await self._events_to_send(rows)
        hosts = await self._hosts.for_events([StoredEvent(ev, meta) for _, ev, meta, _ in to_send])
        per_dest: dict[str, list[tuple[int, Event]]] = {}
        for position, event, _, origin in to_send:
            for host in hosts.get(event.event_id, ()):
                if host != self._server_name and host != origin:
                    per_dest.setdefault(host, []).append((position, event))
        owed = {dest: {ev.room_id: pos for pos, ev in items} for dest, items in per_dest.items()}
        first_owed = {dest: items[0][0] for dest, items in per_dest.items()}
        if per_dest or batch_end - self._stored_position >= POSITION_WRITE_INTERVAL:
            await self._store.record_fan_out(owed, first_owed, batch_end)
            self._stored_position = batch_end
        # else: nothing owed to anyone (a room without remote servers). The position is
        # written later; re-reading these events after a crash owes nobody anything.
        self._position = batch_end
        unknown = [d for d in per_dest if d not in self._destinations]
        if unknown:
            rows_by_dest = await self._store.get_destinations(unknown)
            for name in unknown:
                if name in self._destinations:
                    continue
                row = rows_by_dest.get(name)
                dest = (
                    self._from_row(row)
                    if row is not None
                    else _Destination(name, last_successful=first_owed[name] - 1)
                )
                # Read what it is owed back from the store, this batch included.
                dest.catching_up = True
                self._destinations[name] = dest
        for name, items in per_dest.items():
            dest = self._destinations[name]
            if dest.catching_up or dest.backing_off:
                dest.catching_up = True
                dest.dirty = True
            else:
                dest.pending.extend(items)
            self._kick(dest)
        return True

    async def _events_to_send(
        self, rows: list[tuple[str, int]]
    ) -> list[tuple[int, Event, Any, str | None]]:
        """(position, event, meta, relaying-for origin) for the events this server sends:
        its own users' events and those it relays for another server."""
        if not rows:
            return []
        found = await self._events.get_events_with_meta([eid for eid, _ in rows])
        foreign = [
            eid
            for eid, _ in rows
            if eid in found and server_of(found[eid].event.sender) != self._server_name
        ]
        relayed = await self._store.relayed_origins(foreign)
        out: list[tuple[int, Event, Any, str | None]] = []
        for eid, position in rows:
            pair = found.get(eid)
            if pair is None:
                continue
            event, meta = pair
            origin = None
            if server_of(event.sender) != self._server_name:
                origin = relayed.get(eid)
                if origin is None:
                    continue  # another server's event: that server sends it
            out.append((position, event, meta, origin))
        return out

    # --- per destination ------------------------------------------------------------------

    def _from_row(self, row: DestinationRow) -> _Destination:
        return _Destination(
            row.destination,
            last_successful=row.last_successful,
            retry_interval_ms=row.retry_interval_ms,
            retry_until_ms=row.retry_until_ts,
            failing_since_ms=row.failing_since_ts,
        )

    def _kick(self, dest: _Destination) -> None:
        """Make sure a task is sending to `dest` if it has work and may be tried now."""
        DESTINATION_QUEUE.labels(dest.name).set(len(dest.pending) + len(dest.edus))
        if self._stopping or not self._started:
            return
        if dest.task is not None and not dest.task.done():
            return
        if not (dest.pending or dest.edus or dest.stored_edus or dest.catching_up):
            return
        wait_ms = dest.retry_until_ms - self._clock()
        if wait_ms > 0:
            if dest.timer is None:
                loop = asyncio.get_running_loop()
                dest.timer = loop.call_later(wait_ms / 1000, self._retry_due, dest)
            return
        dest.task = asyncio.create_task(self._run(dest), name=f"federation-send-{dest.name}")

    def _retry_due(self, dest: _Destination) -> None:
        dest.timer = None
        self._kick(dest)

    async def _run(self, dest: _Destination) -> None:
        try:
            if dest.row_written is not None:
                await dest.row_written
                dest.row_written = None
            while not self._stopping:
                if dest.catching_up:
                    outcome = await self._catch_up_step(dest)
                    if outcome == "failed":
                        return
                    if outcome == "done":
                        dest.catching_up = False
                    continue
                if not dest.pending and not dest.edus and not dest.stored_edus:
                    return
                batch = dest.pending[:MAX_PDUS_PER_TXN]
                if not await self._send_transaction(dest, [ev for _, ev in batch]):
                    return
                del dest.pending[: len(batch)]
                if batch:
                    await self._delivered(dest, batch[-1][0])
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("federation sender for %s failed", dest.name)
            await self._failed(dest)

    async def _catch_up_step(self, dest: _Destination) -> str:
        """Send what `dest` is owed, from the store. Returns "done", "more" or "failed"."""
        dest.dirty = False
        upto = self._position
        rooms = await self._store.rooms_owed(dest.name, dest.last_successful)
        if not rooms:
            if (dest.edus or dest.stored_edus) and not await self._send_transaction(dest, []):
                return "failed"
            return "more" if dest.dirty else "done"
        rows = await self._store.room_events_after(
            list(rooms), dest.last_successful, upto, REPLAY_LIMIT + 1
        )
        if len(rows) > REPLAY_LIMIT:
            events = await self._newest_owed_events(dest.name, rooms)
            logger.info(
                "federation: catching up %s with the newest events of %d rooms",
                dest.name,
                len(rooms),
            )
        else:
            candidates = await self._events_to_send(rows)
            hosts = await self._hosts.for_events(
                [StoredEvent(ev, meta) for _, ev, meta, _ in candidates]
            )
            events = [
                (pos, ev)
                for pos, ev, _, origin in candidates
                if dest.name in hosts.get(ev.event_id, ()) and origin != dest.name
            ]
        for start in range(0, len(events), MAX_PDUS_PER_TXN):
            chunk = events[start : start + MAX_PDUS_PER_TXN]
            if not await self._send_transaction(dest, [ev for _, ev in chunk]):
                return "failed"
            # Replayed events are in stream order: delivered up to the chunk's last one.
            if len(rows) <= REPLAY_LIMIT:
                await self._delivered(dest, chunk[-1][0])
        if (
            not events
            and (dest.edus or dest.stored_edus)
            and not await self._send_transaction(dest, [])
        ):
            return "failed"
        await self._delivered(dest, upto)
        return "more"

    async def _newest_owed_events(
        self, destination: str, rooms: Mapping[str, int]
    ) -> list[tuple[int, Event]]:
        """For a long outage: per room, the newest event owed to the destination and this
        server's own forward extremities; the receiver fetches the rest."""
        wanted: set[str] = set()
        for room_id in rooms:
            wanted.update(await self._events.get_forward_extremities(room_id))
        wanted.update(await self._store.event_ids_at_positions(list(rooms.values())))
        found = await self._events.get_events_with_meta(wanted)
        owed_positions = set(rooms.values())
        out: list[tuple[int, Event]] = []
        for event, meta in found.values():
            if meta.stream_ordering is None or meta.rejected_reason or meta.soft_failed:
                continue
            if (
                server_of(event.sender) != self._server_name
                and meta.stream_ordering not in owed_positions
            ):
                continue
            out.append((meta.stream_ordering, event))
        out.sort(key=lambda pe: (pe[1].depth, pe[0]))
        return out

    async def _send_transaction(self, dest: _Destination, pdus: list[Event]) -> bool:
        """One transaction with these PDUs and up to 100 queued EDUs. True when delivered
        (or refused for good), False when the destination is failing (now backing off)."""
        edus = list(itertools.islice(dest.edus, MAX_EDUS_PER_TXN))
        stored: list[dict[str, Any]] = []
        acks: list[tuple[StoredEdus, int]] = []  # what to acknowledge in each source
        room = MAX_EDUS_PER_TXN - len(edus)
        if dest.stored_edus and self._stored_edus and room > 0:
            # Cleared before reading: EDUs stored meanwhile set it again.
            dest.stored_edus = False
            for source in self._stored_edus:
                if room <= 0:
                    dest.stored_edus = True  # the later sources may have some
                    break
                got, upto = await source.pending(dest.name, room)
                if got:
                    stored.extend(got)
                    acks.append((source, upto))
                    room -= len(got)
                    if room <= 0:
                        dest.stored_edus = True  # there may be more
        if not pdus and not edus and not stored:
            return True
        delivered = False
        try:
            delivered = await self._send_transaction_body(dest, pdus, edus, stored)
        finally:
            if not delivered and stored:
                dest.stored_edus = True  # read them again next time
        if delivered:
            for source, upto in acks:
                await source.delivered(dest.name, upto)
        return delivered

    async def _send_transaction_body(
        self,
        dest: _Destination,
        pdus: list[Event],
        edus: list[dict[str, Any]],
        stored: list[dict[str, Any]],
    ) -> bool:
        txn_id = f"{self._txn_prefix}.{next(self._txn_counter)}"
        body = {
            "origin": self._server_name,
            "origin_server_ts": self._clock(),
            "pdus": [_pdu_json(ev) for ev in pdus],
            "edus": edus + stored,
        }
        started = time.monotonic()
        try:
            response = await self._client.put_json(
                dest.name,
                f"/_matrix/federation/v1/send/{quote(txn_id, safe='')}",
                body,
                timeout=TXN_TIMEOUT_SECONDS,
            )
        except FederationError as e:
            if e.status in RETRYABLE_STATUSES or e.status >= 500:
                logger.info("federation: %s answered %s; backing off", dest.name, e)
                await self._failed(dest)
                return False
            # It understood and refused this transaction: resending it would not help.
            logger.warning("federation: %s refused transaction %s: %s", dest.name, txn_id, e)
        except FederationUnreachable as e:
            logger.info("federation: %s unreachable (%s); backing off", dest.name, e.reason)
            await self._failed(dest)
            return False
        else:
            TRANSACTION_SECONDS.observe(time.monotonic() - started)
            _log_pdu_errors(dest.name, response)
        for _ in edus:
            dest.edus.popleft()
        DESTINATION_QUEUE.labels(dest.name).set(len(dest.pending) + len(dest.edus))
        if dest.backing_off:
            await self._recovered(dest)
        return True

    async def _delivered(self, dest: _Destination, position: int) -> None:
        if position > dest.last_successful:
            dest.last_successful = position
            await self._store.set_last_successful(dest.name, position)

    async def _recovered(self, dest: _Destination) -> None:
        dest.retry_interval_ms = 0
        dest.retry_until_ms = 0
        dest.failing_since_ms = None
        await self._store.set_retry(dest.name, 0, 0, None)

    async def _failed(self, dest: _Destination) -> None:
        TRANSACTION_FAILURES.labels(dest.name).inc()
        now = self._clock()
        if dest.failing_since_ms is None:
            dest.failing_since_ms = now
        interval = self._backoff.next_interval(dest.retry_interval_ms, dest.failing_since_ms, now)
        dest.retry_interval_ms = interval
        dest.retry_until_ms = now + self._backoff.jittered(interval)
        # What it was sent in memory is in the store too: read it back when it returns.
        dest.pending.clear()

        dest.catching_up = True
        await self._store.set_retry(
            dest.name, dest.retry_interval_ms, dest.retry_until_ms, dest.failing_since_ms
        )
        # Schedule the retry once this task has ended.
        asyncio.get_running_loop().call_soon(self._kick, dest)

    def _spawn(self, work: Awaitable[Any]) -> asyncio.Task[None]:
        async def run() -> None:
            try:
                await work
            except Exception:
                logger.exception("federation sender bookkeeping failed")

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


# Answers meaning "not now" rather than "never": 401 (the destination could not check our
# signature yet: it failed to fetch our keys, or our clocks disagree), 408 and 429. The
# transaction is kept and retried with backoff, like a 5xx.
RETRYABLE_STATUSES = frozenset({401, 408, 429})


def _pdu_json(event: Event) -> dict[str, Any]:
    """The PDU as sent: exactly as signed, without local `unsigned` data."""
    return {k: v for k, v in event.pdu.items() if k != "unsigned"}


def _log_pdu_errors(destination: str, response: Any) -> None:
    if not isinstance(response, dict) or not isinstance(response.get("pdus"), dict):
        return
    for event_id, result in response["pdus"].items():
        if isinstance(result, dict) and result.get("error"):
            logger.info("federation: %s did not accept %s: %s", destination, event_id, result)
