"""`starling admin ...`: the admin API from a terminal or a script.

Every command is one or a few HTTP calls to a running server's Synapse-compatible admin
API (so it works against Synapse too), with the server URL and an admin access token
from ``--server`` / ``--token`` or ``STARLING_ADMIN_URL`` / ``STARLING_ADMIN_TOKEN``.
Output is a plain table, or the API's JSON with ``--json``. Exit codes: 0 done, 1 the
server refused (its Matrix error is printed), 2 bad usage or an unreachable server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp
import orjson

ADMIN = "/_synapse/admin"
DEFAULT_URL = "http://127.0.0.1:8008"
REQUEST_TIMEOUT = 60
DELETE_WAIT_SECONDS = 300


class AdminError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        if isinstance(body, dict):
            message = f"{body.get('errcode', 'error')}: {body.get('error', '')}"
        else:
            message = str(body)[:200]
        super().__init__(f"HTTP {status} {message}")


class UsageError(Exception):
    """Bad usage the server never saw (exit 2)."""


class AdminClient:
    """The few HTTP calls the commands make, with the admin's token."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str | None) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._token = token

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        *,
        auth: bool = True,
    ) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            if not self._token:
                raise UsageError("no access token (--token or STARLING_ADMIN_TOKEN)")
            headers["Authorization"] = f"Bearer {self._token}"
        data = orjson.dumps(body) if body is not None else None
        async with self._session.request(
            method, self._base + path, data=data, params=params, headers=headers
        ) as resp:
            raw = await resp.read()
            try:
                parsed = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                parsed = raw.decode("utf-8", "replace")
            if resp.status >= 400:
                raise AdminError(resp.status, parsed)
            return parsed


def _q(value: str) -> str:
    return quote(value, safe="")


