"""Wakes long-polling /sync requests when a stream they care about moves (DESIGN §5).

A waiter registers for one user and the rooms that user is in; `notify` wakes exactly the
waiters for the users or rooms named, in O(waiters woken), and a waiter costs nothing
while it waits (one future). Positions are only hints: a woken /sync re-reads the
streams, so a spurious wake-up is harmless and a missed one is impossible as long as
every writer notifies after its commit.

With workers (starling/cluster), `relay` tells every other process of each `notify`, and
they wake their own waiters: a /sync long-polling on one process wakes for a message sent
through another. The bus delivers a notification after the stream positions it follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable


class _Waiter:
    __slots__ = ("future", "rooms", "user_id")

    def __init__(self, user_id: str, rooms: frozenset[str]) -> None:
        self.user_id = user_id
        self.rooms = rooms
        # True: notified; False: timed out.
        self.future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()


def _time_out(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


class Notifier:
    def __init__(self) -> None:
        self._by_user: dict[str, set[_Waiter]] = {}
        self._by_room: dict[str, set[_Waiter]] = {}
        self._closed = False
        # Set with workers: (users, rooms) of each local notify, for the other processes.
        self.relay: Callable[[list[str], list[str]], None] | None = None

    def notify(self, *, users: Iterable[str] = (), rooms: Iterable[str] = ()) -> None:
        """Something changed for these users and/or in these rooms."""
        if self.relay is not None:
            users, rooms = list(users), list(rooms)
            self.relay(users, rooms)
        self.notify_here(users=users, rooms=rooms)

    def notify_here(self, *, users: Iterable[str] = (), rooms: Iterable[str] = ()) -> None:
        """`notify` for this process's waiters only (another process's notification)."""
        woken: set[_Waiter] = set()
        for user_id in users:
            woken |= self._by_user.get(user_id, set())
        for room_id in rooms:
            woken |= self._by_room.get(room_id, set())
        for waiter in woken:
            if not waiter.future.done():
                waiter.future.set_result(True)

    def notify_all(self) -> None:
        """Wake every waiter (e.g. on shutdown, or a change visible to everyone)."""
        for waiters in list(self._by_user.values()):
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_result(True)

    async def wait(self, user_id: str, rooms: Iterable[str], timeout: float) -> bool:
        """Wait until notified for the user or one of the rooms, or the timeout.
        Returns True if woken, False on timeout (or immediately when shutting down)."""
        if self._closed or timeout <= 0:
            return False
        waiter = _Waiter(user_id, frozenset(rooms))
        self._by_user.setdefault(user_id, set()).add(waiter)
        for room_id in waiter.rooms:
            self._by_room.setdefault(room_id, set()).add(waiter)
        # The waiter's own future, a timer resolving it False: a wake-up resumes the
        # waiting task in the next loop iteration (wait_for and shield took three).
        future = waiter.future
        timer = future.get_loop().call_later(timeout, _time_out, future)
        try:
            return await future
        finally:
            timer.cancel()
            self._remove(waiter)

    def _remove(self, waiter: _Waiter) -> None:
        users = self._by_user.get(waiter.user_id)
        if users is not None:
            users.discard(waiter)
            if not users:
                del self._by_user[waiter.user_id]
        for room_id in waiter.rooms:
            room = self._by_room.get(room_id)
            if room is not None:
                room.discard(waiter)
                if not room:
                    del self._by_room[room_id]

    def close(self) -> None:
        """Shutting down: wake everyone now and let no new waiter sleep."""
        self._closed = True
        self.notify_all()

    def is_waiting(self, user_id: str) -> bool:
        """Whether the user has a /sync long-poll waiting now."""
        return user_id in self._by_user

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._by_user.values())
