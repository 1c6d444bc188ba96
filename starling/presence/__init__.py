"""Presence: online / unavailable / offline of local users, in memory, on a stream."""
