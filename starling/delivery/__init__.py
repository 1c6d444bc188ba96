"""Persisted outbound queues: the send-oldest-until-accepted loop shared by the
application-service sender and outgoing webhooks (`loop.py`)."""
