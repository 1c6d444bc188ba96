"""Step 3: the content hash matches, otherwise the event is redacted before it is
processed further (Server-Server API > Validating hashes and signatures on received
events: "the receiving server should use the redacted copy it calculated").

The event keeps its ID: the ID (room versions 3+) and the signatures cover only the
redacted form, which is what the sender signed.
"""

from __future__ import annotations

from starling.protocol.event import Event
from starling.protocol.hashing import EventHashError, check_content_hash
from starling.protocol.redaction import RedactionError, redact


def checked_content(event: Event) -> tuple[Event, bool]:
    """(the event to process, whether it had to be redacted)."""
    try:
        if check_content_hash(event.pdu):
            return event, False
    except EventHashError:
        pass
    try:
        redacted = redact(event.pdu, event.room_version)
    except RedactionError:  # parse_pdu guarantees an object with object content
        redacted = {k: v for k, v in event.pdu.items() if k != "content"} | {"content": {}}
    return Event(redacted, event.event_id, event.room_version), True
