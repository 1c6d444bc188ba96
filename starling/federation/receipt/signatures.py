"""Step 2: the event carries valid signatures from every server that must sign it,
otherwise it is dropped (Server-Server API > Validating hashes and signatures on received
events).

Which servers must sign is the room version's business (`required_signing_servers`: the
sender's server; the server in the event ID in room versions 1-2; the server vouching
for a restricted join), checked by the keyring with each server's key valid at the
event's `origin_server_ts`. The signatures cover the redacted event, so a redacted copy
passes too; the content hash is the next step.
"""

from __future__ import annotations

from typing import Protocol

from starling.federation.errors import SignatureVerifyError
from starling.federation.receipt.verdict import Dropped
from starling.protocol.event import Event


class EventSignatureVerifier(Protocol):
    """The keyring's part this step uses (starling.federation.keyring.Keyring)."""

    async def verify_event_signatures(self, event: Event) -> None: ...


async def check_signatures(event: Event, keyring: EventSignatureVerifier) -> Dropped | None:
    """None if every required signature verifies, else why the event is dropped."""
    try:
        await keyring.verify_event_signatures(event)
    except SignatureVerifyError as e:
        return Dropped(f"bad signature: {e}")
    return None
