"""Push notifications: per-user push rules and their evaluation, and pushers."""
