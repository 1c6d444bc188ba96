"""Pushers: where a user's notifications should be sent (spec: client-server-api
modules/push.md, pusher.yaml: GET /pushers, POST /pushers/set).

HTTP pushers are delivered to by starling.push.delivery (`/_matrix/push/v1/notify`),
each from its own stored position in the events stream (a new pusher starts at the
current position);
e-mail pushers are stored and listed but no e-mail is sent.

Stored in the `pushers` table (starling/storage/pushers.py). As the spec asks, a pusher
set without `append: true` replaces the same app_id and pushkey registered by any other
user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from starling.errors import bad_json, invalid_param, missing_param
from starling.storage.accounts import hash_token
from starling.storage.pushers import PusherStore, TooManyPushers

KINDS = frozenset({"http", "email"})
MAX_APP_ID_CHARS = 64
MAX_PUSHKEY_BYTES = 512
MAX_PUSHERS_PER_USER = 100
NOTIFY_PATH = "/_matrix/push/v1/notify"
_REQUIRED_WHEN_SET = ("app_display_name", "device_display_name", "lang", "data")
_LISTED = (
    "pushkey",
    "kind",
    "app_id",
    "app_display_name",
    "device_display_name",
    "profile_tag",
    "lang",
    "data",
)


def _validated(body: dict[str, Any]) -> dict[str, Any] | None:
    """The pusher to store, or None for a deletion (kind null). Raises MatrixError."""
    missing = [k for k in ("kind", "app_id", "pushkey") if k not in body]
    if missing:
        raise missing_param(f"Missing parameters: {', '.join(missing)}")
    app_id, pushkey, kind = body["app_id"], body["pushkey"], body["kind"]
    if not isinstance(app_id, str) or not app_id or len(app_id) > MAX_APP_ID_CHARS:
        raise invalid_param(f"'app_id' must be a string of 1-{MAX_APP_ID_CHARS} characters")
    if not isinstance(pushkey, str) or not pushkey or len(pushkey.encode()) > MAX_PUSHKEY_BYTES:
        raise invalid_param(f"'pushkey' must be a string of 1-{MAX_PUSHKEY_BYTES} bytes")
    if kind is None:
        return None
    if not isinstance(kind, str) or kind not in KINDS:
        raise invalid_param('\'kind\' must be "http", "email" or null')
    missing = [k for k in _REQUIRED_WHEN_SET if body.get(k) is None]
    if missing:
        raise missing_param(f"Missing parameters: {', '.join(missing)}")
    for key in ("app_display_name", "device_display_name", "lang"):
        if not isinstance(body[key], str):
            raise bad_json(f"'{key}' must be a string")
    profile_tag = body.get("profile_tag")
    if profile_tag is not None and not isinstance(profile_tag, str):
        raise bad_json("'profile_tag' must be a string")
    data = body["data"]
    if not isinstance(data, dict):
        raise bad_json("'data' must be an object")
    if kind == "http":
        url = data.get("url")
        if not isinstance(url, str):
            raise missing_param("'url' is required in 'data' for http pushers")
        try:
            parts = urlsplit(url)
        except ValueError:
            raise invalid_param("'data.url' is not a URL") from None
        # The spec asks clients for HTTPS; plain http is accepted (local gateways, tests).
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.path != NOTIFY_PATH:
            raise invalid_param(f"'data.url' must be an HTTPS URL with the path {NOTIFY_PATH}")
    elif "@" not in pushkey:
        raise invalid_param("An email pusher's 'pushkey' must be an email address")
    pusher = {k: body[k] for k in _LISTED if body.get(k) is not None}
    return pusher


class PusherService:
    def __init__(self, store: PusherStore, current_position: Callable[[], int]) -> None:
        self._store = store
        # The events stream's position: a new pusher is pushed only what comes after it.
        self._current_position = current_position

    async def get_pushers(self, user_id: str) -> list[dict[str, Any]]:
        return await self._store.list(user_id)

    async def set_pusher(
        self, user_id: str, body: dict[str, Any], *, access_token: str | None = None
    ) -> None:
        """POST /pushers/set: create, replace (same app_id and pushkey) or delete. The
        access token that set it is remembered: a password change that logs out the
        other sessions removes their pushers."""
        pusher = _validated(body)
        append = body.get("append", False)
        if not isinstance(append, bool):
            raise bad_json("'append' must be a boolean")
        if pusher is None:
            # Deleting a pusher that does not exist is not an error.
            await self._store.delete(user_id, body["app_id"], body["pushkey"])
            return
        try:
            await self._store.set(
                user_id,
                pusher,
                replace_others=not append,
                max_per_user=MAX_PUSHERS_PER_USER,
                token_hash=hash_token(access_token) if access_token is not None else None,
                start_position=self._current_position(),
            )
        except TooManyPushers:
            raise invalid_param(f"A user can have at most {MAX_PUSHERS_PER_USER} pushers") from None
