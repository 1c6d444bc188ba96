"""Client login via SSO (spec: client-server-api "Client login via SSO"): the redirect to
an identity provider, and the OpenID Connect callback at Synapse's path. The flow and its
checks are `starling.accounts.oidc`."""

from __future__ import annotations

from aiohttp import web

from starling.accounts.oidc import COOKIE, SESSION_LIFETIME_MS, SsoError, SsoRedirect, SsoService
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


class SsoRoutes:
    def __init__(self, sso: SsoService, secure_cookies: bool) -> None:
        self.sso = sso
        self.secure = secure_cookies

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
