"""`starling-chat`: the command line of Starling's encrypted client.

    starling-chat --store DIR login --homeserver URL USER_ID --password P
    starling-chat --store DIR create-room [--name N] [--invite USER_ID ...] [--unencrypted]
    starling-chat --store DIR join ROOM
    starling-chat --store DIR rooms [--json]
    starling-chat --store DIR send ROOM TEXT
    starling-chat --store DIR send-file ROOM PATH
    starling-chat --store DIR send-voice ROOM PATH.ogg
    starling-chat --store DIR tail ROOM [--count N] [--timeout S] [--json] [--save-dir D]
    starling-chat --store DIR verify USER_ID [DEVICE_ID] [--yes] [--wait] [--timeout S]
    starling-chat --store DIR files push DIR | files ls [--json] | files pull [PATH] --to DIR
    starling-chat --store DIR tui
    starling-chat --store DIR backup [--recovery-passphrase-file F]
    starling-chat --store DIR restore --recovery-key KEY | --recovery-passphrase-file F
    starling-chat --store DIR devices USER_ID [--json]

The store's secrets are sealed with a key derived from a passphrase: STARLING_CHAT_PASSPHRASE,
or the contents of --passphrase-file, or else a random key kept in DIR/passphrase (mode 0600)
— that last one protects nothing against someone who can read DIR; say so in the threat
model. Exit status 0 on success; an error is one line on stderr and status 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starling_client.api import MatrixError
from starling_client.backup import BackupError
from starling_client.client import Client, Message
from starling_client.files import FileBackup, FileBackupError
from starling_client.store import StoreError
from starling_client.verification import Sas

PASSPHRASE_ENV = "STARLING_CHAT_PASSPHRASE"
IDENTITY_WORDS = {
    "verified": "verified",
    "unverified": "unverified",
    "changed": "CHANGED IDENTITY (their cross-signing key is not the one seen before)",
}


class CliError(Exception):
    pass


def passphrase(args: argparse.Namespace, store_dir: Path) -> str:
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if args.passphrase_file:
        text = Path(args.passphrase_file).read_text(encoding="utf-8").strip()
        if not text:
            raise CliError(f"{args.passphrase_file} is empty")
        return text
    key_file = store_dir / "passphrase"
    if key_file.exists():
        return key_file.read_text(encoding="utf-8").strip()
    store_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        text = secrets.token_urlsafe(32)
        out.write(text)
    return text


def recovery_passphrase(args: argparse.Namespace) -> str | None:
    """The secret-storage passphrase of `backup` / `restore`, from a file (never the
    command line, where other users of the machine could read it)."""
    name = getattr(args, "recovery_passphrase_file", None)
    if not name:
        return None
    text = Path(name).read_text(encoding="utf-8").strip()
    if len(text) < 8:
        raise CliError(f"the recovery passphrase in {name} is too short (8 characters at least)")
    return text


def _message_json(message: Message) -> dict[str, object]:
    return {
        "event_id": message.event_id,
        "room_id": message.room_id,
        "sender": message.sender,
        "origin_server_ts": message.origin_server_ts,
        "msgtype": message.msgtype,
        "body": message.body,
        "encrypted": message.encrypted,
        "sender_device": message.sender_device,
        "verified": message.verified,
    }


def _message_line(message: Message) -> str:
    lock = "🔒" if message.encrypted else "  "
    when = time.strftime("%H:%M", time.localtime(message.origin_server_ts / 1000))
    return f"{when} {lock} {message.sender}: {message.body if message.body is not None else '[' + str(message.msgtype) + ']'}"


async def run(args: argparse.Namespace) -> int:
    store_dir = Path(args.store)
    key = passphrase(args, store_dir)
    if args.command == "login":
        user = args.user_id
        client = await Client.login(
            store_dir,
            args.homeserver,
            user,
            args.password,
            key,
            args.device_name,
            transport=args.transport,
        )
        try:
            print(f"logged in as {client.user_id} (device {client.device_id})")
            if client.cross_signing_error is not None:
                print(f"cross-signing: not set up ({client.cross_signing_error})")
            elif client.user_trust(client.user_id) == "verified":
                print("cross-signing: this device is signed by your identity")
            else:
                print(
                    "cross-signing: your identity exists on another device: "
                    "'restore' (or verify this device from one of the others) to trust it"
                )
        finally:
            await client.close()
        return 0
    client = Client.open(store_dir, key, transport=args.transport)
    try:
        return await command(client, args)
    finally:
        await client.close()


async def command(client: Client, args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.command == "create-room":
        room_id = await client.create_room(
            name=args.name,
            invite=args.invite or [],
            encrypted=not args.unencrypted,
            direct=args.direct,
        )
        print(room_id, file=out)
    elif args.command == "join":
        print(await client.join(args.room), file=out)
    elif args.command == "rooms":
        await client.sync_once(timeout_ms=0)
        for info in sorted(client.rooms.values(), key=lambda r: r.room_id):
            if args.json:
                print(json.dumps(info.to_json()), file=out)
            else:
                lock = "encrypted" if info.encrypted else "unencrypted"
                print(f"{info.room_id}\t{info.membership}\t{lock}\t{info.name or ''}", file=out)
    elif args.command == "send":
        room_id = resolve_room(client, args.room)
        print(await client.send_text(room_id, args.text), file=out)
    elif args.command == "send-file":
        room_id = resolve_room(client, args.room)
        print(await client.send_file(room_id, Path(args.path)), file=out)
    elif args.command == "send-voice":
        room_id = resolve_room(client, args.room)
        try:
            print(await client.send_voice(room_id, Path(args.path)), file=out)
        except ValueError as e:
            raise CliError(str(e)) from e
    elif args.command == "tail":
        room_id = resolve_room(client, args.room)
        save_dir = Path(args.save_dir) if args.save_dir else Path(args.store) / "downloads"
        await tail(client, room_id, args.count, args.timeout, args.json, save_dir)
    elif args.command == "backup":
        status = await client.backup_status()
        if status["version"] is None:
            recovery_key = await client.create_backup(recovery_passphrase(args))
            status = await client.backup_status()
            print(f"recovery key: {recovery_key}", file=out)
            print(
                "Write it down: it is shown only now, and restores your keys on a new device.",
                file=out,
            )
        elif not status["this_device_has_key"]:
            raise CliError(
                f"a key backup (version {status['version']}) exists but this device does not "
                "hold its key: run 'restore --recovery-key KEY'"
            )
        else:
            await client.upload_room_keys()
            status = await client.backup_status()
        print(f"backup version {status['version']}: {status['count']} room keys", file=out)
    elif args.command == "restore":
        secret = recovery_passphrase(args)
        if (secret is None) == (args.recovery_key is None):
            raise CliError("give either --recovery-key or --recovery-passphrase-file")
        count = await client.restore_backup(args.recovery_key, passphrase=secret)
        status = await client.backup_status()
        print(f"restored {count} room keys from backup version {status['version']}", file=out)
    elif args.command == "tui":
        try:
            from starling_client.tui import run_tui
        except ImportError as e:
            raise CliError(
                f"the terminal UI needs Textual: pip install 'starling[tui]' ({e})"
            ) from e
        await run_tui(client)
    elif args.command == "files":
        await files_command(client, args)
    elif args.command == "verify":
        await verify(
            client, args.user_id, args.device_id, args.yes, args.wait, args.timeout, args.start
        )
    elif args.command == "devices":
        devices = await client.devices(args.user_id)
        identity = client.user_trust(args.user_id)
        for device in devices:
            if args.json:
                print(json.dumps({**device, "identity": identity}), file=out)
            else:
                state = (
                    "verified"
                    if device["verified"]
                    else "cross-signed"
                    if device["trusted"]
                    else "unverified"
                )
                print(f"{device['device_id']}\t{device['ed25519']}\t{state}", file=out)
        if not args.json:
            print(f"identity: {IDENTITY_WORDS[identity]}", file=out)
    else:  # pragma: no cover - argparse refuses unknown commands
        raise CliError(f"unknown command {args.command}")
    return 0


async def verify(
    client: Client,
    user_id: str,
    device_id: str | None,
    yes: bool,
    wait: bool,
    timeout_s: float,
    bare_start: bool = False,
) -> None:
    """SAS with one device of `user_id`: answer its pending request if it sent one (or
    wait for one with --wait), else start; show the emoji; confirm on --yes or when the
    user says they match; succeed when both MACs check out."""

    async def run() -> Sas:
        await client.sync_once(timeout_ms=0)
        sas: Sas | None = None
        while True:
            incoming = client.incoming_verifications(user_id)
            if incoming:
                sas = await client.accept_verification(incoming[0])
                txn = incoming[0]
                break
            if not wait:
                break
            await client.sync_once(timeout_ms=2_000)
        if not incoming:
            target = device_id or await only_device(client, user_id)
            if bare_start:
                sas = await client.start_verification(user_id, target)
                txn = sas.transaction_id
            else:
                txn = await client.request_verification(user_id, target)
        shown = False
        while True:
            sas = sas or client.verifications.get(txn)
            if sas is not None:
                if sas.state == "cancelled":
                    raise CliError(f"verification cancelled: {sas.cancel_code} {sas.cancel_reason}")
                if sas.verified:
                    return sas
                if sas.state == "keys" and not shown:
                    shown = True
                    emoji = "  ".join(f"{e} {name}" for e, name in sas.emoji())
                    print(f"emoji: {emoji}", flush=True)
                    print("decimals: " + " ".join(str(d) for d in sas.decimals()), flush=True)
                    if yes or await asyncio.to_thread(
                        ask, "Do they match the other device? [y/N] "
                    ):
                        await client.confirm_verification(sas)
                    else:
                        await client.cancel_verification(sas, mismatch=True)
                        raise CliError("the emoji did not match: verification cancelled")
                    if sas.verified:
                        return sas
            await client.sync_once(timeout_ms=2_000)

    try:
        sas = await asyncio.wait_for(run(), timeout_s)
    except TimeoutError:
        raise CliError(f"verification did not finish within {timeout_s:g}s") from None
    if sas.master_verified:
        print(f"identity of {sas.their_user}: {IDENTITY_WORDS[client.user_trust(sas.their_user)]}")
    print(f"verified {sas.their_user} {sas.their_device}")


def progress_bar(path: str, what: str, done: int, total: int) -> None:
    """A one-line progress bar on stderr, drawn only on a terminal."""
    if not sys.stderr.isatty():
        return
    width = 30
    filled = width * done // max(total, 1)
    name = path if len(path) <= 40 else "…" + path[-39:]
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what:<12} {name:<40}"
    )
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def quota_line(usage: dict[str, Any]) -> str:
    """'storage: 12.0 MiB in 40 files; quota 1.0 GiB per 1 d, 3.5 MiB used' from the
    server's usage answer (empty when the server sets no upload quota)."""

    def size(n: int) -> str:
        if n < 1024:
            return f"{n} B"
        value = float(n)
        for unit in ("KiB", "MiB", "GiB"):
            value /= 1024
            if value < 1024 or unit == "GiB":
                break
        return f"{value:.1f} {unit}"

    used, files = usage.get("m.storage.used"), usage.get("m.storage.files")
    if not isinstance(used, int) or not isinstance(files, int):
        return ""
    if not usage.get("io.starling.upload_limits"):
        return ""  # no quota: nothing worth a line after every push
    parts = [f"storage: {size(used)} in {files} files"]
    for limit in usage.get("io.starling.upload_limits") or []:
        try:
            days = int(limit["time_period_ms"]) / 86_400_000
            period = f"{days:g} d" if days >= 1 else f"{days * 24:g} h"
            parts.append(
                f"quota {size(int(limit['max_size']))} per {period},"
                f" {size(int(limit['used']))} used"
            )
        except (KeyError, TypeError, ValueError):
            continue
    return "; ".join(parts)


