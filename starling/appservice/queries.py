"""Asking application services: does a user or alias of your namespace exist (spec:
application-service-api "Querying"), the third-party protocol lookups the Client-Server
API's /thirdparty endpoints answer from them, and ping.

A query is made only for a local user or alias that is unknown here and in a service's
namespace; each is bounded by the client's timeout, and concurrent queries for the same
identifier share one call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from starling.appservice.client import APP_PREFIX, AppServiceClient, AppServiceUnreachable
from starling.appservice.registry import AppServiceRegistry
from starling.errors import MatrixError, forbidden, not_found

logger = logging.getLogger(__name__)

PROTOCOL_CACHE_SECONDS = 60.0
MAX_LOOKUP_FIELDS = 50
MAX_FIELD_LENGTH = 1024
PING_TIMEOUT = 10.0


class AppServiceQueries:
    def __init__(
        self,
        server_name: str,
        registry: AppServiceRegistry,
        client: AppServiceClient,
        *,
        user_exists: Callable[[str], Awaitable[bool]],
        alias_exists: Callable[[str], Awaitable[bool]],
    ) -> None:
        self._server_name = server_name
        self._registry = registry
        self._client = client
        self._user_exists = user_exists
        self._alias_exists = alias_exists
        self._inflight: dict[str, asyncio.Future[bool]] = {}
        self._protocols: dict[str, tuple[float, dict[str, Any] | None]] = {}

    def _local(self, identifier: str) -> bool:
        return identifier.partition(":")[2] == self._server_name

    async def _shared(self, key: str, make: Callable[[], Awaitable[bool]]) -> bool:
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await make()
            future.set_result(result)
            return result
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            del self._inflight[key]

    async def query_user(self, user_id: str) -> bool:
        """Whether `user_id` exists after asking the services whose namespace holds it."""
        services = self._registry.interested_in_user(user_id) if self._local(user_id) else []
        if not services:
            return False

        async def ask() -> bool:
            for service in services:
                if await self._client.query_user(service, user_id) and await self._user_exists(
                    user_id
                ):
                    return True
            return False

        return await self._shared("u" + user_id, ask)

    async def query_alias(self, alias: str) -> bool:
        """Whether `alias` exists after asking the services whose namespace holds it."""
        services = self._registry.interested_in_alias(alias) if self._local(alias) else []
        if not services:
            return False

        async def ask() -> bool:
            for service in services:
                if await self._client.query_alias(service, alias) and await self._alias_exists(
                    alias
                ):
                    return True
            return False

        return await self._shared("a" + alias, ask)

    # --- third-party lookups (spec: client-server-api "Third-party networks") ---------------

    async def protocols(self) -> dict[str, Any]:
        """GET /thirdparty/protocols: every protocol a service answers for."""
        names = self._registry.protocols()
        answers = await asyncio.gather(*(self.protocol(name) for name in names))
        return {name: answer for name, answer in zip(names, answers, strict=True) if answer}

    async def protocol(self, name: str) -> dict[str, Any] | None:
        """GET /thirdparty/protocol/{protocol}: the services' answers merged (their
        instances concatenated), cached for a minute; None if none answered."""
        hit = self._protocols.get(name)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        services = self._registry.with_protocol(name)
        answers = await asyncio.gather(
            *(self._client.thirdparty(s, f"/thirdparty/protocol/{name}") for s in services)
        )
        merged: dict[str, Any] | None = None
        for service, answer in zip(services, answers, strict=True):
            if not isinstance(answer, dict):
                continue
            instances = answer.get("instances")
            instances = (
                [i for i in instances if isinstance(i, dict)] if isinstance(instances, list) else []
            )
            for instance in instances:
                network = instance.get("network_id")
                if isinstance(network, str):
                    # How the room directory names a service's network (Synapse's form).
                    instance["instance_id"] = f"{service.id}|{network}"
            if merged is None:
                merged = {**answer, "instances": instances}
            else:
                merged["instances"].extend(instances)
        if len(self._protocols) > 1000:
            self._protocols.clear()
        self._protocols[name] = (now + PROTOCOL_CACHE_SECONDS, merged)
        return merged

    async def lookup(self, kind: str, protocol: str, fields: dict[str, str]) -> list[Any]:
        """GET /thirdparty/{user,location}/{protocol}: every answering service's results."""
        if len(fields) > MAX_LOOKUP_FIELDS or any(
            len(k) > MAX_FIELD_LENGTH or len(v) > MAX_FIELD_LENGTH for k, v in fields.items()
        ):
            raise MatrixError(400, "M_INVALID_PARAM", "Too many or too long lookup fields")
        services = self._registry.with_protocol(protocol)
        if not services:
            raise not_found(f"No application service handles the protocol {protocol!r}")
        answers = await asyncio.gather(
            *(
                self._client.thirdparty(s, f"/thirdparty/{kind}/{protocol}", fields)
                for s in services
            )
        )
        out: list[Any] = []
        for answer in answers:
            if isinstance(answer, list):
                out.extend(a for a in answer if isinstance(a, dict))
        return out

    async def reverse_lookup(self, kind: str, fields: dict[str, str]) -> list[Any]:
        """GET /thirdparty/{user,location}?userid=|alias=: asked of every service."""
        answers = await asyncio.gather(
            *(
                self._client.thirdparty(s, f"/thirdparty/{kind}", fields)
                for s in self._registry.services
                if s.url and s.protocols
            )
        )
        out: list[Any] = []
        for answer in answers:
            if isinstance(answer, list):
                out.extend(a for a in answer if isinstance(a, dict))
        return out

    # --- ping (spec: application-service-api "Pinging") --------------------------------------

    async def ping(self, service_id: str, caller_id: str, transaction_id: Any) -> int:
        """POST /_matrix/client/v1/appservice/{id}/ping by the service `caller_id`: POST
        /ping to the service, the round trip in milliseconds."""
        service = self._registry.by_id(service_id)
        if service is None or service_id != caller_id:
            raise forbidden("The access token does not belong to this application service")
        if service.url is None:
            raise MatrixError(400, "M_URL_NOT_SET", "The application service has no URL")
        body: dict[str, Any] = {}
        if transaction_id is not None:
            body["transaction_id"] = transaction_id
        started = time.monotonic()
        try:
            status, answer = await self._client.request(
                service, "POST", f"{APP_PREFIX}/ping", body=body, timeout=PING_TIMEOUT
            )
        except AppServiceUnreachable as e:
            if "Timeout" in str(e):
                raise MatrixError(
                    504, "M_CONNECTION_TIMEOUT", "The application service did not answer"
                ) from None
            raise MatrixError(
                502, "M_CONNECTION_FAILED", "Could not reach the application service"
            ) from None
        if not 200 <= status < 300:
            error = MatrixError(
                502,
                "M_BAD_STATUS",
                f"Ping returned status {status}",
                body=orjson.dumps(answer).decode()[:1000] if answer is not None else "",
            )
            error.extra["status"] = status  # a keyword MatrixError itself takes
            raise error
        # Rounded up: a round trip never takes no time (and clients read 0 as missing).
        return math.ceil((time.monotonic() - started) * 1000)
