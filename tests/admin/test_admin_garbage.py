"""Every admin route, called by an admin with garbage bodies and made-up identifiers,
answers with a Matrix error or success, never a 500 (both engines)."""

from __future__ import annotations

from typing import Any

from tests.api.test_no_500 import BODIES, PLACEHOLDERS, _fill
from tests.support.harness import Harness


async def test_admin_routes_never_answer_garbage_with_a_500(hs: Harness, admin: str) -> None:
    values = {**PLACEHOLDERS, "deleteId": "nope", "reportId": "12", "serverName": "test.local"}
    app = hs.client.server.app
    routes = sorted(
        {
            (r.method, _fill(r.resource.canonical, values))
            for r in app.router.routes()
            if r.resource is not None
            and r.method not in ("HEAD", "OPTIONS", "*")
            and r.resource.canonical.startswith("/_synapse/admin/")
        }
    )
    assert len(routes) > 60
    failures: list[Any] = []
    for method, path in routes:
        for body in BODIES:
            status, resp = await hs.request(method, path, admin, raw=body)
            if status >= 500 or (
                status >= 400 and not (isinstance(resp, dict) and "errcode" in resp)
            ):
                failures.append((method, path, body, status, resp))
    assert not failures, failures[:10]
    status, _ = await hs.request("GET", "/_synapse/admin/v2/users", admin)
    assert status == 200  # the admin's session survived
