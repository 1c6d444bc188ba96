"""The keyring: other servers' signing keys, fetched, checked, cached, and used to verify
signatures (spec: Server-Server API > Retrieving server keys; Validating hashes and
signatures on received events).

A key is fetched from its server directly (`GET /_matrix/key/v2/server`) and, failing
that, from each of `trusted_key_servers` (`POST /_matrix/key/v2/query`). An answer is
accepted only if it names the server, is signed by the server with a key it lists (and,
from a notary, also by the notary), and parses; its keys are cached in memory and in the
database with their validity: a current key until the lesser of `valid_until_ts` and
7 days after fetching (the spec's cap), an old key until its `expired_ts`.

A signature is checked with the key valid at the time that matters: the event's
`origin_server_ts` for events (any time at all for room versions 1-4, whose rules ignore
validity), now for requests. Fetches for one server are coalesced, and a server is not
asked again within `REFETCH_INTERVAL` when it did not have the key we wanted.

`KeyServer` builds this server's own `/_matrix/key/v2/server` answer, and answers notary
queries from the cache.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from starling.federation.client import FederationClient
from starling.federation.errors import (
    FederationError,
    FederationUnreachable,
    SignatureVerifyError,
)
from starling.locks import SharedTasks
from starling.protocol.event import Event
from starling.protocol.event_signing import (
    EventSigningError,
    required_signing_servers,
    verify_event_signature,
)
from starling.protocol.identifiers import is_valid_server_name
from starling.protocol.signing import (
    ED25519,
    KeyFormatError,
    SignatureError,
    SigningKey,
    VerifyKey,
    build_server_keys,
    decode_verify_key_base64,
    sign_json,
    signature_key_ids,
    verify_signed_json,
)
from starling.storage.server_keys import ServerKeyStore, StoredKey, StoredResponse

logger = logging.getLogger(__name__)

# The spec: use the lesser of valid_until_ts and 7 days into the future.
MAX_KEY_VALIDITY_MS = 7 * 24 * 3600 * 1000
# Do not ask a server for keys again sooner than this after it failed to give the one
# we wanted (limits the load a sender of bogus key IDs can make us cause).
REFETCH_INTERVAL = 10.0
KEY_FETCH_TIMEOUT = 15.0
# Servers whose keys (and last fetch time) are held in memory; past this the oldest are
# forgotten (they are still in the database).
MEMORY_CACHE_SERVERS = 10_000
KEY_QUERY_PATH = "/_matrix/key/v2/query"
KEY_SERVER_PATH = "/_matrix/key/v2/server"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class CachedKey:
    verify_key: VerifyKey
    valid_until_ts: int


@dataclass(frozen=True, slots=True)
class Notary:
    server_name: str
    verify_keys: dict[str, VerifyKey] | None  # None: the notary's own published keys


class KeyResponseError(ValueError):
    """A key response that does not check out."""


def parse_key_response(
    response: Any, server_name: str, fetched_ts: int
) -> tuple[list[StoredKey], int]:
    """The keys of a `/_matrix/key/v2/server` answer for `server_name`, with the validity
    to cache them with, and the answer's own (capped) valid_until_ts. KeyResponseError
    unless it is well-formed and signed by `server_name` with a key it lists as current,
    every such signature verifying."""
    if not isinstance(response, dict):
        raise KeyResponseError("key response is not a JSON object")
    if response.get("server_name") != server_name:
        raise KeyResponseError(f"key response is for {response.get('server_name')!r}")
    valid_until = response.get("valid_until_ts")
    if not isinstance(valid_until, int) or isinstance(valid_until, bool):
        raise KeyResponseError("key response lacks an integer valid_until_ts")
    verify_keys = response.get("verify_keys")
    if not isinstance(verify_keys, dict):
        raise KeyResponseError("key response lacks verify_keys")
    old_keys = response.get("old_verify_keys", {})
    if not isinstance(old_keys, dict):
        raise KeyResponseError("old_verify_keys is not an object")
    capped = min(valid_until, fetched_ts + MAX_KEY_VALIDITY_MS)
    current: dict[str, VerifyKey] = {}
    for key_id, entry in verify_keys.items():
        if not isinstance(key_id, str) or not key_id.startswith(ED25519 + ":"):
            continue  # an algorithm we do not know
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise KeyResponseError(f"verify_keys.{key_id} lacks a key")
        try:
            current[key_id] = decode_verify_key_base64(key_id, entry["key"])
        except KeyFormatError as e:
            raise KeyResponseError(f"verify_keys.{key_id}: {e}") from None
    signed_with = [k for k in signature_key_ids(response, server_name) if k in current]
    if not signed_with:
        raise KeyResponseError(f"key response is not signed by {server_name} with a listed key")
    for key_id in signed_with:
        try:
            verify_signed_json(response, server_name, key_id, current[key_id])
        except SignatureError as e:
            raise KeyResponseError(str(e)) from None
    keys = [StoredKey(k, v.base64, capped) for k, v in current.items()]
    for key_id, entry in old_keys.items():
        if not isinstance(key_id, str) or not key_id.startswith(ED25519 + ":"):
            continue
        if key_id in current or not isinstance(entry, dict):
            continue
        expired = entry.get("expired_ts")
        key_b64 = entry.get("key")
        if not isinstance(expired, int) or not isinstance(key_b64, str):
            continue
        try:
            old = decode_verify_key_base64(key_id, key_b64)
        except KeyFormatError:
            continue
        keys.append(StoredKey(key_id, old.base64, expired))
    return keys, capped


class Keyring:
    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        store: ServerKeyStore,
        client: FederationClient,
        *,
        notaries: Iterable[Notary] = (),
        old_keys: Mapping[str, tuple[VerifyKey, int]] | None = None,
        clock_ms: Callable[[], int] = now_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._client = client
        self._notaries = list(notaries)
        self._clock_ms = clock_ms
        self._monotonic = monotonic
        # Our own keys: the current one forever, old ones until they expired.
        self._own: dict[str, CachedKey] = {
            signing_key.key_id: CachedKey(signing_key.verify_key, 2**62)
        }
        for key_id, (key, expired_ts) in (old_keys or {}).items():
            self._own.setdefault(key_id, CachedKey(key, expired_ts))
        self._cache: dict[str, dict[str, CachedKey]] = {}
        # Bumped by every stored key response: a load from the store that a response
        # overtook must not put its stale keys into the cache.
        self._generation: dict[str, int] = {}
        self._in_flight: SharedTasks[str, None] = SharedTasks()
        self._last_fetch: dict[str, float] = {}
        # Per process, by design: the notary's fetches in flight, one per server (bounded
        # by the servers being asked about at once). Two workers asked about one server at
        # once each fetch its keys once; the stored keys then serve both.
        self._notary_in_flight: SharedTasks[str, None] = SharedTasks()

    def now_ms(self) -> int:
        return self._clock_ms()

    # --- the contract --------------------------------------------------------------------

    async def verify_json_for_server(
        self, server_name: str, obj: dict[str, Any], *, at_ts: int
    ) -> None:
        """SignatureVerifyError unless `obj` carries a signature by `server_name` that
        verifies with one of its keys valid at `at_ts` (ms)."""
        key_ids = signature_key_ids(obj, server_name)
        if not key_ids:
            raise SignatureVerifyError(f"not signed by {server_name}")
        errors: list[str] = []
        for key_id in key_ids:
            try:
                key = await self.get_verify_key(server_name, key_id, at_ts)
                verify_signed_json(obj, server_name, key_id, key, strict=False)
                return
            except (SignatureError, SignatureVerifyError) as e:
                errors.append(str(e))
        raise SignatureVerifyError("; ".join(errors))

    async def verify_event_signatures(self, event: Event) -> None:
        """SignatureVerifyError unless `event` carries a valid signature of every server
        its room version requires, each with a key valid at its origin_server_ts."""
        rules = event.room_version
        try:
            servers = required_signing_servers(event.pdu, rules)
        except EventSigningError as e:
            raise SignatureVerifyError(str(e)) from None
        at_ts = event.origin_server_ts if rules.enforce_key_validity else 0
        for server in sorted(servers):
            key_ids = signature_key_ids(event.pdu, server)
            if not key_ids:
                raise SignatureVerifyError(f"event {event.event_id} is not signed by {server}")
            errors: list[str] = []
            for key_id in key_ids:
                try:
                    key = await self.get_verify_key(server, key_id, at_ts)
                    verify_event_signature(event.pdu, server, key_id, key, rules)
                    break
                except (SignatureError, SignatureVerifyError) as e:
                    errors.append(str(e))
            else:
                raise SignatureVerifyError(
                    f"event {event.event_id}: signature of {server}: {'; '.join(errors)}"
                )

    # --- keys ----------------------------------------------------------------------------

    async def get_verify_key(self, server_name: str, key_id: str, at_ts: int) -> VerifyKey:
        """`server_name`'s key `key_id`, if it is valid at `at_ts` (ms; 0: ever valid),
        fetching it when needed. SignatureVerifyError when there is no such key."""
        if server_name == self._server_name:
            own = self._own.get(key_id)
            if own is not None and own.valid_until_ts >= at_ts:
                return own.verify_key
            raise SignatureVerifyError(f"{key_id} is not a key of this server valid then")
        found = await self._cached(server_name, key_id, at_ts)
        if found is not None:
            return found
        await self._fetch(server_name, key_id, at_ts)
        found = await self._cached(server_name, key_id, at_ts)
        if found is None:
            raise SignatureVerifyError(
                f"no key {key_id} of {server_name} valid at {at_ts} could be found"
            )
        return found

    async def _cached(self, server_name: str, key_id: str, at_ts: int) -> VerifyKey | None:
        keys = self._cache.get(server_name)
        if keys is None:
            generation = self._generation.get(server_name, 0)
            keys = {
                k.key_id: CachedKey(VerifyKey.from_base64(k.verify_key), k.valid_until_ts)
                for k in await self._store.get_keys(server_name)
            }
            if self._generation.get(server_name, 0) == generation:
                self._cache[server_name] = keys
                _trim(self._cache)
        cached = keys.get(key_id)
        if cached is not None and cached.valid_until_ts >= at_ts:
            return cached.verify_key
        return None

    async def _fetch(self, server_name: str, key_id: str, at_ts: int) -> None:
        if server_name not in self._in_flight:
            last = self._last_fetch.get(server_name)
            if last is not None and self._monotonic() - last < REFETCH_INTERVAL:
                return
            self._last_fetch[server_name] = self._monotonic()
            _trim(self._last_fetch)
        await self._in_flight.run(server_name, lambda: self._fetch_keys(server_name, key_id, at_ts))

    async def _fetch_keys(self, server_name: str, key_id: str, at_ts: int) -> None:
        """From the server itself, then from each notary until the key is known."""
        try:
            response = await self._client.get_json(
                server_name, KEY_SERVER_PATH, timeout=KEY_FETCH_TIMEOUT
            )
            await self.accept_response(server_name, response, from_server=server_name)
        except (FederationError, FederationUnreachable, KeyResponseError) as e:
            logger.info("fetching keys from %s directly failed: %s", server_name, e)
        if await self._cached(server_name, key_id, at_ts) is not None:
            return
        for notary in self._notaries:
            if notary.server_name == server_name:
                continue
            try:
                await self._query_notary(notary, server_name, key_id, at_ts)
            except (FederationError, FederationUnreachable, KeyResponseError) as e:
                logger.info("fetching keys of %s from %s failed: %s", server_name, notary, e)
                continue
            if await self._cached(server_name, key_id, at_ts) is not None:
                return

    async def _query_notary(
        self, notary: Notary, server_name: str, key_id: str, at_ts: int
    ) -> None:
        body = {"server_keys": {server_name: {key_id: {"minimum_valid_until_ts": at_ts}}}}
        answer = await self._client.post_json(
            notary.server_name, KEY_QUERY_PATH, body, timeout=KEY_FETCH_TIMEOUT
        )
        responses = answer.get("server_keys") if isinstance(answer, dict) else None
        if not isinstance(responses, list):
            raise KeyResponseError(f"notary {notary.server_name} answered without server_keys")
        for response in responses:
            if not isinstance(response, dict) or response.get("server_name") != server_name:
                continue
            await self._check_notary_signature(notary, response)
            await self.accept_response(server_name, response, from_server=notary.server_name)

    async def _check_notary_signature(self, notary: Notary, response: dict[str, Any]) -> None:
        if notary.verify_keys is not None:
            for key_id, key in notary.verify_keys.items():
                try:
                    verify_signed_json(response, notary.server_name, key_id, key)
                    return
                except SignatureError:
                    continue
            raise KeyResponseError(f"response not signed by notary {notary.server_name}")
        try:
            await self.verify_json_for_server(notary.server_name, response, at_ts=self._clock_ms())
        except SignatureVerifyError as e:
            raise KeyResponseError(f"notary {notary.server_name}: {e}") from None

    async def accept_response(
        self, server_name: str, response: Any, *, from_server: str
    ) -> list[StoredKey]:
        """Check a key response for `server_name` and cache its keys (memory and
        database). KeyResponseError if it does not check out."""
        fetched = self._clock_ms()
        keys, valid_until = parse_key_response(response, server_name, fetched)
        stored = StoredResponse(from_server, valid_until, fetched, orjson.dumps(response).decode())
        await self._store.store_keys(server_name, keys, fetched, stored)
        self._cache.pop(server_name, None)  # reloaded (merged with older keys) on next use
        self._generation[server_name] = self._generation.get(server_name, 0) + 1
        _trim(self._generation)
        return keys

    # --- notary --------------------------------------------------------------------------

    async def responses_for(
        self, server_name: str, minimum_valid_until_ts: int, key_ids: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """Key responses of `server_name` for a notary answer: for each key asked for (or
        the latest response when none is named), the latest response listing it. Asked
        of the server first when none of them is valid until `minimum_valid_until_ts`
        (one fetch per server at a time); what was last received when it cannot be
        reached or answers nothing better, even expired (old signatures stay checkable)."""
        if not is_valid_server_name(server_name):
            return []
        wanted = set(key_ids)

        def usable(stored: list[tuple[str, StoredResponse]]) -> list[StoredResponse]:
            return [r for k, r in stored if not wanted or k in wanted]

        stored = await self._store.get_responses(server_name)
        if not any(r.valid_until_ts >= minimum_valid_until_ts for r in usable(stored)):
            await self._notary_fetch(server_name)
            stored = await self._store.get_responses(server_name)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for r in usable(stored):  # the longest valid first
            if r.response_json in seen:
                continue
            seen.add(r.response_json)
            try:
                value = orjson.loads(r.response_json)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out if wanted else out[:1]

    async def _notary_fetch(self, server_name: str) -> None:
        """GET the server's keys for the notary; concurrent askers share one request."""

        async def fetch() -> None:
            try:
                response = await self._client.get_json(
                    server_name, KEY_SERVER_PATH, timeout=KEY_FETCH_TIMEOUT
                )
                await self.accept_response(server_name, response, from_server=server_name)
            except (FederationError, FederationUnreachable, KeyResponseError) as e:
                logger.info("notary: fetching keys of %s failed: %s", server_name, e)

        await self._notary_in_flight.run(server_name, fetch)