async def files_command(client: Client, args: argparse.Namespace) -> None:
    backup = FileBackup(client)
    try:
        if args.files_command == "push":
            result = await backup.push(Path(args.dir), progress_bar)
            print(
                f"{result.sent} sent ({result.bytes_sent} bytes), {result.deduplicated} "
                f"deduplicated, {result.unchanged} unchanged"
            )
            quota = quota_line(await client.api.media_usage())
            if quota:
                print(quota)
        elif args.files_command == "ls":
            for entry in sorted((await backup.index()).values(), key=lambda e: e.path):
                if args.json:
                    print(
                        json.dumps(
                            {
                                "path": entry.path,
                                "size": entry.size,
                                "sha256": entry.sha256,
                                "mtime": entry.mtime,
                            }
                        )
                    )
                else:
                    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.mtime))
                    print(f"{entry.size:>12}  {when}  {entry.path}")
        else:
            count = await backup.pull(Path(args.to), args.path, progress_bar)
            print(f"{count} files restored to {args.to}")
    except FileBackupError as e:
        raise CliError(str(e)) from e


def ask(prompt: str) -> bool:
    try:
        return input(prompt).strip().lower() in ("y", "yes")
    except EOFError:
        return False


async def only_device(client: Client, user_id: str) -> str:
    devices = [
        d["device_id"]
        for d in await client.devices(user_id)
        if not (user_id == client.user_id and d["device_id"] == client.device_id)
    ]
    if len(devices) != 1:
        raise CliError(f"{user_id} has {len(devices)} devices; name one: {', '.join(devices)}")
    return str(devices[0])


