"""The `rc_joins` and `rc_invites` limits (Synapse's semantics): joins per user (local),
joins per room, invites per room, per invited user and per inviting user; a profile change
of a member is not a join, and the invites of createRoom are not limited."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from starling.errors import MatrixError
from starling.protocol.event import Event
from starling.ratelimit import RateLimits
from starling.rooms.membership import MembershipService
from tests.support.harness import Harness

V3 = "/_matrix/client/v3"
_FAST = {"per_second": 1000, "burst_count": 1000}
_TWO = {"per_second": 0.0001, "burst_count": 2}


def _limited(status: int, body: Any) -> bool:
    return status == 429 and body["errcode"] == "M_LIMIT_EXCEEDED" and "retry_after_ms" in body


class TestJoins:
    @pytest.fixture
    def hs_config(self) -> dict[str, Any]:
        return {
            "rc_message": _FAST,
            "rc_joins": {"local": _TWO, "remote": _FAST},
            "rc_joins_per_room": _FAST,
            "rc_invites": {"per_room": _FAST, "per_user": _FAST, "per_issuer": _FAST},
        }

    async def test_joins_per_user(self, hs: Harness) -> None:
        _, otok = await hs.register()
        rooms = [await hs.create_room(otok, preset="public_chat") for _ in range(3)]
        user, tok = await hs.register()
        for room in rooms[:2]:
            assert (await hs.request("POST", f"{V3}/join/{room}", tok, {}))[0] == 200
        status, body = await hs.request("POST", f"{V3}/join/{rooms[2]}", tok, {})
        assert _limited(status, body), body
        # The state endpoint is limited the same way.
        status, body = await hs.request(
            "PUT", f"{V3}/rooms/{rooms[2]}/state/m.room.member/{user}", tok, {"membership": "join"}
        )
        assert _limited(status, body), body
        # A member changing their room profile is not joining.
        status, body = await hs.request(
            "PUT",
            f"{V3}/rooms/{rooms[0]}/state/m.room.member/{user}",
            tok,
            {"membership": "join", "displayname": "New name"},
        )
        assert status == 200, body


class TestJoinsPerRoom:
    @pytest.fixture
    def hs_config(self) -> dict[str, Any]:
        return {"rc_joins": {"local": _FAST, "remote": _FAST}, "rc_joins_per_room": _TWO}

    async def test_joins_per_room(self, hs: Harness) -> None:
        _, otok = await hs.register()
        room = await hs.create_room(otok, preset="public_chat")
        for _ in range(2):
            _, tok = await hs.register()
            assert (await hs.request("POST", f"{V3}/join/{room}", tok, {}))[0] == 200
        _, tok = await hs.register()
        status, body = await hs.request("POST", f"{V3}/join/{room}", tok, {})
        assert _limited(status, body), body


def _invites(**limits: dict[str, float]) -> dict[str, Any]:
    return {"rc_invites": {"per_room": _FAST, "per_user": _FAST, "per_issuer": _FAST, **limits}}


async def _invite(hs: Harness, token: str, room: str, user: str) -> tuple[int, Any]:
    return await hs.request("POST", f"{V3}/rooms/{room}/invite", token, {"user_id": user})


class TestInvitesPerIssuer:
    @pytest.fixture
    def hs_config(self) -> dict[str, Any]:
        return _invites(per_issuer=_TWO)

    async def test_invites_per_issuer(self, hs: Harness) -> None:
        _, otok = await hs.register()
        room = await hs.create_room(otok)
        targets = [(await hs.register())[0] for _ in range(3)]
        assert (await _invite(hs, otok, room, targets[0]))[0] == 200
        assert (await _invite(hs, otok, room, targets[1]))[0] == 200
        assert _limited(*await _invite(hs, otok, room, targets[2]))
        status, body = await hs.request(
            "PUT",
            f"{V3}/rooms/{room}/state/m.room.member/{targets[2]}",
            otok,
            {"membership": "invite"},
        )
        assert _limited(status, body), body

    async def test_create_room_invites_are_not_limited(self, hs: Harness) -> None:
        _, otok = await hs.register()
        targets = [(await hs.register())[0] for _ in range(3)]
        room = await hs.create_room(otok, invite=targets)
        for target in targets:
            membership = await hs.services.membership_store.get_membership(room, target)
            assert membership is not None and membership.membership == "invite"


class TestInvitesPerUser:
    @pytest.fixture
    def hs_config(self) -> dict[str, Any]:
        return _invites(per_user=_TWO)

    async def test_invites_per_invited_user(self, hs: Harness) -> None:
        target, _ = await hs.register()
        for expected_ok in (True, True, False):
            _, tok = await hs.register()
            room = await hs.create_room(tok)
            status, body = await _invite(hs, tok, room, target)
            assert (status == 200) if expected_ok else _limited(status, body), body


class TestInvitesPerRoom:
    @pytest.fixture
    def hs_config(self) -> dict[str, Any]:
        return _invites(per_room=_TWO)

    async def test_invites_per_room(self, hs: Harness) -> None:
        _, otok = await hs.register()
        room = await hs.create_room(otok)
        targets = [(await hs.register())[0] for _ in range(3)]
        assert (await _invite(hs, otok, room, targets[0]))[0] == 200
        assert (await _invite(hs, otok, room, targets[1]))[0] == 200
        assert _limited(*await _invite(hs, otok, room, targets[2]))


class TestRemoteJoins:
    @pytest.fixture
    def hs_config(self) -> dict[str, Any]:
        return {"rc_joins": {"local": _FAST, "remote": _TWO}, "rc_joins_per_room": _FAST}

    async def test_joins_over_federation_spend_the_remote_limit(self, hs: Harness) -> None:
        joined: list[str] = []

        class NoFederation:
            async def join_room(
                self, room_id: str, user_id: str, via: Sequence[str], content: dict[str, Any]
            ) -> Event:
                joined.append(room_id)
                raise MatrixError(404, "M_NOT_FOUND", "no federation in this test")

            async def knock_room(
                self, room_id: str, user_id: str, via: Sequence[str], content: dict[str, Any]
            ) -> Event:
                raise AssertionError("not knocking")

            async def leave_room(
                self, room_id: str, user_id: str, content: dict[str, Any]
            ) -> Event:
                raise AssertionError("not leaving")

            async def countersigned_invite(self, event: Event) -> Event:
                raise AssertionError("not inviting")

        async def no_profile(user_id: str) -> dict[str, Any]:
            return {}

        svc = hs.services
        membership = MembershipService(
            svc.room_events,
            svc.membership_store,
            no_profile,
            NoFederation(),
            server_name=hs.server_name,
            rate_limits=RateLimits(svc.config),
        )
        user, _ = await hs.register()
        for n in range(2):
            with pytest.raises(MatrixError) as refused:
                await membership.join(f"!r{n}:elsewhere.example", user, via=["elsewhere.example"])
            assert refused.value.errcode == "M_NOT_FOUND"
        with pytest.raises(MatrixError) as limited:
            await membership.join("!r2:elsewhere.example", user, via=["elsewhere.example"])
        assert limited.value.errcode == "M_LIMIT_EXCEEDED"
        assert joined == ["!r0:elsewhere.example", "!r1:elsewhere.example"]
