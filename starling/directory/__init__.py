"""Room aliases and the published room directory (publicRooms)."""
