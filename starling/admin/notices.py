"""Server notices (Synapse: docs/admin_api/server_notices.md and the `server_notices`
config): messages from the server to one user, in a room the system user owns with them.

The room is created on the first notice: private, the user invited (joined at once with
`auto_join`), `users_default` -10 so the user cannot write in it, and tagged
``m.server_notice`` in the user's account data. Later notices go to the same room while
the user is still invited or joined; if they left, a new one is made.
"""

from __future__ import annotations

from typing import Any

from starling.account_data.service import AccountDataService
from starling.config import ServerNoticesConfig
from starling.errors import MatrixError, invalid_param, not_found
from starling.rooms.creation import CreateRoomRequest, RoomCreator
from starling.rooms.event_service import RoomEventService
from starling.rooms.membership import MembershipService
from starling.storage.accounts import AccountStore, UserExists
from starling.storage.memberships import MembershipStore
from starling.storage.profiles import ProfileStore

NOTICE_TAG = "m.server_notice"


class ServerNotices:
    def __init__(
        self,
        *,
        server_name: str,
        config: ServerNoticesConfig,
        accounts: AccountStore,
        profiles: ProfileStore,
        memberships: MembershipStore,
        membership: MembershipService,
        creator: RoomCreator,
        room_events: RoomEventService,
        account_data: AccountDataService,
    ) -> None:
        self._server_name = server_name
        self._config = config
        self._accounts = accounts
        self._profiles = profiles
        self._memberships = memberships
        self._membership = membership
        self._creator = creator
        self._room_events = room_events
        self._account_data = account_data

    @property
    def enabled(self) -> bool:
        return self._config.system_mxid_localpart is not None

    @property
    def system_user(self) -> str:
        return f"@{self._config.system_mxid_localpart}:{self._server_name}"

    async def _ensure_system_user(self) -> None:
        if await self._accounts.user_exists(self.system_user):
            return
        try:
            await self._accounts.create_user(self.system_user, None)
        except UserExists:
            return
        await self._profiles.create_profile(
            self.system_user, self._config.system_mxid_display_name or "Server Notices"
        )
        if self._config.system_mxid_avatar_url:
            await self._profiles.set_field(
                self.system_user, "avatar_url", self._config.system_mxid_avatar_url
            )

    async def _notice_room(self, user_id: str) -> str:
        rooms = await self._memberships.get_rooms_for_user(self.system_user)
        for room_id, mine in sorted(rooms.items()):
            if mine.membership != "join":
                continue
            theirs = await self._memberships.get_membership(room_id, user_id)
            if theirs is None or theirs.membership not in ("join", "invite"):
                continue
            tags = await self._account_data.get_tags(user_id, room_id)
            if NOTICE_TAG in tags:
                return room_id
        room_id, _ = await self._creator.create(
            CreateRoomRequest(
                creator=self.system_user,
                preset="private_chat",
                name=self._config.room_name,
                topic=self._config.room_topic,
                invite=[user_id],
                power_level_content_override={"users_default": -10},
            )
        )
        await self._account_data.add_tag(user_id, room_id, NOTICE_TAG, {"order": 0.5})
        if self._config.auto_join:
            await self._membership.join(room_id, user_id)
        return room_id

    async def send(
        self, user_id: str, content: dict[str, Any], event_type: str, state_key: str | None
    ) -> str:
        """POST /_synapse/admin/v1/send_server_notice: the new event's ID."""
        if not self.enabled:
            raise MatrixError(400, "M_UNKNOWN", "Server notices are not enabled on this server")
        if not user_id.endswith(":" + self._server_name):
            raise invalid_param("Server notices can only be sent to local users")
        if user_id == self.system_user:
            raise invalid_param("The server notices user cannot receive notices")
        user = await self._accounts.get_user(user_id)
        if user is None:
            raise not_found("User not found")
        if user.deactivated:
            raise invalid_param("The user is deactivated")
        await self._ensure_system_user()
        room_id = await self._notice_room(user_id)
        event = await self._room_events.send(
            room_id, self.system_user, event_type, content, state_key
        )
        return event.event_id
