"""TURN server credentials for VoIP (spec: client-server-api modules/voip_events.md,
GET /voip/turnServer).

They follow the TURN REST API convention that coturn's `use-auth-secret` implements (and
Synapse uses): username `<expiry seconds>:<user ID>`, password the base64 HMAC-SHA1 of the
username keyed with `turn_shared_secret`; or fixed `turn_username` and `turn_password`.
With no TURN server configured the answer is `{}`, as Synapse's; guests get credentials
only with `turn_allow_guests`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

from starling.config import Config, parse_duration
from starling.errors import MatrixError


def turn_credentials(secret: str, user_id: str, lifetime_ms: int, now_ms: int) -> tuple[str, str]:
    """(username, password) valid until now + lifetime, for a TURN server sharing `secret`."""
    expiry_s = (now_ms + lifetime_ms) // 1000
    username = f"{expiry_s}:{user_id}"
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(mac).decode()


class TurnServers:
    def __init__(
        self, config: Config, clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)
    ) -> None:
        self._config = config
        self._clock_ms = clock_ms

    def credentials(self, user_id: str, *, guest: bool) -> dict[str, Any]:
        """GET /voip/turnServer's answer for `user_id`: `{}` when no server is set up."""
        config = self._config
        if not config.turn_uris:
            return {}
        if guest and not config.turn_allow_guests:
            raise MatrixError(403, "M_FORBIDDEN", "Guests may not use the TURN server")
        lifetime_ms = parse_duration(config.turn_user_lifetime)
        if config.turn_shared_secret:
            username, password = turn_credentials(
                config.turn_shared_secret, user_id, lifetime_ms, self._clock_ms()
            )
        elif config.turn_username and config.turn_password:
            username, password = config.turn_username, config.turn_password
        else:
            return {}
        return {
            "username": username,
            "password": password,
            "uris": list(config.turn_uris),
            "ttl": lifetime_ms // 1000,
        }