def resolve_room(client: Client, room: str) -> str:
    if room.startswith("!"):
        return room
    for info in client.rooms.values():
        if info.name == room:
            return info.room_id
    raise CliError(f"no room named {room!r} (use its !room ID)")


ATTACHMENT_TYPES = ("m.image", "m.file", "m.audio", "m.video")


def safe_filename(body: str) -> str:
    """A file name from an attachment's (untrusted) body: its last path part, only
    letters, digits and `._- `, no leading dot, at most 100 characters."""
    name = body.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c if c.isalnum() or c in "._- " else "_" for c in name).lstrip(". ")
    return name[:100] or "file"


async def save_attachment(client: Client, message: Message, save_dir: Path) -> Path | None:
    """Download, decrypt and check an attachment into `save_dir`; its path."""
    if message.msgtype not in ATTACHMENT_TYPES:
        return None
    data = await client.download(message)
    if data is None:
        return None
    name = safe_filename(message.body or "file")
    safe_id = "".join(c if c.isalnum() else "_" for c in message.event_id)[:64]
    await asyncio.to_thread(save_dir.mkdir, parents=True, exist_ok=True)
    path = save_dir / f"{safe_id}-{name}"
    await asyncio.to_thread(path.write_bytes, data)
    return path


async def tail(
    client: Client,
    room_id: str,
    count: int | None,
    timeout_s: float | None,
    as_json: bool,
    save_dir: Path,
) -> None:
    printed = 0

    async def loop() -> None:
        nonlocal printed
        async for message in client.tail(room_id, timeout_ms=5_000):
            try:
                saved = await save_attachment(client, message, save_dir)
                error = None
            except (MatrixError, ValueError) as e:
                saved, error = None, str(e)
            if as_json:
                data = _message_json(message)
                if message.msgtype in ATTACHMENT_TYPES:
                    data["file"] = str(saved) if saved else None
                    if error:
                        data["error"] = error
                if message.msgtype == "m.audio":
                    data["voice"] = "org.matrix.msc3245.voice" in message.content
                line = json.dumps(data, ensure_ascii=False)
            else:
                line = _message_line(message) + (f" -> {saved}" if saved else "")
            print(line, flush=True)
            printed += 1
            if count is not None and printed >= count:
                return

    if timeout_s is None:
        await loop()
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(loop(), timeout_s)
    if count is not None and printed < count:
        raise CliError(f"only {printed} of {count} messages arrived within {timeout_s:g}s")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="starling-chat", description="Starling's end-to-end encrypted Matrix client"
    )
    p.add_argument("--store", required=True, help="directory of this device's session and keys")
    p.add_argument(
        "--transport",
        choices=("auto", "http", "coap"),
        default="auto",
        help="auto: the WebSocket when offered; coap: low-bandwidth CoAP+Noise when offered",
    )
    p.add_argument(
        "--passphrase-file", help=f"file holding the store passphrase (or set {PASSPHRASE_ENV})"
    )
    sub = p.add_subparsers(dest="command", required=True)

    login = sub.add_parser("login", help="log in with a password and create this device")
    login.add_argument("--homeserver", required=True, help="e.g. https://matrix.example.org")
    login.add_argument("user_id", help="@user:server or the bare localpart")
    login.add_argument("--password", required=True)
    login.add_argument("--device-name", default="starling-chat")

    create = sub.add_parser(
        "create-room", help="create a room (encrypted by default); prints its ID"
    )
    create.add_argument("--name")
    create.add_argument("--invite", nargs="*", metavar="USER_ID")
    create.add_argument("--unencrypted", action="store_true")
    create.add_argument("--direct", action="store_true", help="a direct chat with the invitee")

    join = sub.add_parser("join", help="join a room by ID or alias")
    join.add_argument("room")

    rooms = sub.add_parser("rooms", help="list rooms")
    rooms.add_argument("--json", action="store_true")

    send = sub.add_parser("send", help="send a text message; prints the event ID")
    send.add_argument("room")
    send.add_argument("text")

    send_file = sub.add_parser(
        "send-file", help="send a file (images as m.image with a thumbnail), encrypted"
    )
    send_file.add_argument("room")
    send_file.add_argument("path")

    send_voice = sub.add_parser("send-voice", help="send an Ogg/Opus file as a voice message")
    send_voice.add_argument("room")
    send_voice.add_argument("path")

    tail_p = sub.add_parser("tail", help="print (decrypted) messages as they arrive")
    tail_p.add_argument("room")
    tail_p.add_argument("--count", type=int, help="stop after this many messages")
    tail_p.add_argument("--timeout", type=float, help="stop after this many seconds")
    tail_p.add_argument("--json", action="store_true", help="one JSON object a line")
    tail_p.add_argument(
        "--save-dir", help="where decrypted attachments are saved (default: STORE/downloads)"
    )

    sub.add_parser("tui", help="the terminal UI (rooms, timeline, composer, verification)")

    files = sub.add_parser("files", help="encrypted file backup")
    files_sub = files.add_subparsers(dest="files_command", required=True)
    push = files_sub.add_parser("push", help="back up a directory (incremental, deduplicated)")
    push.add_argument("dir")
    ls = files_sub.add_parser("ls", help="list the backed-up files")
    ls.add_argument("--json", action="store_true")
    pull = files_sub.add_parser("pull", help="restore backed-up files")
    pull.add_argument("path", nargs="?", help="a file or directory in the backup (default: all)")
    pull.add_argument("--to", required=True, help="where to write them")

    backup = sub.add_parser(
        "backup", help="create the key backup (prints the recovery key once) or show it"
    )
    backup.add_argument(
        "--recovery-passphrase-file",
        help="derive the secret-storage key from the passphrase in this file (the printed "
        "recovery key works as well)",
    )
    restore = sub.add_parser("restore", help="restore room keys from the key backup")
    restore.add_argument("--recovery-key")
    restore.add_argument(
        "--recovery-passphrase-file", help="a file holding the secret-storage passphrase"
    )

    verify_p = sub.add_parser("verify", help="verify a device by comparing emoji (SAS)")
    verify_p.add_argument("user_id")
    verify_p.add_argument("device_id", nargs="?")
    verify_p.add_argument("--yes", action="store_true", help="accept matching emoji (scripts)")
    verify_p.add_argument("--wait", action="store_true", help="wait for the other side to start")
    verify_p.add_argument(
        "--start",
        action="store_true",
        help="send a bare m.key.verification.start instead of a request (for matrix-nio)",
    )
    verify_p.add_argument("--timeout", type=float, default=120.0)

    devices = sub.add_parser("devices", help="a user's devices and whether they are verified")
    devices.add_argument("user_id")
    devices.add_argument("--json", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "tail" and args.count is not None and args.count < 1:
        print("starling-chat: --count must be at least 1", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(args))
    except (CliError, StoreError, MatrixError, BackupError, OSError) as e:
        print(f"starling-chat: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
