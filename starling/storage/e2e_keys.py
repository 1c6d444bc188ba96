"""End-to-end encryption keys: device keys, one-time and fallback keys, cross-signing keys
and the signatures uploaded for them.

Narrow by design (DESIGN §4): the e2ee services get this and nothing else. Key objects are
kept as the canonical JSON the client signed (strings in, strings out); validating them is
the service's job. Every method over many users or devices is one round trip with array
parameters.

Claiming one-time keys must hand each key out once, also when claims race on PostgreSQL
(READ COMMITTED): the claim deletes the oldest key of each (user, device, algorithm) with
``DELETE ... RETURNING``, picking rows with ``FOR UPDATE SKIP LOCKED`` so concurrent
claimers take the next key instead of all waiting for (and then losing) the same one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from starling.storage.database import Database, Transaction
from starling.storage.events import LruCache

ClaimKey = tuple[str, str, str]  # (user_id, device_id, algorithm)
KeyCounts = tuple[dict[str, int], list[str]]
# Remembered counts, immutable and small (a device without keys shares _NO_KEYS).
_Remembered = tuple[tuple[tuple[str, int], ...], tuple[str, ...]]
_NO_KEYS: _Remembered = ((), ())

# Devices whose one-time key counts and unused fallback key types are remembered.
MAX_REMEMBERED_COUNTS = 10_000


@dataclass(frozen=True, slots=True)
class StoredDeviceKeys:
    user_id: str
    device_id: str
    key_json: str
    display_name: str | None


@dataclass(frozen=True, slots=True)
class StoredSignature:
    target_user_id: str
    target_key_id: str
    user_id: str
    key_id: str
    signature: str


def _claims_source(txn: Transaction, claims: Sequence[ClaimKey]) -> tuple[str, list[object]]:
    """A FROM item ``c(c_user, c_device, c_algorithm)`` over ``claims``, with its parameters.
    (The columns are not named like the tables' so an unqualified RETURNING is unambiguous.)

    PostgreSQL unnests three text arrays; SQLite reads one JSON array of triples."""
    if txn.dialect == "postgres":
        return (
            "unnest(?::text[], ?::text[], ?::text[]) AS c(c_user, c_device, c_algorithm)",
            [[c[0] for c in claims], [c[1] for c in claims], [c[2] for c in claims]],
        )
    return (
        "(SELECT json_extract(value, '$[0]') AS c_user, json_extract(value, '$[1]') AS"
        " c_device, json_extract(value, '$[2]') AS c_algorithm FROM json_each(?)) AS c",
        [json.dumps([list(c) for c in claims])],
    )


class E2eKeyStore:
    """`key_counts` (asked by every /sync) is remembered per device until one of this
    store's writes of that device's one-time or fallback keys commits. That holds while
    this process is the only writer: with workers `remember_counts` is turned off."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.remember_counts = True
        # Forgotten after each commit that changed the device's keys; the cache's
        # generation then keeps a read that started before it from being remembered.
        self._counts: LruCache[tuple[str, str], _Remembered] = LruCache(MAX_REMEMBERED_COUNTS)

    def _forget_counts_after_commit(
        self, txn: Transaction, devices: Iterable[tuple[str, str]]
    ) -> None:
        """Once `txn` commits, the (user, device) pairs' remembered counts are stale."""
        keys = list(devices)

        def forget() -> None:
            for key in keys:
                self._counts.pop(key)

        txn.call_after_commit(forget)

    # -- device keys

    async def get_device_keys(self, user_id: str, device_id: str) -> str | None:
        value = await self._db.fetch_val(
            "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
            user_id,
            device_id,
        )
        return None if value is None else str(value)

    async def get_device_keys_for_users(self, user_ids: Iterable[str]) -> list[StoredDeviceKeys]:
        """The keys of every existing device of these users that has uploaded keys."""
        ids = list(user_ids)
        if not ids:
            return []
        sql = self._db.sql
        rows = await self._db.fetch_all(
            "SELECT k.user_id, k.device_id, k.key_json, d.display_name"
            " FROM e2e_device_keys AS k JOIN devices AS d"
            " ON d.user_id = k.user_id AND d.device_id = k.device_id"
            f" WHERE {sql.in_array('k.user_id')}",
            sql.array(ids),
        )
        return [StoredDeviceKeys(r[0], r[1], r[2], r[3]) for r in rows]

    @staticmethod
    async def device_keys_for_update(txn: Transaction, user_id: str, device_id: str) -> str | None:
        """The device's keys (JSON) as stored, its row locked until the transaction ends."""
        value = await txn.fetch_val(
            "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?"
            f"{txn.sql.for_update}",
            user_id,
            device_id,
        )
        return None if value is None else str(value)

    @staticmethod
    async def set_device_keys(
        txn: Transaction, user_id: str, device_id: str, key_json: str, now_ms: int
    ) -> None:
        await txn.execute(
            "INSERT INTO e2e_device_keys (user_id, device_id, key_json, added_ts)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, device_id)"
            " DO UPDATE SET key_json = excluded.key_json, added_ts = excluded.added_ts",
            user_id,
            device_id,
            key_json,
            now_ms,
        )

    # -- one-time keys

    async def add_one_time_keys(
        self,
        txn: Transaction,
        user_id: str,
        device_id: str,
        keys: Sequence[tuple[str, str, str]],
        now_ms: int,
    ) -> dict[tuple[str, str], str]:
        """Insert ``(algorithm, key_id, key_json)`` rows, keeping any that exist; return the
        stored JSON of every given key ID afterwards (ours, or the one already there), so
        the caller can refuse a reused key ID by rolling back."""
        if not keys:
            return {}
        self._forget_counts_after_commit(txn, [(user_id, device_id)])
        await txn.executemany(
            "INSERT INTO e2e_one_time_keys"
            " (user_id, device_id, algorithm, key_id, key_json, added_ts)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id, device_id, algorithm, key_id) DO NOTHING",
            [(user_id, device_id, alg, key_id, js, now_ms) for alg, key_id, js in keys],
        )
        rows = await txn.fetch_all(
            "SELECT algorithm, key_id, key_json FROM e2e_one_time_keys"
            f" WHERE user_id = ? AND device_id = ? AND {txn.sql.in_array('key_id')}",
            user_id,
            device_id,
            txn.sql.array(sorted({k[1] for k in keys})),
        )
        return {(r[0], r[1]): r[2] for r in rows}

    @staticmethod
    async def count_one_time_keys_in(
        txn: Transaction, user_id: str, device_id: str
    ) -> dict[str, int]:
        rows = await txn.fetch_all(
            "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys"
            " WHERE user_id = ? AND device_id = ? GROUP BY algorithm",
            user_id,
            device_id,
        )
        return {r[0]: int(r[1]) for r in rows}

    async def key_counts(self, user_id: str, device_id: str) -> KeyCounts:
        """`count_one_time_keys` and `unused_fallback_key_types` in one query (every
        /sync asks for both), or from memory when no write changed them since (the
        caller gets its own copies)."""
        key = (user_id, device_id)
        remembered = self._counts.get(key) if self.remember_counts else None
        if remembered is not None:
            return dict(remembered[0]), list(remembered[1])
        generation = self._counts.generation
        rows = await self._db.fetch_all(
            "SELECT 'o', algorithm, COUNT(*) FROM e2e_one_time_keys"
            " WHERE user_id = ? AND device_id = ? GROUP BY algorithm"
            " UNION ALL SELECT 'f', algorithm, 0 FROM e2e_fallback_keys"
            " WHERE user_id = ? AND device_id = ? AND NOT used",
            user_id,
            device_id,
            user_id,
            device_id,
        )
        counts = {r[1]: int(r[2]) for r in rows if r[0] == "o"}
        unused = sorted(r[1] for r in rows if r[0] == "f")
        if self.remember_counts:
            value = (tuple(counts.items()), tuple(unused))
            self._counts.fill(key, value if value != _NO_KEYS else _NO_KEYS, generation)
        return counts, unused

    async def count_one_time_keys(self, user_id: str, device_id: str) -> dict[str, int]:
        rows = await self._db.fetch_all(
            "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys"
            " WHERE user_id = ? AND device_id = ? GROUP BY algorithm",
            user_id,
            device_id,
        )
        return {r[0]: int(r[1]) for r in rows}

    async def claim_one_time_keys(
        self, claims: Sequence[ClaimKey]
    ) -> dict[ClaimKey, tuple[str, str]]:
        """Take (delete) the oldest one-time key for each claim, in one statement; return
        ``claim -> (key_id, key_json)`` for the claims that got one."""
        if not claims:
            return {}
        async with self._db.transaction() as txn:
            self._forget_counts_after_commit(txn, ((u, d) for u, d, _ in claims))
            source, params = _claims_source(txn, claims)
            if txn.dialect == "postgres":
                pick = (
                    f"SELECT picked.id FROM {source} CROSS JOIN LATERAL ("
                    " SELECT k.id FROM e2e_one_time_keys AS k WHERE k.user_id = c.c_user"
                    " AND k.device_id = c.c_device AND k.algorithm = c.c_algorithm"
                    " ORDER BY k.id LIMIT 1 FOR UPDATE SKIP LOCKED) AS picked"
                )
            else:
                # One writer: nobody can take a key between the pick and the delete.
                pick = (
                    "SELECT (SELECT k.id FROM e2e_one_time_keys AS k"
                    " WHERE k.user_id = c.c_user AND k.device_id = c.c_device"
                    f" AND k.algorithm = c.c_algorithm ORDER BY k.id LIMIT 1) FROM {source}"
                )
            rows = await txn.fetch_all(
                f"DELETE FROM e2e_one_time_keys WHERE id IN ({pick})"
                " RETURNING user_id, device_id, algorithm, key_id, key_json",
                *params,
            )
        return {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}

    async def has_one_time_keys(self, claims: Sequence[ClaimKey]) -> set[ClaimKey]:
        """Which of these claims still have an unclaimed key (locked ones included)."""
        if not claims:
            return set()
        async with self._db.transaction() as txn:
            source, params = _claims_source(txn, claims)
            rows = await txn.fetch_all(
                f"SELECT c.c_user, c.c_device, c.c_algorithm FROM {source} WHERE EXISTS ("
                " SELECT 1 FROM e2e_one_time_keys AS k WHERE k.user_id = c.c_user"
                " AND k.device_id = c.c_device AND k.algorithm = c.c_algorithm)",
                *params,
            )
        return {(r[0], r[1], r[2]) for r in rows}

    # -- fallback keys

    async def set_fallback_keys(
        self,
        txn: Transaction,
        user_id: str,
        device_id: str,
        keys: Sequence[tuple[str, str, str]],
    ) -> None:
        """Replace the fallback key of each algorithm given. Re-uploading the same key
        keeps its used flag; a new key starts unused."""
        if not keys:
            return
        self._forget_counts_after_commit(txn, [(user_id, device_id)])
        await txn.executemany(
            "INSERT INTO e2e_fallback_keys"
            " (user_id, device_id, algorithm, key_id, key_json, used)"
            " VALUES (?, ?, ?, ?, ?, FALSE)"
            " ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET"
            " used = (e2e_fallback_keys.used AND e2e_fallback_keys.key_id = excluded.key_id"
            " AND e2e_fallback_keys.key_json = excluded.key_json),"
            " key_id = excluded.key_id, key_json = excluded.key_json",
            [(user_id, device_id, alg, key_id, js) for alg, key_id, js in keys],
        )

    async def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        rows = await self._db.fetch_all(
            "SELECT algorithm FROM e2e_fallback_keys"
            " WHERE user_id = ? AND device_id = ? AND NOT used ORDER BY algorithm",
            user_id,
            device_id,
        )
        return [r[0] for r in rows]

    async def claim_fallback_keys(
        self, claims: Sequence[ClaimKey]
    ) -> dict[ClaimKey, tuple[str, str]]:
        """Mark the fallback key of each claim used and return it (it stays available)."""
        if not claims:
            return {}
        async with self._db.transaction() as txn:
            self._forget_counts_after_commit(txn, ((u, d) for u, d, _ in claims))
            source, params = _claims_source(txn, claims)
            rows = await txn.fetch_all(
                f"UPDATE e2e_fallback_keys SET used = TRUE FROM {source}"
                " WHERE e2e_fallback_keys.user_id = c.c_user"
                " AND e2e_fallback_keys.device_id = c.c_device"
                " AND e2e_fallback_keys.algorithm = c.c_algorithm"
                " RETURNING user_id, device_id, algorithm, key_id, key_json",
                *params,
            )
        return {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}

    # -- cross-signing keys

    async def get_cross_signing_keys(
        self, user_ids: Iterable[str], key_types: Sequence[str]
    ) -> dict[str, dict[str, str]]:
        """``user_id -> key_type -> key_json`` for the users that have such keys."""
        ids = list(user_ids)
        if not ids or not key_types:
            return {}
        sql = self._db.sql
        rows = await self._db.fetch_all(
            "SELECT user_id, key_type, key_json FROM e2e_cross_signing_keys"
            f" WHERE {sql.in_array('user_id')} AND {sql.in_array('key_type')}",
            sql.array(ids),
            sql.array(list(key_types)),
        )
        out: dict[str, dict[str, str]] = {}
        for r in rows:
            out.setdefault(r[0], {})[r[1]] = r[2]
        return out

    @staticmethod
    async def set_cross_signing_keys(
        txn: Transaction, user_id: str, keys: Mapping[str, tuple[str, str]], now_ms: int
    ) -> None:
        """Store ``key_type -> (public_key, key_json)``, replacing the user's keys of those
        types."""
        if not keys:
            return
        await txn.executemany(
            "INSERT INTO e2e_cross_signing_keys"
            " (user_id, key_type, public_key, key_json, added_ts) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id, key_type) DO UPDATE SET public_key = excluded.public_key,"
            " key_json = excluded.key_json, added_ts = excluded.added_ts",
            [(user_id, t, pk, js, now_ms) for t, (pk, js) in keys.items()],
        )

    # -- signatures

    async def get_signatures(self, target_user_ids: Iterable[str]) -> list[StoredSignature]:
        """Every stored signature on keys of these users (the caller filters by target
        key and by who may see them)."""
        ids = list(target_user_ids)
        if not ids:
            return []
        sql = self._db.sql
        rows = await self._db.fetch_all(
            "SELECT target_user_id, target_key_id, user_id, key_id, signature"
            f" FROM e2e_cross_signing_signatures WHERE {sql.in_array('target_user_id')}",
            sql.array(ids),
        )
        return [StoredSignature(*r) for r in rows]

    @staticmethod
    async def store_signatures(txn: Transaction, signatures: Sequence[StoredSignature]) -> None:
        if not signatures:
            return
        await txn.executemany(
            "INSERT INTO e2e_cross_signing_signatures"
            " (target_user_id, target_key_id, user_id, key_id, signature)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (target_user_id, target_key_id, user_id,"
            " key_id) DO UPDATE SET signature = excluded.signature",
            [
                (s.target_user_id, s.target_key_id, s.user_id, s.key_id, s.signature)
                for s in signatures
            ],
        )

    # -- devices going away

    async def delete_device_keys(
        self, txn: Transaction, user_id: str, device_ids: Sequence[str]
    ) -> None:
        """Remove everything stored for these devices' keys."""
        if not device_ids:
            return
        self._forget_counts_after_commit(txn, ((user_id, d) for d in device_ids))
        sql = txn.sql
        for table, column in (
            ("e2e_device_keys", "device_id"),
            ("e2e_one_time_keys", "device_id"),
            ("e2e_fallback_keys", "device_id"),
        ):
            await txn.execute(
                f"DELETE FROM {table} WHERE user_id = ? AND {sql.in_array(column)}",
                user_id,
                sql.array(device_ids),
            )
        await txn.execute(
            "DELETE FROM e2e_cross_signing_signatures"
            f" WHERE target_user_id = ? AND {sql.in_array('target_key_id')}",
            user_id,
            sql.array(device_ids),
        )
