"""User-interactive authentication (spec: client-server-api "User-interactive
authentication API"): sessions, flows, stages, and the 401 responses that drive them.

An endpoint protected by UIA calls :meth:`UserInteractiveAuth.authenticate` with the
request's ``auth`` dict, the flows it offers and a checker per stage type. Until one flow
is complete the call raises :class:`AuthRequired` (401 with ``flows``, ``params``,
``session``, ``completed`` and, after a failed attempt, ``errcode``/``error``). Once a flow
is complete the session is claimed (deleted) and returned, so one session authorises one
operation: a replayed session is unknown afterwards.

Like Synapse, an ``auth`` dict with a ``type`` but no ``session`` (matrix-nio's one-shot
``m.login.dummy`` registration) starts a session and attempts the stage at once. A session
is bound to the URI, method and user that started it, and lives for
:data:`SESSION_LIFETIME_MS`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starling.errors import MatrixError, bad_json, forbidden
from starling.storage.accounts import UIAuthSession, UIAuthStore

SESSION_LIFETIME_MS = 48 * 3600 * 1000
# How often creating a session also sweeps the expired ones.
SWEEP_INTERVAL_MS = 10 * 60 * 1000
MAX_SESSION_ID_LENGTH = 255

DUMMY = "m.login.dummy"
PASSWORD = "m.login.password"
SSO = "m.login.sso"
# Session parameter: an SSO sign-in for the session was another user's (complete_sso).
SSO_MISMATCH = "sso_user_mismatch"
REGISTRATION_TOKEN = "m.login.registration_token"


class AuthRequired(MatrixError):
    """The 401 that asks the client for (more) authentication."""

    def __init__(self, body: dict[str, Any], errcode: str | None = None, error: str = "") -> None:
        super().__init__(401, errcode or "M_UNAUTHORIZED", error or "Authentication required")
        self.body = body
        self.failed = errcode is not None

    def to_json(self) -> dict[str, Any]:
        out = dict(self.body)
        if self.failed:
            out["errcode"] = self.errcode
            out["error"] = self.error
        return out


class StageFailed(Exception):
    """A stage's credentials were wrong; the client may try again in the same session."""

    def __init__(self, errcode: str, error: str) -> None:
        super().__init__(error)
        self.errcode = errcode
        self.error = error


# Checks one stage's auth dict; raises StageFailed (try again) or MatrixError (bad request).
StageChecker = Callable[[UIAuthSession, Mapping[str, Any]], Awaitable[None]]


async def check_dummy(session: UIAuthSession, auth: Mapping[str, Any]) -> None:
    """m.login.dummy: nothing to check."""


@dataclass(frozen=True, slots=True)
class CompletedAuth:
    session_id: str
    user_id: str | None
    # A registration token whose pending use now belongs to the caller, who must
    # complete it (the operation succeeded) or release it.
    registration_token: str | None


@dataclass(frozen=True, slots=True)
class SessionState:
    # What the first request of the session asked for (registration), if remembered.
    params: dict[str, Any] | None
    # Used by an operation (kept sessions only); `result` is the account it registered.
    claimed: bool
    result: str | None


def _now_ms() -> int:
    return int(time.time() * 1000)


