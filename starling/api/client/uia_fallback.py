"""Fallback pages of user-interactive auth stages (spec: client-server-api "Fallback"):
`/_matrix/client/v3/auth/<stage>/fallback/web?session=<id>` is an HTML page that does the
stage in a browser and then tells the application (`window.onAuthDone` or
`postMessage("authDone")`), which resubmits its request with just the session.

m.login.recaptcha is here (Google's widget with the server's public key; the form POSTs
back to the same URL, as Synapse's page does). m.login.sso's page is in `sso.py`.
"""

from __future__ import annotations

import html
import secrets
from urllib.parse import quote

from aiohttp import web

from starling.accounts.recaptcha import MAX_RESPONSE_LENGTH, RECAPTCHA
from starling.accounts.service import AccountService
from starling.accounts.uia import MAX_SESSION_ID_LENGTH, StageFailed
from starling.api.routing import Auth, Route, get, post
from starling.errors import MatrixError, missing_param

RECAPTCHA_SCRIPT = "https://www.recaptcha.net/recaptcha/api.js"
# What Google's widget loads (its script, its frames) and nothing else.
_RECAPTCHA_CSP = (
    "default-src 'none'; "
    "script-src 'nonce-{nonce}' https://www.recaptcha.net https://www.gstatic.com "
    "https://www.google.com; "
    "frame-src https://www.recaptcha.net https://www.google.com; "
    "style-src 'unsafe-inline'; form-action 'self'; frame-ancestors *"
)
# The spec's snippet, run once the stage is done.
_DONE_SCRIPT = (
    "if (window.onAuthDone) { window.onAuthDone(); } "
    "else if (window.opener && window.opener.postMessage) "
    '{ window.opener.postMessage("authDone", "*"); }'
)


def _page(title: str, body: str, nonce: str, status: int = 200) -> web.Response:
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(
        status=status,
        text=page,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            # Applications may show the page in an embedded browser (or an iframe).
            "Content-Security-Policy": _RECAPTCHA_CSP.format(nonce=nonce),
        },
    )


def _session(request: web.Request, form: dict[str, str] | None = None) -> str:
    session = request.query.get("session") or (form or {}).get("session")
    if not session:
        raise missing_param("Missing 'session'")
    if len(session) > MAX_SESSION_ID_LENGTH:
        raise MatrixError(400, "M_INVALID_PARAM", "'session' is too long")
    return session


class UiaFallbackRoutes:
    def __init__(self, accounts: AccountService) -> None:
        self.accounts = accounts

    def _captcha_page(self, session: str, error: str | None = None) -> web.Response:
        recaptcha = self.accounts.recaptcha
        if recaptcha is None:
            raise MatrixError(404, "M_UNRECOGNIZED", "reCAPTCHA is not configured here")
        nonce = secrets.token_urlsafe(12)
        action = "?session=" + quote(session, safe="")
        notice = f"<p><strong>{html.escape(error)}</strong></p>" if error else ""
        body = (
            "<p>Please confirm that you are not a robot, then continue.</p>"
            f"{notice}"
            f'<script nonce="{nonce}" src="{RECAPTCHA_SCRIPT}" async defer></script>'
            f'<form method="post" action="{html.escape(action)}">'
            f'<input type="hidden" name="session" value="{html.escape(session)}">'
            f'<div class="g-recaptcha" data-sitekey="{html.escape(recaptcha.public_key)}">'
            '</div><p><input type="submit" value="Continue"></p></form>'
        )
        return _page("Authentication", body, nonce, 200 if error is None else 401)

    # GET /_matrix/client/{r0,v3}/auth/m.login.recaptcha/fallback/web?session=...
    # (spec: client-server-api "Fallback")
    async def recaptcha_page(self, request: web.Request) -> web.Response:
        return self._captcha_page(_session(request))

    # POST /_matrix/client/{r0,v3}/auth/m.login.recaptcha/fallback/web?session=...
    # (spec: client-server-api "Fallback"; the page's form, g-recaptcha-response being the
    # widget's answer, as Synapse's page posts it)
    async def recaptcha_submit(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > 4 * 4096:
            raise MatrixError(413, "M_TOO_LARGE", "Form too large")
        try:
            posted = await request.post()
        except (UnicodeDecodeError, ValueError):
            raise MatrixError(400, "M_INVALID_PARAM", "Malformed form") from None
        form = {k: v for k, v in posted.items() if isinstance(v, str)}
        session = _session(request, form)
        response = form.get("g-recaptcha-response", "")[: MAX_RESPONSE_LENGTH + 1]
        remote = request.remote or "unknown"
        try:
            known = await self.accounts.complete_recaptcha_fallback(session, response, remote)
        except StageFailed as e:
            return self._captcha_page(session, e.error)
        if not known:
            nonce = secrets.token_urlsafe(12)
            return _page(
                "Authentication failed",
                "<p>This authentication session is unknown or has expired.</p>",
                nonce,
                400,
            )
        nonce = secrets.token_urlsafe(12)
        return _page(
            "Authentication complete",
            "<p>Thank you. Return to the application to carry on.</p>"
            f'<script nonce="{nonce}">{_DONE_SCRIPT}</script>',
            nonce,
        )


def uia_fallback_routes(accounts: AccountService, versions: tuple[str, ...]) -> list[Route]:
    routes = UiaFallbackRoutes(accounts)
    path = f"/auth/{RECAPTCHA}/fallback/web"
    return [
        get(path, routes.recaptcha_page, Auth.NONE, versions=versions),
        post(path, routes.recaptcha_submit, Auth.NONE, versions=versions),
    ]
