"""Rooms: creating rooms and events, membership, room state."""