class UserInteractiveAuth:
    def __init__(self, store: UIAuthStore, *, clock_ms: Callable[[], int] = _now_ms) -> None:
        self._store = store
        self._clock_ms = clock_ms
        self._last_sweep_ms = 0

    async def authenticate(
        self,
        auth: Any,
        *,
        uri: str,
        method: str,
        user_id: str | None,
        flows: Sequence[Sequence[str]],
        checkers: Mapping[str, StageChecker],
        params: Mapping[str, Any] | None = None,
        keep_session: bool = False,
        unoffered: Collection[str] = (),
    ) -> CompletedAuth:
        """Advance the session in ``auth``; return once a flow is complete, else raise
        :class:`AuthRequired`. ``user_id`` is the authenticated requester (None for
        registration); a session only serves the user, URI and method that started it.
        With ``keep_session`` the used session stays, marked claimed (see
        `RegistrationSessions`). A stage in ``unoffered`` (with a checker) is checked and
        recorded when a client submits it though no flow offers it, as Synapse does for
        every stage it can check (reCAPTCHA with only its keys configured); other stages
        no flow offers are refused (M_UNRECOGNIZED)."""
        if auth is not None and not isinstance(auth, dict):
            raise bad_json("'auth' must be an object")
        auth = auth or {}
        session_id = auth.get("session")
        stage = auth.get("type")
        if session_id is not None and not isinstance(session_id, str):
            raise bad_json("'auth.session' must be a string")
        if stage is not None and not isinstance(stage, str):
            raise bad_json("'auth.type' must be a string")

        session: UIAuthSession
        if session_id is None:
            session = await self._new_session(uri, method, user_id)
        else:
            session = await self._existing_session(session_id, uri, method, user_id)

        offered_sso = any(SSO in f for f in flows)
        if offered_sso and session_id is not None:
            state = await self.session_state(session.session_id)
            if state is not None and (state.params or {}).get(SSO_MISMATCH):
                raise forbidden("The single sign-on for this session was another user's")

        def required(errcode: str | None = None, error: str = "") -> AuthRequired:
            body: dict[str, Any] = {
                "flows": [{"stages": list(f)} for f in flows],
                "params": dict(params or {}),
                "session": session.session_id,
            }
            # A request that tried to authenticate hears what is done so far (even
            # nothing); the first one, which did not, gets flows only (as Synapse).
            if session.completed or auth:
                body["completed"] = sorted(session.completed)
            return AuthRequired(body, errcode, error)

        offered = {s for f in flows for s in f}
        if stage is not None and stage not in session.completed:
            # A completed stage is never re-checked (spec: completed stages cannot be
            # retried); the request then just reports progress or proceeds.
            if (stage not in offered and stage not in unoffered) or stage not in checkers:
                raise required("M_UNRECOGNIZED", f"Authentication type {stage} is not offered")
            try:
                await checkers[stage](session, auth)
            except StageFailed as e:
                raise required(e.errcode, e.error) from None
            if not await self._store.mark_stage_completed(session.session_id, stage):
                raise _unknown_session()
            session = await self._existing_session(session.session_id, uri, method, user_id)

        if not any(all(s in session.completed for s in f) for f in flows):
            raise required()
        if keep_session:
            found, token = await self._store.keep_claimed(session.session_id)
        else:
            found, token = await self._store.claim_session(session.session_id)
        if not found:
            raise _unknown_session()
        return CompletedAuth(session.session_id, session.user_id, token)

    async def complete_sso(self, session_id: str, user_id: str | None) -> bool:
        """An SSO sign-in made for a session (the m.login.sso stage, done out of band by
        the SSO callback): complete when the signed-in user is the session's own; anyone
        else's sign-in spoils the session (its next request gets 403, as Synapse)."""
        if len(session_id) > MAX_SESSION_ID_LENGTH:
            return False
        session = await self._store.get_session(session_id)
        if session is None or session.created_ts < self._clock_ms() - SESSION_LIFETIME_MS:
            return False
        if session.user_id is None or session.user_id != user_id:
            await self._store.set_params(session_id, {SSO_MISMATCH: True})
            return False
        return await self._store.mark_stage_completed(session_id, SSO)

    async def complete_out_of_band(
        self, session_id: str, stage: str, checker: StageChecker, auth: Mapping[str, Any]
    ) -> bool:
        """A stage done on its fallback page (spec: "Fallback"): ``checker`` checks
        ``auth`` (StageFailed when wrong) and the stage is recorded for the session. False:
        the session is unknown or expired."""
        if len(session_id) > MAX_SESSION_ID_LENGTH:
            return False
        session = await self._store.get_session(session_id)
        if session is None or session.created_ts < self._clock_ms() - SESSION_LIFETIME_MS:
            return False
        if stage in session.completed:
            return True
        await checker(session, auth)
        return await self._store.mark_stage_completed(session_id, stage)

    # --- registration sessions: remembered parameters, replayed results ---------------

    async def session_state(self, session_id: str) -> SessionState | None:
        """A live session's remembered parameters and result (None: unknown/expired)."""
        if len(session_id) > MAX_SESSION_ID_LENGTH:
            return None
        found = await self._store.get_session_state(session_id)
        if found is None:
            return None
        created_ts, params, claimed, result = found
        if created_ts < self._clock_ms() - SESSION_LIFETIME_MS:
            return None
        return SessionState(params, claimed, result)

    async def remember_params(self, session_id: str, params: dict[str, Any]) -> None:
        await self._store.set_params(session_id, params)

    async def record_result(self, session_id: str, user_id: str) -> None:
        await self._store.set_result(session_id, user_id)

    async def release(self, session_id: str) -> None:
        """A kept session's operation failed: it may be completed again."""
        await self._store.unclaim(session_id)

    async def reserve_registration_token(self, session: UIAuthSession, token: str) -> bool:
        """For the registration-token stage: hold one use of ``token`` for ``session``."""
        return await self._store.reserve_registration_token(
            session.session_id, token, self._clock_ms()
        )

    async def _new_session(self, uri: str, method: str, user_id: str | None) -> UIAuthSession:
        now = self._clock_ms()
        if now - self._last_sweep_ms > SWEEP_INTERVAL_MS:
            self._last_sweep_ms = now
            await self._store.delete_expired(now - SESSION_LIFETIME_MS)
        session_id = secrets.token_urlsafe(18)
        await self._store.create_session(session_id, uri, method, user_id)
        return UIAuthSession(session_id, now, uri, method, user_id, None, frozenset())

    async def _existing_session(
        self, session_id: str, uri: str, method: str, user_id: str | None
    ) -> UIAuthSession:
        if len(session_id) > MAX_SESSION_ID_LENGTH:
            raise _unknown_session()
        session = await self._store.get_session(session_id)
        if session is None or session.created_ts < self._clock_ms() - SESSION_LIFETIME_MS:
            raise _unknown_session()
        if session.user_id != user_id:
            raise _unknown_session()
        if (session.uri, session.method) != (uri, method):
            raise forbidden("Requested operation has changed during the UI authentication session")
        return session


def _unknown_session() -> MatrixError:
    # Synapse answers an unknown (or used, or expired) session with 400 M_UNKNOWN.
    return MatrixError(400, "M_UNKNOWN", "Unknown or expired session ID")
