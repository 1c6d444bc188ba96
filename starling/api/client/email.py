"""The emailed validation link and the client's submit_url (accounts/email.py), at
Synapse's path: GET /_synapse/client/email/submit_token?token=&client_secret=&sid= (the
link in the mail: an HTML page) and POST with the same fields as JSON (the spec's
`submit_url`, as the identity service's POST /validate/email/submitToken: {success})."""

from __future__ import annotations

import html

from aiohttp import web

from starling.accounts.email import EmailValidation
from starling.api.http import json_response, read_json_object
from starling.api.routing import Auth, RouteTable, get, post
from starling.errors import MatrixError


def _page(title: str, text: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=(
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(text)}</p></body></html>"
        ),
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
        },
    )


class EmailSubmitRoutes:
    def __init__(self, email: EmailValidation | None) -> None:
        self.email = email

    def _require(self) -> EmailValidation:
        if self.email is None or not self.email.enabled:
            raise MatrixError(404, "M_UNRECOGNIZED", "This server does not validate email")
        return self.email

    async def link(self, request: web.Request) -> web.Response:
        # A browser opens this link: every answer is a page, errors included.
        if self.email is None or not self.email.enabled:
            return _page("This link does not work", "This server does not validate email.", 404)
        email = self.email
        q = request.query
        if await email.submit_token(q.get("sid"), q.get("client_secret"), q.get("token")):
            return _page("Email address confirmed", "Return to your application to carry on.")
        return _page(
            "This link does not work",
            "It is wrong, used up or too old: ask the application to send a new one.",
            400,
        )

    async def submit(self, request: web.Request) -> web.Response:
        email = self._require()
        body = await read_json_object(request)
        ok = await email.submit_token(body.get("sid"), body.get("client_secret"), body.get("token"))
        return json_response({"success": ok})


def email_submit_table(email: EmailValidation | None) -> RouteTable:
    routes = EmailSubmitRoutes(email)
    return RouteTable(
        "email",
        "/_synapse/client/{version}",
        ("email",),
        [
            get("/submit_token", routes.link, Auth.NONE),
            post("/submit_token", routes.submit, Auth.NONE),
        ],
    )
