"""Talking to identity servers: binding third-party IDs and third-party invites."""