def _mxc(uri: str) -> tuple[str, str]:
    if not uri.startswith("mxc://") or uri.count("/") != 3:
        raise UsageError(f"{uri!r} is not an mxc:// URI")
    server, media_id = uri[len("mxc://") :].split("/")
    return server, media_id


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def print_table(out: TextIO, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    out.write(
        "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n"
    )
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def print_fields(out: TextIO, obj: dict[str, Any]) -> None:
    width = max((len(k) for k in obj), default=0)
    for key, value in obj.items():
        out.write(f"{key.ljust(width)}  {_cell(value)}\n")


# --- commands: each takes (client, args) and returns what to print -------------------------

Result = tuple[Any, Callable[[TextIO, Any], object] | None]


def _table_of(key: str, columns: Sequence[str]) -> Callable[[TextIO, Any], None]:
    def show(out: TextIO, body: Any) -> None:
        print_table(out, body[key], columns)
        if "total" in body or "total_rooms" in body:
            total = body.get("total", body.get("total_rooms"))
            out.write(f"({len(body[key])} of {total})\n")

    return show


def _fields(out: TextIO, body: Any) -> None:
    print_fields(out, body)


def _done(message: str) -> Callable[[TextIO, Any], object]:
    return lambda out, _body: out.write(message + "\n")


async def users_list(c: AdminClient, a: argparse.Namespace) -> Result:
    params = {"limit": str(a.limit), "from": str(a.start), "order_by": a.order_by}
    if a.name:
        params["name"] = a.name
    if a.deactivated:
        params["deactivated"] = "true"
    if a.admins:
        params["admins"] = "true"
    if a.locked:
        params["locked"] = "true"
    if a.pending:
        params["approved"] = "false"
    body = await c.call("GET", f"{ADMIN}/v2/users", params=params)
    columns = ["name", "displayname", "admin", "deactivated", "locked", "creation_ts"]
    return body, _table_of("users", columns)


async def users_show(c: AdminClient, a: argparse.Namespace) -> Result:
    return await c.call("GET", f"{ADMIN}/v2/users/{_q(a.user)}"), _fields


async def users_create(c: AdminClient, a: argparse.Namespace) -> Result:
    body: dict[str, Any] = {"admin": a.admin}
    password = a.password if a.password is not None else _ask_password()
    if password:
        body["password"] = password
    if a.displayname is not None:
        body["displayname"] = a.displayname
    if a.email:
        body["threepids"] = [{"medium": "email", "address": e} for e in a.email]
    if a.user_type is not None:
        body["user_type"] = a.user_type or None
    return await c.call("PUT", f"{ADMIN}/v2/users/{_q(a.user)}", body), _fields


async def users_modify(c: AdminClient, a: argparse.Namespace, change: dict[str, Any]) -> Result:
    return await c.call("PUT", f"{ADMIN}/v2/users/{_q(a.user)}", change), _fields


async def users_deactivate(c: AdminClient, a: argparse.Namespace) -> Result:
    body = await c.call("POST", f"{ADMIN}/v1/deactivate/{_q(a.user)}", {"erase": a.erase})
    return body, _done(f"{a.user} deactivated" + (" and erased" if a.erase else ""))


async def users_reset_password(c: AdminClient, a: argparse.Namespace) -> Result:
    password = a.password if a.password is not None else _ask_password()
    body = {"new_password": password, "logout_devices": not a.keep_devices}
    result = await c.call("POST", f"{ADMIN}/v1/reset_password/{_q(a.user)}", body)
    return result, _done(f"password of {a.user} changed")


async def users_devices(c: AdminClient, a: argparse.Namespace) -> Result:
    body = await c.call("GET", f"{ADMIN}/v2/users/{_q(a.user)}/devices")
    columns = ["device_id", "display_name", "last_seen_ip", "last_seen_ts"]
    return body, _table_of("devices", columns)


async def users_whois(c: AdminClient, a: argparse.Namespace) -> Result:
    body = await c.call("GET", f"{ADMIN}/v1/whois/{_q(a.user)}")

    def show(out: TextIO, b: Any) -> None:
        rows = [
            {"device_id": device, **connection}
            for device, info in sorted(b["devices"].items())
            for session in info["sessions"]
            for connection in session["connections"]
        ]
        print_table(out, rows, ["device_id", "ip", "last_seen", "user_agent"])

    return body, show


async def _wait_task(
    c: AdminClient, path: str, wait: bool, done: Sequence[str] = ("complete", "failed")
) -> dict[str, Any]:
    """Poll a background task's status (purge, redaction) until it ends or time is up."""
    deadline = time.monotonic() + DELETE_WAIT_SECONDS
    status: dict[str, Any] = {"status": "scheduled"}
    while wait and time.monotonic() < deadline:
        status = await c.call("GET", path)
        if status["status"] in done:
            break
        await asyncio.sleep(0.2)
    return status


async def users_redact(c: AdminClient, a: argparse.Namespace) -> Result:
    request: dict[str, Any] = {"rooms": a.room or [], "use_admin": a.use_admin}
    if a.reason:
        request["reason"] = a.reason
    if a.limit is not None:
        request["limit"] = a.limit
    started = await c.call("POST", f"{ADMIN}/v1/user/{_q(a.user)}/redact", request)
    redact_id = started["redact_id"]
    status = await _wait_task(c, f"{ADMIN}/v1/user/redact_status/{_q(redact_id)}", a.wait)
    status = {"redact_id": redact_id, **status}

    def show(out: TextIO, b: Any) -> None:
        out.write(f"redaction {b['redact_id']}: {b['status']}\n")
        for event_id, error in (b.get("failed_redactions") or {}).items():
            out.write(f"  not redacted {event_id}: {error}\n")

    return status, show


async def users_rooms(c: AdminClient, a: argparse.Namespace) -> Result:
    body = await c.call("GET", f"{ADMIN}/v1/users/{_q(a.user)}/joined_rooms")
    return body, lambda out, b: out.write("".join(f"{r}\n" for r in b["joined_rooms"]))


async def users_login_as(c: AdminClient, a: argparse.Namespace) -> Result:
    body = await c.call("POST", f"{ADMIN}/v1/users/{_q(a.user)}/login", {})
    return body, lambda out, b: out.write(b["access_token"] + "\n")


async def users_shadow_ban(c: AdminClient, a: argparse.Namespace) -> Result:
    method = "DELETE" if a.undo else "POST"
    body = await c.call(method, f"{ADMIN}/v1/users/{_q(a.user)}/shadow_ban")
    return body, _done(f"{a.user} {'no longer ' if a.undo else ''}shadow-banned")


async def rooms_list(c: AdminClient, a: argparse.Namespace) -> Result:
    params = {"limit": str(a.limit), "from": str(a.start), "order_by": a.order_by}
    if a.search:
        params["search_term"] = a.search
    body = await c.call("GET", f"{ADMIN}/v1/rooms", params=params)
    columns = ["room_id", "name", "canonical_alias", "joined_members", "public", "encryption"]
    return body, _table_of("rooms", columns)


async def rooms_show(c: AdminClient, a: argparse.Namespace) -> Result:
    return await c.call("GET", f"{ADMIN}/v1/rooms/{_q(a.room)}"), _fields


async def rooms_members(c: AdminClient, a: argparse.Namespace) -> Result:
    body = await c.call("GET", f"{ADMIN}/v1/rooms/{_q(a.room)}/members")
    return body, lambda out, b: out.write("".join(f"{m}\n" for m in b["members"]))


async def rooms_delete(c: AdminClient, a: argparse.Namespace) -> Result:
    request: dict[str, Any] = {"block": a.block, "purge": a.purge}
    if a.new_room_user:
        request["new_room_user_id"] = a.new_room_user
        if a.message:
            request["message"] = a.message
    started = await c.call("DELETE", f"{ADMIN}/v2/rooms/{_q(a.room)}", request)
    delete_id = started["delete_id"]
    deadline = time.monotonic() + DELETE_WAIT_SECONDS
    status: dict[str, Any] = {"status": "scheduled", "delete_id": delete_id}
    while a.wait and time.monotonic() < deadline:
        status = await c.call("GET", f"{ADMIN}/v2/rooms/delete_status/{_q(delete_id)}")
        if status["status"] in ("complete", "failed"):
            break
        await asyncio.sleep(0.2)

    def show(out: TextIO, body: Any) -> None:
        out.write(f"delete {body['delete_id']}: {body['status']}\n")
        shutdown = body.get("shutdown_room") or {}
        for user in shutdown.get("kicked_users", []):
            out.write(f"  removed {user}\n")
        if body.get("error"):
            out.write(f"  error: {body['error']}\n")

    if status.get("status") == "failed":
        raise AdminError(500, {"errcode": "M_UNKNOWN", "error": status.get("error", "")})
    return status, show


async def rooms_purge_history(c: AdminClient, a: argparse.Namespace) -> Result:
    request: dict[str, Any] = {"delete_local_events": a.delete_local}
    if a.before_event:
        request["purge_up_to_event_id"] = a.before_event
    elif a.days is not None:
        request["purge_up_to_ts"] = int((time.time() - a.days * 86400) * 1000)
    else:
        raise UsageError("give --before-event or --days")
    started = await c.call("POST", f"{ADMIN}/v1/purge_history/{_q(a.room)}", request)
    purge_id = started["purge_id"]
    status = await _wait_task(c, f"{ADMIN}/v1/purge_history_status/{_q(purge_id)}", a.wait)
    status = {"purge_id": purge_id, **status}
    if status["status"] == "failed":
        raise AdminError(500, {"errcode": "M_UNKNOWN", "error": status.get("error", "")})
    return status, lambda out, b: out.write(f"purge {b['purge_id']}: {b['status']}\n")


async def rooms_block(c: AdminClient, a: argparse.Namespace, block: bool) -> Result:
    body = await c.call("PUT", f"{ADMIN}/v1/rooms/{_q(a.room)}/block", {"block": block})
    return body, _done(f"{a.room} {'blocked' if block else 'unblocked'}")


async def rooms_join(c: AdminClient, a: argparse.Namespace) -> Result:
    body = await c.call("POST", f"{ADMIN}/v1/join/{_q(a.room)}", {"user_id": a.user})
    return body, _done(f"{a.user} joined {body.get('room_id', a.room)}")


async def rooms_make_admin(c: AdminClient, a: argparse.Namespace) -> Result:
    path = f"{ADMIN}/v1/rooms/{_q(a.room)}/make_room_admin"
    body = await c.call("POST", path, {"user_id": a.user})
    return body, _done(f"{a.user} is now an admin of {a.room}")


async def media_list(c: AdminClient, a: argparse.Namespace) -> Result:
    params = {"limit": str(a.limit), "from": str(a.start)}
    body = await c.call("GET", f"{ADMIN}/v1/users/{_q(a.user)}/media", params=params)
    columns = ["media_id", "media_type", "media_length", "upload_name", "quarantined_by"]
    return body, _table_of("media", columns)


async def media_quarantine(c: AdminClient, a: argparse.Namespace) -> Result:
    server, media_id = _mxc(a.mxc)
    action = "unquarantine" if a.undo else "quarantine"
    body = await c.call("POST", f"{ADMIN}/v1/media/{action}/{_q(server)}/{_q(media_id)}", {})
    return body, _done(f"{a.mxc} {action}d")


async def media_delete(c: AdminClient, a: argparse.Namespace) -> Result:
    server, media_id = _mxc(a.mxc)
    body = await c.call("DELETE", f"{ADMIN}/v1/media/{_q(server)}/{_q(media_id)}")
    return body, _done(f"{a.mxc} deleted")


async def media_purge_remote(c: AdminClient, a: argparse.Namespace) -> Result:
    before = int((time.time() - a.days * 86400) * 1000)
    body = await c.call(
        "POST", f"{ADMIN}/v1/purge_media_cache", {}, params={"before_ts": str(before)}
    )
    return body, lambda out, b: out.write(f"{b['deleted']} cached remote media deleted\n")


async def reports_list(c: AdminClient, a: argparse.Namespace) -> Result:
    params = {"limit": str(a.limit), "from": str(a.start)}
    body = await c.call("GET", f"{ADMIN}/v1/event_reports", params=params)
    columns = ["id", "received_ts", "room_id", "event_id", "user_id", "sender", "reason"]
    return body, _table_of("event_reports", columns)


async def reports_show(c: AdminClient, a: argparse.Namespace) -> Result:
    return await c.call("GET", f"{ADMIN}/v1/event_reports/{a.id}"), _fields


async def reports_delete(c: AdminClient, a: argparse.Namespace) -> Result:
    body = await c.call("DELETE", f"{ADMIN}/v1/event_reports/{a.id}")
    return body, _done(f"report {a.id} deleted")


async def notice(c: AdminClient, a: argparse.Namespace) -> Result:
    body = {"user_id": a.user, "content": {"msgtype": "m.text", "body": a.text}}
    result = await c.call("POST", f"{ADMIN}/v1/send_server_notice", body)
    return result, _done(f"notice sent to {a.user} ({result.get('event_id', '')})")


async def login(c: AdminClient, a: argparse.Namespace) -> Result:
    password = a.password if a.password is not None else _ask_password(confirm=False)
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": a.user},
        "password": password,
        "initial_device_display_name": "starling admin",
    }
    result = await c.call("POST", "/_matrix/client/v3/login", body, auth=False)
    return result, lambda out, b: out.write(b["access_token"] + "\n")


