"""Room summaries: GET /_matrix/client/v1/room_summary/{roomIdOrAlias} (spec v1.15,
client-server-api #get_matrixclientv1room_summaryroomidoralias; MSC3266), also at the
MSC's unstable paths Synapse serves and older clients call
(`/_matrix/client/unstable/im.nheko.summary/summary/{roomIdOrAlias}` and
`.../rooms/{roomIdOrAlias}/summary`), which add the MSC's prefixed copies of two fields.

An alias is resolved first (another server's through the directory query), its servers
joining the `via` list; the summary itself is the space hierarchy's entry for the room
(starling/rooms/hierarchy.py `summary`), which decides who may see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starling.directory.service import DirectoryService
from starling.errors import invalid_param
from starling.protocol.identifiers import is_valid_room_id, is_valid_server_name
from starling.rooms.hierarchy import SpaceHierarchy

MAX_VIA = 20
MAX_ID_LENGTH = 255
UNSTABLE_PREFIX = "im.nheko.summary"


class RoomSummaries:
    def __init__(self, directory: DirectoryService, hierarchy: SpaceHierarchy) -> None:
        self._directory = directory
        self._hierarchy = hierarchy

    async def summary(
        self, user_id: str | None, room_id_or_alias: str, via: Sequence[str], unstable: bool
    ) -> dict[str, Any]:
        if len(via) > MAX_VIA:
            raise invalid_param(f"At most {MAX_VIA} 'via' servers")
        for server in via:
            if not is_valid_server_name(server):
                raise invalid_param(f"'via' holds an invalid server name {server[:80]!r}")
        servers = list(via)
        if len(room_id_or_alias) > MAX_ID_LENGTH:
            raise invalid_param("Not a room ID or alias")
        if room_id_or_alias.startswith("#"):
            resolved = await self._directory.resolve_alias(room_id_or_alias)
            room_id = resolved["room_id"]
            servers += [s for s in resolved.get("servers", []) if isinstance(s, str)]
        elif room_id_or_alias.startswith("!") and is_valid_room_id(room_id_or_alias):
            room_id = room_id_or_alias
        else:
            raise invalid_param("Not a room ID or alias")
        entry = await self._hierarchy.summary(user_id, room_id, servers)
        if unstable:
            # The MSC's first text named these two with its prefix (js-sdk still reads them).
            entry[f"{UNSTABLE_PREFIX}.room_version"] = entry.get("room_version")
            if "encryption" in entry:
                entry[f"{UNSTABLE_PREFIX}.encryption"] = entry["encryption"]
        return entry
