"""What guest accounts may call (spec: client-server-api modules/guest_access.md).

The spec lists the endpoints open to guests: reading rooms they may see, joining,
leaving and sending, their display name and devices, whoami and the E2EE key endpoints.
Like Synapse, guests may also use the endpoints clients need to run at all (filters,
capabilities, push rules, logout, TURN credentials, media downloads). Everything else
answers 403 M_GUEST_ACCESS_FORBIDDEN.
"""

from __future__ import annotations

import re

_C = r"/_matrix/client/(?:v3|r0)"
_ROOM = r"/rooms/[^/]+"

_ALLOWED: dict[str, re.Pattern[str]] = {
    "GET": re.compile(
        "^(?:"
        + "|".join(
            [
                rf"{_C}{_ROOM}/(?:state|state/[^/]+(?:/.*)?|context/[^/]+|event/[^/]+"
                r"|messages|members|initialSync)",
                rf"{_C}/sync",
                rf"{_C}/events",
                r"/_matrix/client/v1/media/(?:download|thumbnail)/.+",
                rf"{_C}/devices(?:/[^/]+)?",
                rf"{_C}/account/whoami",
                rf"{_C}/user/[^/]+/filter/[^/]+",
                rf"{_C}/capabilities",
                rf"{_C}/pushrules/.*",
                rf"{_C}/voip/turnServer",
                rf"{_C}/profile/[^/]+(?:/[^/]+)?",
            ]
        )
        + ")$"
    ),
    "POST": re.compile(
        "^(?:"
        + "|".join(
            [
                rf"{_C}{_ROOM}/(?:join|leave)",
                rf"{_C}/keys/(?:upload|query|claim)",
                rf"{_C}/user/[^/]+/filter",
                rf"{_C}/logout",
            ]
        )
        + ")$"
    ),
    "PUT": re.compile(
        "^(?:"
        + "|".join(
            [
                rf"{_C}{_ROOM}/send/[^/]+/[^/]+",
                rf"{_C}{_ROOM}/state/[^/]+(?:/.*)?",
                rf"{_C}/sendToDevice/[^/]+/[^/]+",
                rf"{_C}/profile/[^/]+/displayname",
                rf"{_C}/devices/[^/]+",
            ]
        )
        + ")$"
    ),
    "DELETE": re.compile(rf"^{_C}/profile/[^/]+/displayname$"),
}


def guest_may_call(method: str, path: str) -> bool:
    pattern = _ALLOWED.get(method)
    return pattern is not None and pattern.match(path) is not None