def _ask_password(confirm: bool = True) -> str:
    if not sys.stdin.isatty():
        raise UsageError("give --password (no terminal to ask on)")
    import getpass

    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Again: ") != password:
        raise UsageError("the passwords differ")
    return password


# --- the parser -------------------------------------------------------------------------------


def _paging(p: argparse.ArgumentParser, order_by: str | None = None) -> None:
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.add_argument("--from", dest="start", type=int, default=0, help="offset (a next_token)")
    if order_by is not None:
        p.add_argument("--order-by", default=order_by, help=f"sort key (default {order_by})")


def add_admin_commands(sub: Any) -> None:
    """`starling admin ...` under the top-level parser's subcommands."""
    admin = sub.add_parser(
        "admin",
        help="manage users, rooms, media and reports through the admin API",
        description="Call a running server's admin API (Synapse's paths) with an admin's "
        "access token. STARLING_ADMIN_URL and STARLING_ADMIN_TOKEN supply the defaults.",
    )
    admin.add_argument(
        "--server",
        default=os.environ.get("STARLING_ADMIN_URL", DEFAULT_URL),
        help=f"the server's client URL (default $STARLING_ADMIN_URL or {DEFAULT_URL})",
    )
    admin.add_argument(
        "--token",
        default=os.environ.get("STARLING_ADMIN_TOKEN"),
        help="an admin's access token (default $STARLING_ADMIN_TOKEN)",
    )
    admin.add_argument("--json", action="store_true", help="print the API's JSON")
    groups = admin.add_subparsers(dest="admin_group", metavar="GROUP")
    groups.required = True

    def command(parent: Any, name: str, help_text: str, run: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=cmd_admin, admin_run=run)
        return p

    p = command(groups, "login", "log in with a password and print the access token", login)
    p.add_argument("user", help="localpart or user ID")
    p.add_argument("--password", help="prompted for on a terminal if omitted")

    users = groups.add_parser("users", help="user accounts").add_subparsers(
        dest="admin_action", metavar="ACTION"
    )
    users.required = True
    p = command(users, "list", "list users", users_list)
    _paging(p, "name")
    p.add_argument("--name", help="user ID or display name contains")
    p.add_argument("--deactivated", action="store_true", help="include deactivated users")
    p.add_argument("--admins", action="store_true", help="only server admins")
    p.add_argument("--locked", action="store_true", help="include locked users")
    p.add_argument("--pending", action="store_true", help="only accounts awaiting approval")
    command(users, "show", "one user's details", users_show).add_argument("user")
    p = command(users, "create", "create a user (or change an existing one)", users_create)
    p.add_argument("user", help="@localpart:server")
    p.add_argument("--password", help="prompted for on a terminal if omitted")
    p.add_argument("--displayname")
    p.add_argument("--admin", action="store_true", help="make them a server admin")
    p.add_argument("--email", action="append", help="their e-mail address (repeatable)")
    p.add_argument("--user-type", help="support or bot ('' for an ordinary user)")
    p = command(users, "deactivate", "deactivate an account", users_deactivate)
    p.add_argument("user")
    p.add_argument("--erase", action="store_true", help="also erase the profile (GDPR)")
    p = command(users, "reset-password", "set a new password", users_reset_password)
    p.add_argument("user")
    p.add_argument("--password", help="prompted for on a terminal if omitted")
    p.add_argument("--keep-devices", action="store_true", help="do not log the devices out")
    for name, change, text in [
        ("lock", {"locked": True}, "lock an account (every session stops)"),
        ("unlock", {"locked": False}, "unlock an account"),
        ("approve", {"approved": True}, "approve an account waiting for approval"),
        ("make-admin", {"admin": True}, "make a user a server admin"),
        ("revoke-admin", {"admin": False}, "take server admin away"),
    ]:
        command(
            users,
            name,
            text,
            lambda c, a, change=change: users_modify(c, a, change),
        ).add_argument("user")
    command(users, "devices", "a user's devices", users_devices).add_argument("user")
    command(users, "rooms", "the rooms a user is joined to", users_rooms).add_argument("user")
    command(users, "whois", "where and with what a user was last seen", users_whois).add_argument(
        "user"
    )
    p = command(users, "redact", "redact a user's messages (spam clean-up)", users_redact)
    p.add_argument("user")
    p.add_argument("--room", action="append", help="only in this room (repeatable; default all)")
    p.add_argument("--reason", help="shown with each redaction")
    p.add_argument("--limit", type=int, help="newest events per room (default 1000)")
    p.add_argument("--use-admin", action="store_true", help="redact as the admin")
    p.add_argument(
        "--wait", action=argparse.BooleanOptionalAction, default=True, help="wait until done"
    )
    p = command(users, "login-as", "print an access token for the user", users_login_as)
    p.add_argument("user")
    p = command(users, "shadow-ban", "shadow-ban a user", users_shadow_ban)
    p.add_argument("user")
    p.add_argument("--undo", action="store_true", help="lift the shadow-ban")

    rooms = groups.add_parser("rooms", help="rooms").add_subparsers(
        dest="admin_action", metavar="ACTION"
    )
    rooms.required = True
    p = command(rooms, "list", "list rooms", rooms_list)
    _paging(p, "name")
    p.add_argument("--search", help="name, alias or room ID contains")
    command(rooms, "show", "one room's details", rooms_show).add_argument("room")
    command(rooms, "members", "a room's joined members", rooms_members).add_argument("room")
    p = command(rooms, "delete", "make everyone leave a room and purge it", rooms_delete)
    p.add_argument("room")
    p.add_argument("--block", action="store_true", help="and refuse joins from now on")
    p.add_argument("--new-room-user", help="this local user opens a room the members move to")
    p.add_argument("--message", help="what --new-room-user says there first")
    p.add_argument(
        "--purge",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="remove it from the database (default: yes)",
    )
    p.add_argument(
        "--wait", action=argparse.BooleanOptionalAction, default=True, help="wait until done"
    )
    p = command(rooms, "purge-history", "delete a room's old messages", rooms_purge_history)
    p.add_argument("room")
    p.add_argument("--before-event", help="delete what came before this event ID")
    p.add_argument("--days", type=float, help="delete what is older than this many days")
    p.add_argument("--delete-local", action="store_true", help="this server's users' messages too")
    p.add_argument(
        "--wait", action=argparse.BooleanOptionalAction, default=True, help="wait until done"
    )
    command(rooms, "block", "block a room", lambda c, a: rooms_block(c, a, True)).add_argument(
        "room"
    )
    command(rooms, "unblock", "unblock a room", lambda c, a: rooms_block(c, a, False)).add_argument(
        "room"
    )
    p = command(rooms, "join", "join a local user to a room", rooms_join)
    p.add_argument("room", help="room ID or alias")
    p.add_argument("user")
    p = command(rooms, "make-admin", "give a user the highest power level", rooms_make_admin)
    p.add_argument("room", help="room ID or alias")
    p.add_argument("user")

    media = groups.add_parser("media", help="media").add_subparsers(
        dest="admin_action", metavar="ACTION"
    )
    media.required = True
    p = command(media, "list", "a user's uploads", media_list)
    _paging(p)
    p.add_argument("user")
    p = command(media, "quarantine", "stop serving a media item", media_quarantine)
    p.add_argument("mxc", help="mxc://server/media_id")
    p.add_argument("--undo", action="store_true", help="serve it again")
    command(media, "delete", "delete a local media item", media_delete).add_argument("mxc")
    p = command(media, "purge-remote", "drop cached remote media", media_purge_remote)
    p.add_argument("--days", type=float, default=30, help="not used for this long (default 30)")

    reports = groups.add_parser("reports", help="content reports").add_subparsers(
        dest="admin_action", metavar="ACTION"
    )
    reports.required = True
    _paging(command(reports, "list", "list reports, newest first", reports_list))
    command(reports, "show", "one report", reports_show).add_argument("id", type=int)
    command(reports, "delete", "delete a report", reports_delete).add_argument("id", type=int)

    p = command(groups, "notice", "send a server notice to a user", notice)
    p.add_argument("user")
    p.add_argument("text")


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = AdminClient(session, args.server, args.token)
        body, show = await args.admin_run(client, args)
    if args.json or show is None:
        out.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        show(out, body)
    return 0


def cmd_admin(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        return asyncio.run(_run(args, out))
    except UsageError as e:
        sys.stderr.write(f"starling admin: {e}\n")
        return 2
    except AdminError as e:
        sys.stderr.write(f"starling admin: {e}\n")
        return 1
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        sys.stderr.write(f"starling admin: cannot reach {args.server}: {e}\n")
        return 2
