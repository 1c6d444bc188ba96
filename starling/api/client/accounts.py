"""Client-Server API: accounts — registration, login, logout, tokens, devices, password
and deactivation.

Spec: client-server-api "Client authentication" (legacy login, registration,
user-interactive auth, refresh, logout, whoami, account management) and the "Device
management" module. The policy lives in `starling.accounts.service.AccountService`;
these handlers parse and shape JSON.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.accounts.email import EmailValidation
from starling.accounts.service import (
    AccountService,
    Device,
    RegistrationRequest,
    identifier_user,
)
from starling.api.client.common import body_flag, body_str
from starling.api.http import json_response, read_json_object
from starling.api.routing import access_token_from, requester_of
from starling.errors import (
    bad_json,
    invalid_param,
    missing_param,
    not_found,
)
from starling.identity.service import ThreepidService

MAX_DEVICES_PER_REQUEST = 1000
MAX_DEVICE_ID_LENGTH = 255


def _device_id(body: dict[str, Any]) -> str | None:
    device_id = body_str(body, "device_id")
    if device_id is not None and not 0 < len(device_id) <= MAX_DEVICE_ID_LENGTH:
        raise invalid_param(f"'device_id' must be 1-{MAX_DEVICE_ID_LENGTH} characters")
    return device_id


def _device_json(device: Device) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "display_name": device.display_name,
        "last_seen_ip": device.last_seen_ip,
        "last_seen_ts": device.last_seen_ts,
    }


def _remote(request: web.Request) -> str:
    return request.remote or "unknown"


class AccountRoutes:
    def __init__(
        self, server_name: str, accounts: AccountService, threepids: ThreepidService
    ) -> None:
        self.server_name = server_name
        self.accounts = accounts
        self.identity = threepids

    # POST /_matrix/client/v3/register
    # (spec: client-server-api/#post_matrixclientv3register)
    async def register(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind", "user")
        body = await read_json_object(request, allow_empty=True)
        refresh = body_flag(body, "refresh_token", False)
        display_name = body_str(body, "initial_device_display_name")
        if kind == "guest":
            result = await self.accounts.register_guest(_remote(request), display_name, refresh)
            return json_response(result)
        if kind != "user":
            raise invalid_param("'kind' must be 'user' or 'guest'")
        req = RegistrationRequest(
            username=body_str(body, "username"),
            password=body_str(body, "password"),
            device_id=_device_id(body),
            initial_device_display_name=display_name,
            inhibit_login=(
                body_flag(body, "inhibit_login", False) if "inhibit_login" in body else None
            ),
            refresh_token=refresh,
            auth=body.get("auth"),
            guest_access_token=body_str(body, "guest_access_token"),
            type=body.get("type"),
        )
        result = await self.accounts.register_user(
            _remote(request), req, request.path, lambda: access_token_from(request)
        )
        return json_response(result)

    # GET /_matrix/client/v3/register/available
    # (spec: client-server-api/#get_matrixclientv3registeravailable)
    async def register_available(self, request: web.Request) -> web.Response:
        username = request.query.get("username")
        if username is None:
            raise missing_param("Missing 'username'")
        await self.accounts.check_username_available(_remote(request), username)
        return json_response({"available": True})

    # GET /_matrix/client/v1/register/m.login.registration_token/validity
    # (spec: client-server-api/#get_matrixclientv1registermloginregistration_tokenvalidity)
    async def token_validity(self, request: web.Request) -> web.Response:
        token = request.query.get("token")
        if token is None:
            raise missing_param("Missing 'token'")
        valid = await self.accounts.registration_token_valid(_remote(request), token)
        return json_response({"valid": valid})

    # GET /_matrix/client/v3/login
    # (spec: client-server-api/#get_matrixclientv3login)
    async def login_flows(self, request: web.Request) -> web.Response:
        return json_response({"flows": self.accounts.login_flows()})

    # POST /_matrix/client/v3/login
    # (spec: client-server-api/#post_matrixclientv3login)
    async def login(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        login_type = body_str(body, "type", required=True)
        assert login_type is not None
        route = self.accounts.login_route(login_type)
        if route == "app_service":
            requester = await self.accounts.app_service_requester(access_token_from(request))
            session = await self.accounts.login_as_app_service_user(
                requester,
                identifier_user(body),
                device_id=_device_id(body),
                initial_display_name=body_str(body, "initial_device_display_name"),
                refreshable=body_flag(body, "refresh_token", False),
            )
            return json_response({**session.to_json(), "home_server": self.server_name})
        if route == "token":
            token = body_str(body, "token", required=True)
            assert token is not None
            session = await self.accounts.login_with_token(
                _remote(request),
                token,
                device_id=_device_id(body),
                initial_display_name=body_str(body, "initial_device_display_name"),
                refreshable=body_flag(body, "refresh_token", False),
            )
            return json_response({**session.to_json(), "home_server": self.server_name})
        if route == "provider":
            session = await self.accounts.login_with_provider(
                _remote(request),
                login_type,
                body,
                device_id=_device_id(body),
                initial_display_name=body_str(body, "initial_device_display_name"),
                refreshable=body_flag(body, "refresh_token", False),
            )
            return json_response({**session.to_json(), "home_server": self.server_name})
        user = await self.accounts.login_identifier(body)
        password = body_str(body, "password", required=True)
        assert password is not None
        session = await self.accounts.login_with_password(
            _remote(request),
            user,
            password,
            device_id=_device_id(body),
            initial_display_name=body_str(body, "initial_device_display_name"),
            refreshable=body_flag(body, "refresh_token", False),
        )
        return json_response({**session.to_json(), "home_server": self.server_name})

    # POST /_matrix/client/v3/refresh
    # (spec: client-server-api/#post_matrixclientv3refresh)
    async def refresh(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        token = body_str(body, "refresh_token", required=True)
        assert token is not None
        session = await self.accounts.refresh(token)
        return json_response(
            {
                "access_token": session.access_token,
                "refresh_token": session.refresh_token,
                "expires_in_ms": session.expires_in_ms,
            }
        )

    # POST /_matrix/client/v3/logout
    # (spec: client-server-api/#post_matrixclientv3logout)
    async def logout(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        await self.accounts.logout(requester)
        return json_response({})

    # POST /_matrix/client/v3/logout/all
    # (spec: client-server-api/#post_matrixclientv3logoutall)
    async def logout_all(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        await self.accounts.logout_all(requester.user_id)
        return json_response({})

    # GET /_matrix/client/v3/account/whoami
    # (spec: client-server-api/#get_matrixclientv3accountwhoami)
    async def whoami(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        out: dict[str, Any] = {"user_id": requester.user_id, "is_guest": requester.is_guest}
        if requester.device_id is not None:
            out["device_id"] = requester.device_id
        return json_response(out)

    # GET /_matrix/client/v3/account/3pid
    # (spec: client-server-api/#get_matrixclientv3account3pid)
    async def threepids(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        return json_response(
            {"threepids": await self.identity.account_threepids(requester.user_id)}
        )

    def _email(self) -> EmailValidation:
        return self.accounts.sending_email()

    # POST /_matrix/client/v3/register/email/requestToken
    # (spec: client-server-api/#post_matrixclientv3registeremailrequesttoken)
    async def register_email_token(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        return json_response(await self._email().request_token(body, registering=True))

    # POST /_matrix/client/v3/account/3pid/email/requestToken
    # (spec: client-server-api/#post_matrixclientv3account3pidemailrequesttoken)
    async def account_email_token(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        return json_response(await self._email().request_token(body, registering=False))

    # POST /_matrix/client/v3/account/3pid/add
    # (spec: client-server-api/#post_matrixclientv3account3pidadd)
    async def add_threepid(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        await self.accounts.add_threepid_by_request(requester, body, request.path, request.method)
        return json_response({})

    # POST /_matrix/client/v3/account/3pid
    # (spec: client-server-api/#post_matrixclientv3account3pid, deprecated: three_pid_creds,
    # no UIA; as Synapse, only a session this server validated, and `bind` is not done here)
    async def add_threepid_deprecated(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        creds = body.get("three_pid_creds", body.get("threePidCreds"))
        if creds is None:
            raise missing_param("Missing 'three_pid_creds'")
        await self._email().add_to_account(requester.user_id, creds)
        return json_response({})

    # POST /_matrix/client/v3/account/3pid/bind
    # (spec: client-server-api/#post_matrixclientv3account3pidbind)
    async def bind_threepid(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        await self.identity.bind(requester.user_id, await read_json_object(request))
        return json_response({})

    # POST /_matrix/client/v3/account/3pid/unbind
    # (spec: client-server-api/#post_matrixclientv3account3pidunbind)
    async def unbind_threepid(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        result = await self.identity.unbind_request(requester.user_id, body)
        return json_response({"id_server_unbind_result": result})

    # POST /_matrix/client/v3/account/3pid/delete
    # (spec: client-server-api/#post_matrixclientv3account3piddelete)
    async def delete_threepid(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        result = await self.identity.delete_request(requester.user_id, body)
        return json_response({"id_server_unbind_result": result})

    # POST /_matrix/client/v3/account/password
    # (spec: client-server-api/#post_matrixclientv3accountpassword)
    async def change_password(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        new_password = body_str(body, "new_password", required=True)
        assert new_password is not None
        logout_devices = body_flag(body, "logout_devices", True)
        await self.accounts.change_password_by_request(
            requester,
            new_password,
            body.get("auth"),
            request.path,
            request.method,
            logout_devices=logout_devices,
        )
        return json_response({})

    # POST /_matrix/client/v3/account/deactivate
    # (spec: client-server-api/#post_matrixclientv3accountdeactivate)
    async def deactivate(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request, allow_empty=True)
        erase = body_flag(body, "erase", False)
        result = await self.accounts.deactivate_by_request(
            requester,
            body.get("auth"),
            request.path,
            request.method,
            erase=erase,
            id_server=body_str(body, "id_server"),
        )
        return json_response({"id_server_unbind_result": result})

    # GET /_matrix/client/v3/devices
    # (spec: client-server-api/#get_matrixclientv3devices)
    async def list_devices(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        devices = await self.accounts.list_devices(requester.user_id)
        return json_response({"devices": [_device_json(d) for d in devices]})

    # GET /_matrix/client/v3/devices/{deviceId}
    # (spec: client-server-api/#get_matrixclientv3devicesdeviceid)
    async def get_device(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        device = await self.accounts.get_device(requester.user_id, request.match_info["deviceId"])
        if device is None:
            raise not_found("No such device")
        return json_response(_device_json(device))

    # PUT /_matrix/client/v3/devices/{deviceId}
    # (spec: client-server-api/#put_matrixclientv3devicesdeviceid)
    async def update_device(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request, allow_empty=True)
        await self.accounts.update_device(
            requester.user_id,
            request.match_info["deviceId"],
            rename="display_name" in body,
            display_name=body_str(body, "display_name"),
        )
        return json_response({})

    # DELETE /_matrix/client/v3/devices/{deviceId}
    # (spec: client-server-api/#delete_matrixclientv3devicesdeviceid)
    async def delete_device(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request, allow_empty=True)
        await self.accounts.delete_device_by_request(
            requester,
            request.match_info["deviceId"],
            body.get("auth"),
            request.path,
            request.method,
        )
        return json_response({})

    # POST /_matrix/client/v3/delete_devices
    # (spec: client-server-api/#post_matrixclientv3delete_devices)
    async def delete_devices(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        devices = body.get("devices")
        if devices is None:
            raise missing_param("Missing 'devices'")
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise bad_json("'devices' must be a list of strings")
        if len(devices) > MAX_DEVICES_PER_REQUEST:
            raise invalid_param(f"At most {MAX_DEVICES_PER_REQUEST} devices per request")
        await self.accounts.delete_devices_by_request(
            requester, devices, body.get("auth"), request.path, request.method
        )
        return json_response({})
