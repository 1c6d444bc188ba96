"""Shadow-banning (Synapse: the user admin API's shadow-ban): a shadow-banned user's
requests succeed for them, but what they send reaches nobody. The services behind the
client endpoints that put something in front of other people take `shadow_banned` and,
when true, answer as if it worked and persist nothing: sending, state other than their
own membership, redactions (`ClientEvents`: a made-up event ID in the shape real ones
have), delayed events (`DelayedEvents.schedule`: a made-up delay ID), invites
(`MembershipService.invite_by_request`, `ThreepidService.invite`) and the invites of
createRoom (`RoomCreator.create`: the room is made, nobody is invited)."""

from __future__ import annotations

import secrets


def fake_event_id() -> str:
    """An event ID like those of room versions 4 and later ($ + 43 URL-safe base64)."""
    return "$" + secrets.token_urlsafe(32)
