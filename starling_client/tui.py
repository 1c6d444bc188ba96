"""`starling-chat --store DIR tui`: a terminal UI on the SDK (Textual).

Rooms on the left with their unread counts (a lock marks encrypted rooms), the selected
room's timeline on the right, a composer at the bottom (Enter sends; `/file PATH` sends an
attachment; `/verify USER_ID [DEVICE_ID]` starts a verification). The status line shows
the key-backup state and whether this device trusts your cross-signing identity; senders
are marked ✓ when verified, ⚠ when their identity changed. When a verification reaches
the emoji (another device asked, or we did), a dialog shows them and asks whether they
match. A background worker
keeps syncing.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, ListItem, ListView, RichLog, Static

from starling_client.api import MatrixError
from starling_client.client import Client, Message
from starling_client.verification import Sas

TRUST_MARKS = {"verified": "✓", "unverified": "", "changed": " ⚠ changed identity"}


def message_line(message: Message, identity: str = "unverified") -> str:
    """A timeline line; `identity` is the sender's cross-signing trust (user_trust): ✓ for a
    verified user, a warning when their identity changed."""
    when = time.strftime("%H:%M", time.localtime(message.origin_server_ts / 1000))
    lock = "🔒" if message.encrypted else "  "
    body = message.body if message.body is not None else f"[{message.msgtype}]"
    if message.msgtype in ("m.image", "m.file", "m.audio", "m.video"):
        body = f"[{message.msgtype[2:]}] {body}"
    mark = TRUST_MARKS.get(identity, "")
    return f"{when} {lock} {message.sender}{mark}: {body}"


class RoomItem(ListItem):
    def __init__(self, room_id: str, label: str) -> None:
        super().__init__(Label(label, id="label"))
        self.room_id = room_id


class VerificationDialog(ModalScreen[bool]):
    """Shows the emoji of a verification and asks whether they match."""

    def __init__(self, sas: Sas) -> None:
        super().__init__()
        self.sas = sas

    def compose(self) -> ComposeResult:
        emoji = "  ".join(f"{e} {name}" for e, name in self.sas.emoji())
        with Vertical(id="dialog"):
            yield Label(f"Verify {self.sas.their_user} ({self.sas.their_device})")
            yield Label(emoji, id="emoji")
            yield Label(" ".join(str(d) for d in self.sas.decimals()), id="decimals")
            with Horizontal():
                yield Button("They match", id="match", variant="success")
                yield Button("They differ", id="differ", variant="error")

    @on(Button.Pressed)
    def answer(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "match")


class ChatApp(App[None]):
    CSS = """
    #rooms { width: 32; border-right: solid $accent; }
    #timeline { height: 1fr; }
    #status { height: 1; color: $text-muted; }
    #dialog { width: 80; height: auto; border: thick $accent; background: $surface; padding: 1; }
    """
    BINDINGS = [("ctrl+q", "quit", "Quit")]

    def __init__(self, client: Client, *, sync_timeout_ms: int = 10_000) -> None:
        super().__init__()
        self.client = client
        self.sync_timeout_ms = sync_timeout_ms
        self.current: str | None = None
        self.shown: set[str] = set()  # event IDs on screen
        self.dialogs: set[str] = set()  # verification transaction IDs already handled
        # Kept as attributes: with a dialog on top, App.query_one searches the dialog.
        self.rooms_view = ListView(id="rooms")
        self.log_view = RichLog(id="timeline", wrap=True, markup=False)
        self.composer = Input(
            placeholder="Message (Enter sends; /file PATH; /verify USER_ID [DEVICE_ID])",
            id="composer",
        )
        self.status_line = Static("", id="status")

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield self.rooms_view
            with Vertical():
                yield self.log_view
                yield self.composer
        yield self.status_line
        yield Footer()

    async def on_mount(self) -> None:
        await self.refresh_rooms()
        await self.refresh_status()
        self.sync_loop()

    # ---- rooms and timeline -------------------------------------------------------------

    def room_label(self, room_id: str) -> str:
        info = self.client.rooms[room_id]
        name = info.name or room_id
        unread = f" ({info.unread})" if info.unread else ""
        lock = "🔒 " if info.encrypted else ""
        invite = " [invite]" if info.membership == "invite" else ""
        return f"{lock}{name}{unread}{invite}"

    async def refresh_rooms(self) -> None:
        rooms = self.rooms_view
        wanted = [
            r for r in sorted(self.client.rooms) if self.client.rooms[r].membership != "leave"
        ]
        have = [item.room_id for item in rooms.query(RoomItem)]
        if have != wanted:
            await rooms.clear()
            for room_id in wanted:
                await rooms.append(RoomItem(room_id, self.room_label(room_id)))
            if self.current in wanted:
                rooms.index = wanted.index(self.current)
        else:
            for item in rooms.query(RoomItem):
                item.query_one("#label", Label).update(self.room_label(item.room_id))

    @on(ListView.Selected, "#rooms")
    async def open_room(self, event: ListView.Selected) -> None:
        item = event.item
        if isinstance(item, RoomItem):
            await self.show_room(item.room_id)

    async def show_room(self, room_id: str) -> None:
        info = self.client.rooms.get(room_id)
        if info is not None and info.membership == "invite":
            await self.client.join(room_id)
        self.current = room_id
        log = self.log_view
        log.clear()
        self.shown.clear()
        for message in self.client.timeline(room_id, limit=200):
            self.append(message)
        self.client.store.mark_seen(room_id, [m.event_id for m in self.client.timeline(room_id)])
        if room_id in self.client.rooms:
            self.client.rooms[room_id].unread = 0
        await self.refresh_rooms()
        self.composer.focus()

    def append(self, message: Message) -> None:
        if message.event_id in self.shown:
            return
        self.shown.add(message.event_id)
        self.log_view.write(message_line(message, self.client.user_trust(message.sender)))

    # ---- sending ------------------------------------------------------------------------

    @on(Input.Submitted, "#composer")
    async def send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        event.input.value = ""
        if text.startswith("/verify "):
            await self.start_verification(text.split()[1:])
            return
        if not text or self.current is None:
            return
        try:
            if text.startswith("/file "):
                await self.client.send_file(self.current, Path(text[6:].strip()))
            else:
                await self.client.send_text(self.current, text)
        except (MatrixError, OSError, ValueError) as e:
            self.notify(f"not sent: {e}", severity="error")
            return
        for message in self.client.timeline(self.current, limit=5):
            self.append(message)

    # ---- syncing ------------------------------------------------------------------------

    @work(exclusive=True, group="sync")
    async def sync_loop(self) -> None:
        backoff = 1.0
        while True:
            try:
                messages = await self.client.sync_once(self.sync_timeout_ms)
                backoff = 1.0
            except MatrixError as e:
                self.status_line.update(f"sync failed: {e}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            await self.on_synced(messages)

    async def on_synced(self, messages: list[Message]) -> None:
        for message in messages:
            if message.room_id == self.current:
                self.append(message)
                self.client.store.mark_seen(message.room_id, [message.event_id])
                self.client.rooms[message.room_id].unread = 0
        await self.refresh_rooms()
        await self.refresh_status()
        await self.handle_verifications()

    async def refresh_status(self) -> None:
        try:
            backup = await self.client.backup_status()
        except MatrixError:
            backup = {"version": None}
        if backup.get("version") is None:
            state = "key backup: none (run 'starling-chat backup')"
        elif backup.get("this_device_has_key"):
            state = f"key backup: version {backup['version']}, {backup.get('count')} keys"
        else:
            state = f"key backup: version {backup['version']} (restore it on this device)"
        who = f"{self.client.user_id} ({self.client.device_id})"
        identity = self.client.user_trust(self.client.user_id)
        cross = {
            "verified": "identity: verified",
            "unverified": "identity: not trusted on this device (restore or verify it)",
            "changed": "identity: CHANGED",
        }[identity]
        self.status_line.update(f"{who} · {cross} · {state}")

    # ---- verification -------------------------------------------------------------------

    async def start_verification(self, args: list[str]) -> None:
        """`/verify USER_ID [DEVICE_ID]`: request a SAS with that device (the user's only
        other device when left out); the emoji dialog opens when the keys are exchanged."""
        if not args or len(args) > 2:
            self.notify("usage: /verify USER_ID [DEVICE_ID]", severity="error")
            return
        user = args[0]
        try:
            if len(args) == 2:
                device = args[1]
            else:
                devices = [
                    d["device_id"]
                    for d in await self.client.devices(user)
                    if not (user == self.client.user_id and d["device_id"] == self.client.device_id)
                ]
                if len(devices) != 1:
                    self.notify(f"{user} has {len(devices)} devices: name one", severity="error")
                    return
                device = devices[0]
            await self.client.request_verification(user, device)
        except MatrixError as e:
            self.notify(f"verification not started: {e}", severity="error")
            return
        self.notify(f"verification requested from {user} {device}")

    async def handle_verifications(self) -> None:
        for txn in self.client.incoming_verifications():
            if txn not in self.dialogs:
                self.dialogs.add(txn)
                await self.client.accept_verification(txn)
        for txn, sas in list(self.client.verifications.items()):
            if sas.state == "keys" and not sas.we_confirmed and f"shown:{txn}" not in self.dialogs:
                self.dialogs.add(f"shown:{txn}")
                self.push_screen(VerificationDialog(sas), self._verification_answer(sas))
            if sas.verified and f"done:{txn}" not in self.dialogs:
                self.dialogs.add(f"done:{txn}")
                trust = self.client.user_trust(sas.their_user)
                self.notify(f"verified {sas.their_user} {sas.their_device} (identity: {trust})")

    def _verification_answer(self, sas: Sas) -> Any:
        async def answered(match: bool | None) -> None:
            if match:
                await self.client.confirm_verification(sas)
            else:
                await self.client.cancel_verification(sas, mismatch=True)

        return answered


async def run_tui(client: Client) -> None:
    await ChatApp(client).run_async()
