"""Incoming webhooks: ``POST /_starling/webhooks/v1/incoming/{id}/{secret}`` with a JSON
object posts an ``m.text`` message to the hook's room as its bot user.

The message is the object's ``text``, or the hook's ``template`` filled from the object's
top-level string and number values (``string.Template``: ``$name``/``${name}``; unknown
names stay as written, so a caller cannot reach anything but its own values). The bot user
is created on first use and joins the room then (the room must let it: public, or an
invite). An unknown hook and a wrong secret are the same 404; each hook is rate limited.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from string import Template
from typing import Any

from starling.config import IncomingWebhook, RateLimit
from starling.errors import MatrixError, bad_json, not_found
from starling.ratelimit import TokenBuckets

MAX_TEXT_LENGTH = 32 * 1024
HOOK_RATE = RateLimit(per_second=2.0, burst_count=20)


class IncomingWebhooks:
    def __init__(
        self,
        server_name: str,
        hooks: Sequence[IncomingWebhook],
        *,
        ensure_user: Callable[[str], Awaitable[None]],
        is_joined: Callable[[str, str], Awaitable[bool]],
        join: Callable[[str, str], Awaitable[Any]],
        send: Callable[[str, str, dict[str, Any]], Awaitable[str]],
        buckets: TokenBuckets | None = None,
    ) -> None:
        self._server_name = server_name
        self._hooks = {h.id: h for h in hooks}
        self._ensure_user = ensure_user
        self._is_joined = is_joined
        self._join = join
        self._send = send
        self._buckets = buckets or TokenBuckets()

    def sender_of(self, hook: IncomingWebhook) -> str:
        return f"@{hook.sender_localpart}:{self._server_name}"

    def _hook(self, hook_id: str, secret: str) -> IncomingWebhook:
        hook = self._hooks.get(hook_id)
        if hook is None or not hmac.compare_digest(hook.secret.encode(), secret.encode()):
            raise not_found("No such webhook")
        return hook

    @staticmethod
    def message(hook: IncomingWebhook, body: dict[str, Any]) -> str:
        if hook.template is not None:
            values = {
                k: str(v)
                for k, v in body.items()
                if isinstance(k, str)
                and isinstance(v, str | int | float)
                and not isinstance(v, bool)
            }
            text = Template(hook.template).safe_substitute(values)
        else:
            raw = body.get("text")
            if not isinstance(raw, str) or not raw.strip():
                raise bad_json("'text' must be a non-empty string")
            text = raw
        if len(text) > MAX_TEXT_LENGTH:
            raise MatrixError(413, "M_TOO_LARGE", "The message is too long")
        return text

    async def post(self, hook_id: str, secret: str, body: dict[str, Any]) -> str:
        """Post the message; its event ID."""
        hook = self._hook(hook_id, secret)
        await self._buckets.take("webhook", hook.id, HOOK_RATE)
        text = self.message(hook, body)
        sender = self.sender_of(hook)
        await self._ensure_user(sender)
        if not await self._is_joined(hook.room_id, sender):
            try:
                await self._join(hook.room_id, sender)
            except MatrixError as e:
                raise MatrixError(
                    403, "M_FORBIDDEN", f"The webhook's user cannot join its room: {e.error}"
                ) from None
        return await self._send(hook.room_id, sender, {"msgtype": "m.text", "body": text})
