"""Which member events each client already has, for lazy-loading members in /sync.

With `lazy_load_members`, /sync sends a member event only when a timeline sender's
membership is not yet known to the client. What a client knows is tied to the token it
syncs from: the set recorded for `next_batch` is the set for the `since` it came from
plus what that response sent. Keeping it per token (the last few per device) means a
client that retries a `since` whose response it never received is sent those members
again, rather than missing them. After a restart, or for an unknown token, the set is
empty and members are resent: redundant, never missing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType

# room_id -> {member user ID -> member event ID the client has}
KnownMembers = Mapping[str, Mapping[str, str]]

_EMPTY: KnownMembers = MappingProxyType({})


class LazyMemberCache:
    def __init__(self, max_devices: int = 20_000, tokens_per_device: int = 3) -> None:
        self._devices: OrderedDict[tuple[str, str | None], OrderedDict[str, KnownMembers]] = (
            OrderedDict()
        )
        self._max_devices = max_devices
        self._tokens_per_device = tokens_per_device

    def known(self, user_id: str, device_id: str | None, token: str | None) -> KnownMembers:
        if token is None:
            return _EMPTY
        per_token = self._devices.get((user_id, device_id))
        if per_token is None:
            return _EMPTY
        return per_token.get(token, _EMPTY)

    def record(self, user_id: str, device_id: str | None, token: str, known: KnownMembers) -> None:
        key = (user_id, device_id)
        per_token = self._devices.get(key)
        if per_token is None:
            per_token = OrderedDict()
            self._devices[key] = per_token
        self._devices.move_to_end(key)
        per_token[token] = known
        per_token.move_to_end(token)
        while len(per_token) > self._tokens_per_device:
            per_token.popitem(last=False)
        while len(self._devices) > self._max_devices:
            self._devices.popitem(last=False)
