"""Server-side key backups (spec: client-server-api "Server-side key backups").

Keys may only be written to the current (latest) version. When a session already has a
key, the spec decides which one is kept: the verified one; if both or neither are, the one
with the lower first_message_index; if those are equal, the one with the lower
forwarded_count (a tie keeps the stored key). The etag moves whenever stored keys change.

`auth_data` and `session_data` are the algorithm's, opaque to the server: the spec's
schema gives objects (what m.megolm_backup.v1 uses), Synapse stores any JSON, and SyTest
sends strings, so an object or a string is stored as given and handed back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from starling.e2ee.validation import canonical
from starling.errors import MatrixError, bad_json, invalid_param, missing_param, not_found
from starling.protocol.numbers import parse_int
from starling.storage.key_backup import (
    BackupVersion,
    BackupVersionGone,
    BackupVersionSuperseded,
    KeyBackupStore,
)
from starling.storage.key_backup import RoomKey as RoomKey  # what parse_room_key makes

MAX_KEYS_PER_REQUEST = 10_000
MAX_ID_BYTES = 255
MAX_SESSION_DATA_BYTES = 64 * 1024


def parse_version(raw: str | None) -> int | None:
    """A version string as stored (a positive integer); None for anything else, which no
    backup can have."""
    return None if raw is None else parse_int(raw, minimum=1)


def _unknown_version(version: str | None) -> MatrixError:
    return not_found(f"Unknown backup version {version}")


def keeps_new(current: RoomKey | None, new: RoomKey) -> bool:
    """Whether ``new`` replaces ``current`` for the same session (spec's rules)."""
    if current is None:
        return True
    if new.is_verified != current.is_verified:
        return new.is_verified
    if new.first_message_index != current.first_message_index:
        return new.first_message_index < current.first_message_index
    return new.forwarded_count < current.forwarded_count


def _check_id(value: str, what: str) -> None:
    if not value or len(value.encode()) > MAX_ID_BYTES:
        raise invalid_param(f"{what} must be 1-{MAX_ID_BYTES} bytes")


def parse_room_key(room_id: str, session_id: str, data: Any) -> RoomKey:
    """KeyBackupData for one session, or M_BAD_JSON."""
    if not room_id.startswith("!"):
        raise invalid_param(f"{room_id!r} is not a room ID")
    _check_id(room_id, "Room ID")
    _check_id(session_id, "Session ID")
    if not isinstance(data, dict):
        raise bad_json("Key data must be an object")
    first = data.get("first_message_index")
    forwarded = data.get("forwarded_count")
    verified = data.get("is_verified")
    session_data = data.get("session_data")
    for name, value in (("first_message_index", first), ("forwarded_count", forwarded)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
            raise bad_json(f"'{name}' must be a non-negative integer")
    if not isinstance(verified, bool):
        raise bad_json("'is_verified' must be a boolean")
    if not isinstance(session_data, (dict, str)):
        raise bad_json("'session_data' must be an object or a string")
    encoded = canonical(session_data)
    if len(encoded) > MAX_SESSION_DATA_BYTES:
        raise MatrixError(413, "M_TOO_LARGE", "'session_data' is too large")
    assert isinstance(first, int) and isinstance(forwarded, int)
    return RoomKey(room_id, session_id, first, forwarded, verified, encoded)


def room_key_json(key: RoomKey) -> dict[str, Any]:
    return {
        "first_message_index": key.first_message_index,
        "forwarded_count": key.forwarded_count,
        "is_verified": key.is_verified,
        "session_data": orjson.loads(key.session_data),
    }


class KeyBackupService:
    def __init__(self, store: KeyBackupStore) -> None:
        self._store = store

    # -- versions

    @staticmethod
    def _algorithm_and_auth_data(body: Mapping[str, Any]) -> tuple[str, str]:
        algorithm = body.get("algorithm")
        if algorithm is None:
            raise missing_param("Missing 'algorithm'")
        if not isinstance(algorithm, str) or not 0 < len(algorithm) <= MAX_ID_BYTES:
            raise bad_json("'algorithm' must be a non-empty string")
        auth_data = body.get("auth_data")
        if auth_data is None:
            raise missing_param("Missing 'auth_data'")
        if not isinstance(auth_data, (dict, str)):
            raise bad_json("'auth_data' must be an object or a string")
        return algorithm, canonical(auth_data)

    async def create_version(self, user_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        algorithm, auth_data = self._algorithm_and_auth_data(body)
        version = await self._store.create_version(user_id, algorithm, auth_data)
        return {"version": str(version)}

    async def _version(self, user_id: str, raw: str | None) -> BackupVersion:
        if raw is None:
            found = await self._store.get_version(user_id)
            if found is None:
                raise not_found("No current backup version")
            return found
        number = parse_version(raw)
        found = None if number is None else await self._store.get_version(user_id, number)
        if found is None:
            raise _unknown_version(raw)
        return found

    async def get_version(self, user_id: str, raw: str | None) -> dict[str, Any]:
        found = await self._version(user_id, raw)
        return {
            "algorithm": found.algorithm,
            "auth_data": orjson.loads(found.auth_data),
            "count": await self._store.count_keys(user_id, found.version),
            "etag": str(found.etag),
            "version": str(found.version),
        }

    async def update_version(self, user_id: str, raw: str, body: Mapping[str, Any]) -> None:
        algorithm, auth_data = self._algorithm_and_auth_data(body)
        found = await self._version(user_id, raw)
        # Compared as text: the version is a string, but some clients send the number.
        if "version" in body and str(body["version"]) != raw:
            raise invalid_param("'version' in the body does not match the path")
        if algorithm != found.algorithm:
            raise invalid_param("'algorithm' does not match the backup's algorithm")
        if not await self._store.update_auth_data(user_id, found.version, auth_data):
            raise _unknown_version(raw)

    async def delete_version(self, user_id: str, raw: str) -> None:
        number = parse_version(raw)
        if number is None or not await self._store.delete_version(user_id, number):
            raise _unknown_version(raw)

    # -- keys

    async def _writable(self, user_id: str, raw: str | None) -> int:
        """The version keys may be written to: it must be the current one."""
        if raw is None:
            raise missing_param("Missing 'version' query parameter")
        number = parse_version(raw)
        current = await self._store.get_version(user_id)
        if current is None or number is None:
            raise _unknown_version(raw)
        if current.version == number:
            return number
        if await self._store.get_version(user_id, number) is None:
            raise _unknown_version(raw)
        raise MatrixError(
            403,
            "M_WRONG_ROOM_KEYS_VERSION",
            "Wrong backup version",
            current_version=str(current.version),
        )

    async def put_keys(
        self, user_id: str, raw_version: str | None, keys: list[RoomKey]
    ) -> dict[str, Any]:
        if len(keys) > MAX_KEYS_PER_REQUEST:
            raise invalid_param(f"At most {MAX_KEYS_PER_REQUEST} keys may be stored at once")
        version = await self._writable(user_id, raw_version)
        try:
            etag, count = await self._store.put_keys(user_id, version, keys, keeps_new)
        except BackupVersionGone:
            raise _unknown_version(raw_version) from None
        except BackupVersionSuperseded as e:
            raise MatrixError(
                403,
                "M_WRONG_ROOM_KEYS_VERSION",
                "Wrong backup version",
                current_version=str(e.current),
            ) from None
        return {"etag": str(etag), "count": count}

    async def get_keys(
        self,
        user_id: str,
        raw_version: str | None,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> dict[str, Any]:
        if raw_version is None:
            raise missing_param("Missing 'version' query parameter")
        found = await self._version(user_id, raw_version)
        keys = await self._store.get_keys(user_id, found.version, room_id, session_id)
        if session_id is not None:
            if not keys:
                raise not_found("No key stored for this session")
            return room_key_json(keys[0])
        rooms: dict[str, dict[str, Any]] = {}
        for key in keys:
            rooms.setdefault(key.room_id, {})[key.session_id] = room_key_json(key)
        if room_id is not None:
            return {"sessions": rooms.get(room_id, {})}
        return {"rooms": {r: {"sessions": s} for r, s in rooms.items()}}

    async def delete_keys(
        self,
        user_id: str,
        raw_version: str | None,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> dict[str, Any]:
        if raw_version is None:
            raise missing_param("Missing 'version' query parameter")
        found = await self._version(user_id, raw_version)
        try:
            etag, count = await self._store.delete_keys_of_version(
                user_id, found.version, room_id, session_id
            )
        except BackupVersionGone:
            raise _unknown_version(raw_version) from None
        return {"etag": str(etag), "count": count}
