"""Client-Server API: push rules and pushers.

Spec: client-server-api modules/push.md, pushrules.yaml (#get_matrixclientv3pushrules,
#get_matrixclientv3pushrulesglobal, GET/PUT/DELETE
#put_matrixclientv3pushrulesglobalkindruleid, .../enabled, .../actions) and pusher.yaml
(#get_matrixclientv3pushers, #post_matrixclientv3pushersset), notifications.yaml
(#get_matrixclientv3notifications).

Only the "global" scope exists. Server-default rules (IDs starting with ".") can be
enabled/disabled and given other actions, but not created, moved or deleted (400).
Pushers are stored and listed; HTTP pushers are delivered to in the background
(starling.push.delivery). GET /notifications reads what the push evaluator stored
(starling.push.notifications).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.errors import MatrixError, invalid_param, not_found
from starling.protocol import push_rules as pr
from starling.push.notifications import NotificationsService
from starling.push.pushers import PusherService
from starling.push.service import PushRulesService

T = TypeVar("T")


async def _push_errors(call: Awaitable[T]) -> T:
    """The protocol core's rule errors as Matrix errors."""
    try:
        return await call
    except pr.PushRuleNotFound as e:
        raise not_found(str(e.args[0]) if e.args else "Unknown push rule") from None
    except pr.PushRuleAnchorNotFound as e:
        raise MatrixError(400, "M_UNKNOWN", str(e.args[0])) from None
    except pr.PushRuleError as e:
        raise invalid_param(str(e)) from None


def _kind(request: web.Request) -> str:
    kind = request.match_info["kind"]
    if kind not in pr.KINDS:
        raise invalid_param(f"Unknown push rule kind {kind!r}")
    return kind


class PushRuleRoutes:
    def __init__(
        self,
        push_rules: PushRulesService,
        pushers: PusherService,
        notifications: NotificationsService,
    ) -> None:
        self.push_rules = push_rules
        self.pushers = pushers
        self.notifications = notifications

    # GET /_matrix/client/v3/pushrules/
    # (spec: client-server-api/#get_matrixclientv3pushrules)
    async def get_all(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        ruleset = await self.push_rules.get_ruleset(requester.user_id)
        return json_response({"global": ruleset})

    # GET /_matrix/client/v3/pushrules/global/
    # (spec: client-server-api/#get_matrixclientv3pushrulesglobal)
    async def get_global(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        return json_response(await self.push_rules.get_ruleset(requester.user_id))

    # GET /_matrix/client/v3/pushrules/global/{kind}/
    # (Synapse serves the rules of one kind, in evaluation order)
    async def get_kind(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        kind = _kind(request)
        ruleset = await self.push_rules.get_ruleset(requester.user_id)
        return json_response(ruleset[kind])

    # GET /_matrix/client/v3/pushrules/{path}
    # PUT /_matrix/client/v3/pushrules/{path}
    # DELETE /_matrix/client/v3/pushrules/{path}
    # (Synapse answers 400 for a path under /pushrules/ that names no scope, kind, rule
    # or attribute — an unknown scope, a missing or empty rule ID, an unknown attribute)
    async def malformed(self, request: web.Request) -> web.Response:
        raise MatrixError(
            400, "M_UNRECOGNIZED", "Push rule paths are /pushrules/global/{kind}/{ruleId}"
        )

    # GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
    # (spec: client-server-api/#get_matrixclientv3pushrulesglobalkindruleid)
    async def get_rule(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        rule = await _push_errors(
            self.push_rules.get_rule(
                requester.user_id, _kind(request), request.match_info["ruleId"]
            )
        )
        return json_response(rule)

    # PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
    # (spec: client-server-api/#put_matrixclientv3pushrulesglobalkindruleid)
    async def put_rule(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        kind = _kind(request)
        body = await read_json_object(request)
        await _push_errors(
            self.push_rules.put_rule(
                requester.user_id,
                kind,
                request.match_info["ruleId"],
                body,
                before=request.query.get("before"),
                after=request.query.get("after"),
            )
        )
        return json_response({})

    # DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
    # (spec: client-server-api/#delete_matrixclientv3pushrulesglobalkindruleid)
    async def delete_rule(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        await _push_errors(
            self.push_rules.delete_rule(
                requester.user_id, _kind(request), request.match_info["ruleId"]
            )
        )
        return json_response({})

    async def _attribute(self, request: web.Request, name: str) -> web.Response:
        requester = requester_of(request)
        rule = await _push_errors(
            self.push_rules.get_rule(
                requester.user_id, _kind(request), request.match_info["ruleId"]
            )
        )
        return json_response({name: rule[name]})

    # GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled
    # (spec: client-server-api/#get_matrixclientv3pushrulesglobalkindruleidenabled)
    async def get_enabled(self, request: web.Request) -> web.Response:
        return await self._attribute(request, "enabled")

    # GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions
    # (spec: client-server-api/#get_matrixclientv3pushrulesglobalkindruleidactions)
    async def get_actions(self, request: web.Request) -> web.Response:
        return await self._attribute(request, "actions")

    # PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled
    # (spec: client-server-api/#put_matrixclientv3pushrulesglobalkindruleidenabled)
    async def put_enabled(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        kind = _kind(request)
        body = await read_json_object(request)
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            raise invalid_param("'enabled' must be a boolean")
        await _push_errors(
            self.push_rules.set_enabled(
                requester.user_id, kind, request.match_info["ruleId"], enabled
            )
        )
        return json_response({})

    # PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions
    # (spec: client-server-api/#put_matrixclientv3pushrulesglobalkindruleidactions)
    async def put_actions(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        kind = _kind(request)
        body = await read_json_object(request)
        if "actions" not in body:
            raise MatrixError(400, "M_MISSING_PARAM", "Missing 'actions'")
        await _push_errors(
            self.push_rules.set_actions(
                requester.user_id, kind, request.match_info["ruleId"], body["actions"]
            )
        )
        return json_response({})

    # GET /_matrix/client/v3/pushers
    # (spec: client-server-api/#get_matrixclientv3pushers)
    async def get_pushers(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        return json_response({"pushers": await self.pushers.get_pushers(requester.user_id)})

    # POST /_matrix/client/v3/pushers/set
    # (spec: client-server-api/#post_matrixclientv3pushersset)
    async def set_pusher(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        await self.pushers.set_pusher(requester.user_id, body, access_token=requester.access_token)
        return json_response({})

    # GET /_matrix/client/v3/notifications
    # (spec: client-server-api/#get_matrixclientv3notifications)
    async def get_notifications(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        query = request.query
        return json_response(
            await self.notifications.get(
                requester.user_id, query.get("from"), query.get("limit"), query.get("only")
            )
        )
