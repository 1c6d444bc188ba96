"""Outbound federation: the persisted per-destination transaction queues (DESIGN §6)."""

from starling.federation.sender.backoff import BackoffPolicy
from starling.federation.sender.hosts import JoinedHosts
from starling.federation.sender.sender import FederationSender

__all__ = ["BackoffPolicy", "FederationSender", "JoinedHosts"]