def _trim(cache: dict[str, Any]) -> None:
    """Forget the oldest entries of a per-server dict grown past MEMORY_CACHE_SERVERS."""
    excess = len(cache) - MEMORY_CACHE_SERVERS
    if excess > 0:
        for name in list(itertools.islice(cache, excess)):
            del cache[name]


class KeyServer:
    """This server's key answers: `/_matrix/key/v2/server` and the notary queries."""

    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        keyring: Keyring,
        *,
        old_keys: Mapping[str, tuple[VerifyKey, int]] | None = None,
        refresh_interval_ms: int = 24 * 3600 * 1000,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self._server_name = server_name
        self._key = signing_key
        self._keyring = keyring
        self._old_keys = dict(old_keys or {})
        self._refresh_ms = refresh_interval_ms
        self._clock_ms = clock_ms
        self._own: tuple[dict[str, Any], int] | None = None  # (body, re-sign after ts)

    def own_keys(self) -> dict[str, Any]:
        """The signed `/_matrix/key/v2/server` body, re-signed when half its validity
        has passed (so a notary caching it for half its life never serves it stale)."""
        now = self._clock_ms()
        if self._own is None or now >= self._own[1]:
            body = build_server_keys(
                self._server_name, [self._key], now + self._refresh_ms, self._old_keys
            )
            self._own = (body, now + self._refresh_ms // 2)
        return self._own[0]

    async def query(
        self, criteria: Mapping[str, int], key_ids: Mapping[str, Sequence[str]] | None = None
    ) -> list[dict[str, Any]]:
        """Notary answer for {server_name: minimum_valid_until_ts} (and, per server, the
        key IDs asked for, if any): each server's responses, counter-signed by this
        server."""

        async def one(server_name: str, minimum: int) -> list[dict[str, Any]]:
            if server_name == self._server_name:
                return [self.own_keys()]
            wanted = (key_ids or {}).get(server_name, ())
            responses = await self._keyring.responses_for(server_name, minimum, wanted)
            return [sign_json(r, self._server_name, self._key, strict=False) for r in responses]

        results = await asyncio.gather(*(one(s, m) for s, m in criteria.items()))
        return [r for rs in results for r in rs]


def parse_old_signing_keys(entries: Mapping[str, Any]) -> dict[str, tuple[VerifyKey, int]]:
    """config `old_signing_keys` ({"ed25519:id": {"key", "expired_ts"}}) as keys."""
    return {
        key_id: (decode_verify_key_base64(key_id, e["key"]), int(e["expired_ts"]))
        for key_id, e in entries.items()
    }


def notaries_from_config(entries: Iterable[Any]) -> list[Notary]:
    out = []
    for e in entries:
        keys = (
            None
            if e.verify_keys is None
            else {k: decode_verify_key_base64(k, v) for k, v in e.verify_keys.items()}
        )
        out.append(Notary(e.server_name, keys))
    return out
