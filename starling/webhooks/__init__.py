"""Webhooks (Starling's own; no Matrix spec): incoming ones post a message to a room when
their secret URL is POSTed to, outgoing ones POST a room's events to a URL, signed."""
