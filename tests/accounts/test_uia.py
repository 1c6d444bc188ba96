"""User-interactive auth sessions: expiry releases held registration-token uses, stages
are recorded once, and a session is claimed by one operation only (both engines)."""

from __future__ import annotations

from typing import Any

import pytest

from starling.accounts.uia import (
    DUMMY,
    SESSION_LIFETIME_MS,
    AuthRequired,
    UserInteractiveAuth,
    check_dummy,
)
from starling.errors import MatrixError
from starling.storage import Database
from starling.storage.accounts import AccountStore, UIAuthStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000_000

    def __call__(self) -> int:
        return self.now


async def test_expired_session_releases_token_use(database: Database) -> None:
    clock = Clock()
    accounts = AccountStore(database, clock_ms=clock)
    store = UIAuthStore(database, clock_ms=clock)
    await accounts.create_registration_token("tok", uses_allowed=1)
    await store.create_session("s1", "/register", "POST", None)
    assert await store.reserve_registration_token("s1", "tok", clock.now)
    # The use is held: no other session can reserve it, nor can s1 reserve twice.
    await store.create_session("s2", "/register", "POST", None)
    assert not await store.reserve_registration_token("s2", "tok", clock.now)
    assert not await store.reserve_registration_token("s1", "tok", clock.now)
    token = await accounts.get_registration_token("tok")
    assert token is not None and token.pending == 1
    clock.now += SESSION_LIFETIME_MS + 1
    assert await store.delete_expired(clock.now - SESSION_LIFETIME_MS) == 2
    token = await accounts.get_registration_token("tok")
    assert token is not None and token.pending == 0
    assert await store.get_session("s1") is None


async def test_session_lifecycle(database: Database) -> None:
    clock = Clock()
    uia = UserInteractiveAuth(UIAuthStore(database, clock_ms=clock), clock_ms=clock)
    kwargs: dict[str, Any] = {
        "uri": "/x",
        "method": "POST",
        "user_id": "@a:hs",
        "flows": [[DUMMY]],
        "checkers": {DUMMY: check_dummy},
    }
    with pytest.raises(AuthRequired) as info:
        await uia.authenticate(None, **kwargs)
    session = info.value.to_json()["session"]
    assert info.value.to_json()["flows"] == [{"stages": [DUMMY]}]
    # Another user cannot use it; an expired session is unknown.
    with pytest.raises(MatrixError) as err:
        await uia.authenticate(
            {"type": DUMMY, "session": session},
            **{**kwargs, "user_id": "@b:hs"},
        )
    assert err.value.errcode == "M_UNKNOWN"
    done = await uia.authenticate({"type": DUMMY, "session": session}, **kwargs)
    assert done.session_id == session and done.user_id == "@a:hs"
    with pytest.raises(MatrixError) as err:
        await uia.authenticate({"type": DUMMY, "session": session}, **kwargs)
    assert err.value.errcode == "M_UNKNOWN"

    with pytest.raises(AuthRequired) as info:
        await uia.authenticate({}, **kwargs)
    stale = info.value.to_json()["session"]
    clock.now += SESSION_LIFETIME_MS + 1
    with pytest.raises(MatrixError) as err:
        await uia.authenticate({"type": DUMMY, "session": stale}, **kwargs)
    assert err.value.errcode == "M_UNKNOWN"


async def test_completed_stage_is_not_rechecked(database: Database) -> None:
    calls: list[str] = []

    async def counting(session: object, auth: object) -> None:
        calls.append("checked")

    uia = UserInteractiveAuth(UIAuthStore(database))
    kwargs: dict[str, Any] = {
        "uri": "/x",
        "method": "POST",
        "user_id": None,
        "flows": [["a", "b"]],
        "checkers": {"a": counting, "b": counting},
    }
    with pytest.raises(AuthRequired) as info:
        await uia.authenticate({"type": "a"}, **kwargs)
    body = info.value.to_json()
    assert body["completed"] == ["a"] and "errcode" not in body
    session = body["session"]
    with pytest.raises(AuthRequired) as info:
        await uia.authenticate({"type": "a", "session": session}, **kwargs)
    assert info.value.to_json()["completed"] == ["a"]
    assert calls == ["checked"]  # the replayed stage was not run again
    done = await uia.authenticate({"type": "b", "session": session}, **kwargs)
    assert done.session_id == session and calls == ["checked", "checked"]
