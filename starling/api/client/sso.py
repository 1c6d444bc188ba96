"""Client login via SSO (spec: client-server-api "Client login via SSO"): the redirect to
an identity provider, and the OpenID Connect callback at Synapse's path. The flow and its
checks are `starling.accounts.oidc`."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable

from aiohttp import web

from starling.accounts.oidc import (
    COOKIE,
    SESSION_LIFETIME_MS,
    SsoError,
    SsoRedirect,
    SsoService,
    sso_page,
)
from starling.accounts.oidc import sso_error_page as error_page
from starling.api.routing import Auth, RouteTable, get
from starling.errors import MatrixError, missing_param


def _redirect_url(request: web.Request) -> str:
    url = request.query.get("redirectUrl")
    if not url:
        raise missing_param("Missing 'redirectUrl'")
    return url


def _html(page: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=page,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            # The pages are ours alone: no framing (clickjacking on "Continue").
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
        },
    )


def _respond(redirect: SsoRedirect, secure: bool) -> web.Response:
    if redirect.location is not None:
        resp = web.Response(
            status=302, headers={"Location": redirect.location, "Cache-Control": "no-store"}
        )
    else:
        resp = _html(redirect.page or "")
    if redirect.cookie is not None:
        resp.set_cookie(
            COOKIE,
            redirect.cookie,
            max_age=SESSION_LIFETIME_MS // 1000,
            path="/_synapse/client/oidc",
            httponly=True,
            secure=secure,
            # Lax: sent on the provider's top-level redirect back, not on cross-site posts.
            samesite="Lax",
        )
    return resp


MAX_SESSION_ID = 256


class SsoRoutes:
    def __init__(
        self,
        sso: SsoService,
        secure_cookies: bool,
        complete_ui_auth: Callable[[str, str, str], Awaitable[bool]] | None = None,
    ) -> None:
        self.sso = sso
        self.secure = secure_cookies
        self.complete_ui_auth = complete_ui_auth

    # GET /_matrix/client/v3/login/sso/redirect
    # (spec: client-server-api/#get_matrixclientv3loginssoredirect)
    async def redirect(self, request: web.Request) -> web.Response:
        url = _redirect_url(request)
        providers = self.sso.providers
        if not providers:
            raise MatrixError(404, "M_NOT_FOUND", "This server has no single sign-on")
        if len(providers) == 1:
            return _respond(await self.start(providers[0][0], url, request), self.secure)
        return _html(self.sso.picker_page(url))

    # GET /_matrix/client/v3/login/sso/redirect/{idpId}
    # (spec: client-server-api/#get_matrixclientv3loginssoredirectidpid)
    async def redirect_to(self, request: web.Request) -> web.Response:
        url = _redirect_url(request)
        return _respond(await self.start(request.match_info["idpId"], url, request), self.secure)

    async def start(self, idp_id: str, url: str, request: web.Request) -> SsoRedirect:
        try:
            return await self.sso.start(idp_id, url, request.remote or "unknown")
        except SsoError as e:
            raise MatrixError(502, "M_UNKNOWN", e.message) from None

    # GET /_matrix/client/v3/login/cas/redirect
    # (Synapse LoginCasRedirectServlet: the legacy m.login.cas redirect)
    async def cas_redirect(self, request: web.Request) -> web.Response:
        cas = self.sso.cas
        if cas is None:
            raise MatrixError(404, "M_UNRECOGNIZED", "CAS sign-in is not enabled here")
        url = _redirect_url(request)
        return _respond(await self.start(cas.id, url, request), self.secure)

    # GET /_matrix/client/v3/login/cas/ticket
    # (Synapse CasTicketServlet: the CAS service URL; the CAS server sends the browser
    # back here with a ticket)
    async def cas_ticket(self, request: web.Request) -> web.Response:
        ticket = request.query.get("ticket", "")
        session = request.query.get("session")
        if session is not None:
            return await self._cas_ui_auth(ticket, session)
        try:
            redirect_url = request.query.get("redirectUrl")
            if redirect_url is None:
                raise SsoError(400, "The sign-in came back without its redirectUrl")
            redirect = await self.sso.cas_login(ticket, redirect_url)
        except SsoError as e:
            return _html(error_page(e), e.status)
        except MatrixError as e:
            return _html(error_page(SsoError(e.status, e.error)), e.status)
        return _respond(redirect, self.secure)

    async def _cas_ui_auth(self, ticket: str, session: str) -> web.Response:
        if self.complete_ui_auth is None or not 0 < len(session) <= MAX_SESSION_ID:
            return _html(error_page(SsoError(400, "Unknown authentication session")), 400)
        try:
            done = await self.sso.cas_ui_auth(ticket, session, self.complete_ui_auth)
        except SsoError as e:
            return _html(error_page(e), e.status)
        if not done:
            # Another user's sign-in (or an unknown session): the page says so, and the
            # application's next request with the session gets 403 (as Synapse, which
            # answers this page with 200 either way).
            return _html(
                sso_page(
                    "Authentication failed",
                    "<p>You signed in as another user than the one this request is for. "
                    "Return to the application.</p>",
                )
            )
        return _html(
            sso_page(
                "Authentication complete",
                "<p>You have confirmed your identity. Return to the application to carry on.</p>",
            )
        )

    # GET /_matrix/client/{r0,v3}/auth/m.login.sso/fallback/web?session=...
    # (spec: client-server-api "Fallback" for m.login.sso: the server's own page)
    async def sso_fallback(self, request: web.Request) -> web.Response:
        session = request.query.get("session")
        if not session or len(session) > MAX_SESSION_ID:
            raise missing_param("Missing 'session'")
        target = self.sso.cas_ui_auth_start(session)
        if target is None:
            raise MatrixError(404, "M_NOT_FOUND", "No single sign-on for this stage here")
        return _html(
            sso_page(
                "Confirm your identity",
                "<p>To continue, sign in again with your single sign-on provider.</p>"
                f'<p><a href="{html.escape(target)}">Continue</a></p>',
            )
        )

    # GET /_synapse/client/oidc/callback
    # (Synapse path for its OpenID Connect callback: the provider sends the browser back)
    async def callback(self, request: web.Request) -> web.Response:
        query = {k: v for k, v in request.query.items()}
        try:
            redirect = await self.sso.callback(query, request.cookies.get(COOKIE))
        except SsoError as e:
            return _html(error_page(e), e.status)
        except MatrixError as e:
            return _html(error_page(SsoError(e.status, e.error)), e.status)
        resp = _respond(redirect, self.secure)
        resp.del_cookie(COOKIE, path="/_synapse/client/oidc")
        return resp


def sso_client_routes(sso: SsoService, secure_cookies: bool) -> SsoRoutes:
    return SsoRoutes(sso, secure_cookies)


def oidc_callback_table(routes: SsoRoutes) -> RouteTable:
    return RouteTable(
        "oidc",
        "/_synapse/client/{version}",
        ("oidc",),
        [get("/callback", routes.callback, Auth.NONE)],
    )
