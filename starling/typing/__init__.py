"""Typing notifications: who is typing in which room (in memory), and their /sync part."""
