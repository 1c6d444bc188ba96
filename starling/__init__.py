"""Starling: a federated, end-to-end encrypted Matrix homeserver and messenger."""

__version__ = "0.1.0"
