"""Which singletons a process runs (`ClusterRoles`): a module of its own, without Redis,
so that a single-process server never imports the bus (idle memory)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClusterRoles:
    """Which singletons this process runs."""

    federation_sender: bool
    pusher: bool
    appservice_sender: bool
    background_tasks: bool
