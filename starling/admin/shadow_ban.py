"""Shadow-banning (Synapse: the user admin API's shadow-ban): a shadow-banned user's
requests succeed for them, but what they send reaches nobody. The client endpoints that
put something in front of other people (sending, state, redactions, invites, invites at
room creation) ask `is_shadow_banned` and, when true, answer as if it worked: a made-up
event ID in the shape real ones have, and nothing persisted."""

from __future__ import annotations

import secrets


def fake_event_id() -> str:
    """An event ID like those of room versions 4 and later ($ + 43 URL-safe base64)."""
    return "$" + secrets.token_urlsafe(32)
