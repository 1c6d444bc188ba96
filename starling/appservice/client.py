"""Calls from this server to application services (spec: application-service-api): pushing
transactions, the user and room-alias queries, third-party lookups and ping. Every call
carries the service's ``hs_token`` as a Bearer token, has a timeout and a bounded answer.

The URLs are the admin's (registration files), so no address policy applies to them, as in
Synapse; certificates are checked unless the test-rig switch
``use_insecure_ssl_client_just_for_testing_do_not_use`` is on.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from starling.appservice.registration import AppService

logger = logging.getLogger(__name__)

APP_PREFIX = "/_matrix/app/v1"
MAX_ANSWER_BYTES = 1024 * 1024
TRANSACTION_TIMEOUT = 60.0
QUERY_TIMEOUT = 10.0


class AppServiceUnreachable(Exception):
    """The service could not be reached or did not answer in time."""


class AppServiceClient:
    def __init__(self, *, verify_certificates: bool = True) -> None:
        self._verify = verify_certificates
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._verify, limit=50),
                json_serialize=lambda v: orjson.dumps(v).decode(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        service: AppService,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, str] | None = None,
        timeout: float = QUERY_TIMEOUT,
    ) -> tuple[int, Any]:
        """(status, parsed JSON or None); AppServiceUnreachable when there is no answer."""
        if service.url is None:
            raise AppServiceUnreachable(f"application service {service.id} has no URL")
        url = service.url + path
        headers = {"Authorization": f"Bearer {service.hs_token}"}
        try:
            async with self._get_session().request(
                method,
                url,
                json=body,
                params=query,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                raw = await resp.content.read(MAX_ANSWER_BYTES + 1)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise AppServiceUnreachable(f"{service.id}: {type(e).__name__}: {e}") from None
        if len(raw) > MAX_ANSWER_BYTES:
            return status, None
        try:
            return status, orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return status, None

    async def push_transaction(self, service: AppService, txn_id: int, body: Any) -> bool:
        """PUT /transactions/{txnId}: True when the service accepted it (a 2xx answer)."""
        try:
            status, _ = await self.request(
                service,
                "PUT",
                f"{APP_PREFIX}/transactions/{txn_id}",
                body=body,
                timeout=TRANSACTION_TIMEOUT,
            )
        except AppServiceUnreachable as e:
            logger.info("transaction %d to %s failed: %s", txn_id, service.id, e)
            return False
        if 200 <= status < 300:
            return True
        logger.info("transaction %d to %s answered %d", txn_id, service.id, status)
        return False

    async def query_user(self, service: AppService, user_id: str) -> bool:
        """GET /users/{userId}: True when the service says the user exists (it has just
        created it)."""
        return await self._query(service, f"{APP_PREFIX}/users/{quote(user_id, safe='@:')}")

    async def query_alias(self, service: AppService, alias: str) -> bool:
        return await self._query(service, f"{APP_PREFIX}/rooms/{quote(alias, safe=':')}")

    async def _query(self, service: AppService, path: str) -> bool:
        try:
            status, _ = await self.request(service, "GET", path)
        except AppServiceUnreachable as e:
            logger.info("query to %s failed: %s", service.id, e)
            return False
        return 200 <= status < 300

    async def thirdparty(
        self, service: AppService, path: str, query: dict[str, str] | None = None
    ) -> Any:
        """A third-party lookup (/thirdparty/...): the JSON answer, None on any failure."""
        try:
            status, answer = await self.request(service, "GET", APP_PREFIX + path, query=query)
        except AppServiceUnreachable as e:
            logger.info("third-party lookup on %s failed: %s", service.id, e)
            return None
        return answer if 200 <= status < 300 else None
