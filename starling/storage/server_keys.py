"""Other servers' signing keys and the key responses they came in (the keyring's store).

Keys accumulate: a key once seen stays (old events stay verifiable); the validity of a
key only grows. For the notary, the latest response listing each key (per server it came
from) is kept: a newer response that no longer lists a key does not replace its answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from starling.storage.database import Database


@dataclass(frozen=True, slots=True)
class StoredKey:
    key_id: str
    verify_key: str  # unpadded base64
    valid_until_ts: int


@dataclass(frozen=True, slots=True)
class StoredResponse:
    from_server: str
    valid_until_ts: int
    fetched_ts: int
    response_json: str


class ServerKeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_keys(self, server_name: str) -> list[StoredKey]:
        rows = await self._db.fetch_all(
            "SELECT key_id, verify_key, valid_until_ts FROM server_signing_keys"
            " WHERE server_name = ?",
            server_name,
        )
        return [StoredKey(r[0], r[1], r[2]) for r in rows]

    async def store_keys(
        self,
        server_name: str,
        keys: Iterable[StoredKey],
        fetched_ts: int,
        response: StoredResponse | None = None,
    ) -> None:
        """Upsert `keys` (validity = the greater of old and new) and the response, in one
        transaction."""
        keys = list(keys)
        rows = [(server_name, k.key_id, k.verify_key, k.valid_until_ts, fetched_ts) for k in keys]
        async with self._db.transaction() as txn:
            if rows:
                # The same key: its validity is extended, never shortened. A different
                # key under a known ID (a server reinstalled with the same key ID)
                # replaces it: the latest authenticated answer wins.
                await txn.executemany(
                    "INSERT INTO server_signing_keys"
                    " (server_name, key_id, verify_key, valid_until_ts, fetched_ts)"
                    " VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (server_name, key_id) DO UPDATE SET"
                    " valid_until_ts = CASE"
                    "  WHEN server_signing_keys.verify_key <> excluded.verify_key"
                    "   OR excluded.valid_until_ts > server_signing_keys.valid_until_ts"
                    "  THEN excluded.valid_until_ts"
                    "  ELSE server_signing_keys.valid_until_ts END,"
                    " verify_key = excluded.verify_key,"
                    " fetched_ts = excluded.fetched_ts",
                    rows,
                )
            if response is not None and rows:
                # The response under each key it lists (current and old ones).
                await txn.executemany(
                    "INSERT INTO server_key_responses_per_key"
                    " (server_name, key_id, from_server, valid_until_ts, fetched_ts,"
                    " response_json) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (server_name, key_id, from_server) DO UPDATE SET"
                    " valid_until_ts = excluded.valid_until_ts,"
                    " fetched_ts = excluded.fetched_ts,"
                    " response_json = excluded.response_json",
                    [
                        (
                            server_name,
                            k.key_id,
                            response.from_server,
                            response.valid_until_ts,
                            response.fetched_ts,
                            response.response_json,
                        )
                        for k in keys
                    ],
                )

    async def get_responses(self, server_name: str) -> list[tuple[str, StoredResponse]]:
        """(key ID, the latest response listing it) for each key of `server_name` and
        each server it came from, the longest valid first."""
        rows = await self._db.fetch_all(
            "SELECT key_id, from_server, valid_until_ts, fetched_ts, response_json"
            " FROM server_key_responses_per_key WHERE server_name = ?"
            " ORDER BY valid_until_ts DESC, fetched_ts DESC, key_id",
            server_name,
        )
        return [(r[0], StoredResponse(r[1], r[2], r[3], r[4])) for r in rows]
