"""Room upgrades and the users of this server: their own state about the old room
follows it to the replacement (Synapse's copy_user_state_on_room_upgrade), called by
starling.rooms.upgrade once the new room exists."""

from __future__ import annotations

import logging

from starling.account_data.service import AccountDataService
from starling.push.service import PushRulesService

logger = logging.getLogger(__name__)


class UpgradeUserState:
    """What users of this server keep about a room follows it to its replacement:
    its tags, its place in m.direct and their push rules about it (Synapse's
    copy_user_state_on_room_upgrade). A failure for one user is logged, not raised."""

    def __init__(self, account_data: AccountDataService, push_rules: PushRulesService) -> None:
        self._account_data = account_data
        self._push_rules = push_rules

    async def copy(self, old_room_id: str, new_room_id: str, user_ids: list[str]) -> None:
        for user_id in user_ids:
            try:
                await self._copy_one(old_room_id, new_room_id, user_id)
            except Exception:
                logger.exception("copying %s's state to upgraded room %s", user_id, new_room_id)

    async def _copy_one(self, old_room_id: str, new_room_id: str, user_id: str) -> None:
        data = self._account_data
        tags = await data.get_tags(user_id, old_room_id)
        if tags:
            await data.set_account_data(user_id, new_room_id, "m.tag", {"tags": tags})
        direct = await data.get(user_id, None, "m.direct")
        if isinstance(direct, dict):
            changed = False
            copy_ = {}
            for other, rooms in direct.items():
                if isinstance(rooms, list) and old_room_id in rooms and new_room_id not in rooms:
                    rooms = [*rooms, new_room_id]
                    changed = True
                copy_[other] = rooms
            if changed:
                await data.set_account_data(user_id, None, "m.direct", copy_)
        await self._push_rules.copy_room_rules(user_id, old_room_id, new_room_id)
