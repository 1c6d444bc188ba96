"""The terminal UI driven headless by Textual's pilot against a real `starling serve` (both
engines): the room list shows the encrypted room, the user opens it, sends a message that
the other side decrypts, sees the reply appear, and verifies a device through the emoji
dialog."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.widgets import Label, RichLog

from starling_client.client import Client
from starling_client.tui import ChatApp, RoomItem, VerificationDialog
from tests.client.test_e2ee_server import has_text
from tests.interop.conftest import RunningServer
from tests.interop.test_nio_e2ee import PASSWORD, register

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0


async def test_tui_chat_and_verification(starling_server: RunningServer, tmp_path: Path) -> None:
    server = starling_server
    await register(server, "alice", tmp_path / "alice-reg")
    await register(server, "bob", tmp_path / "bob-reg")
    alice = await Client.login(tmp_path / "alice", server.url, "alice", PASSWORD, "pw")
    bob = await Client.login(tmp_path / "bob", server.url, "bob", PASSWORD, "pw")
    try:
        room_id = await bob.create_room(name="tui room", invite=[alice.user_id])
        await alice.join(room_id)
        app = ChatApp(alice, sync_timeout_ms=300)
        async with app.run_test(size=(140, 40)) as pilot:

            async def until(done: Callable[[], bool], what: str, bob_syncs: bool = False) -> None:
                deadline = time.monotonic() + DEADLINE_S
                while time.monotonic() < deadline:
                    if done():
                        return
                    if bob_syncs:
                        await bob.sync_once(timeout_ms=200)
                    await pilot.pause(0.1)
                assert done(), f"within {DEADLINE_S}s: never {what}"

            await until(lambda: len(app.query(RoomItem)) == 1, "listed the room")
            item = app.query_one(RoomItem)
            label = str(item.query_one("#label", Label).render())
            assert "tui room" in label and "🔒" in label
            await pilot.click(RoomItem)
            await until(lambda: app.current == room_id, "opened the room")

            await pilot.click("#composer")
            await pilot.press(*"hello from the tui", "enter")
            sent: list[str] = []

            def bob_got_it() -> bool:
                for m in bob.timeline(room_id):
                    if m.body == "hello from the tui" and m.encrypted:
                        sent.append(m.event_id)
                        return True
                return False

            await until(bob_got_it, "delivered the message to Bob, decrypted", bob_syncs=True)

            reply_id = await bob.send_text(room_id, "bob answers the tui")
            log = app.query_one("#timeline", RichLog)
            await until(lambda: reply_id in app.shown, "showed Bob's reply")
            text = "\n".join(line.text for line in log.lines)
            assert "hello from the tui" in text and "bob answers the tui" in text
            assert has_text(alice, room_id, reply_id, "bob answers the tui")

            # Bob verifies Alice's device; the TUI accepts and shows the emoji dialog.
            sas = await bob.start_verification(alice.user_id, alice.device_id)
            await until(
                lambda: isinstance(app.screen, VerificationDialog),
                "showed the dialog",
                bob_syncs=True,
            )
            dialog = app.screen
            assert isinstance(dialog, VerificationDialog)
            await until(lambda: sas.state == "keys", "Bob got Alice's key", bob_syncs=True)
            assert dialog.sas.emoji() == sas.emoji()
            await bob.confirm_verification(sas)
            await pilot.click("#match")
            await until(lambda: sas.verified, "verified on Bob's side", bob_syncs=True)
            await until(
                lambda: alice.crypto.devices[bob.user_id][bob.device_id].verified,
                "verified on Alice's side",
            )
            status = str(app.query_one("#status").render())
            assert alice.user_id in status and "key backup" in status
            assert "identity: verified" in status  # cross-signing set up at login
            # The SAS carried both master keys: Bob's identity is verified here now, and
            # his next message is marked so in the timeline.
            await until(lambda: alice.user_trust(bob.user_id) == "verified", "trusted Bob")
            marked_id = await bob.send_text(room_id, "now verified")
            await until(lambda: marked_id in app.shown, "showed Bob's verified message")
            text = "\n".join(line.text for line in log.lines)
            assert f"{bob.user_id}✓: now verified" in text

            # Now the TUI starts one: `/verify USER_ID` requests a SAS with Bob's only device.
            await pilot.click("#composer")
            await pilot.press(*f"/verify {bob.user_id}", "enter")
            await until(lambda: bool(bob.incoming_verifications()), "asked Bob", bob_syncs=True)
            await bob.accept_verification(bob.incoming_verifications()[0])
            await until(
                lambda: isinstance(app.screen, VerificationDialog) and app.screen.sas.we_started,
                "showed the dialog of its own request",
                bob_syncs=True,
            )
            ours = app.screen.sas
            theirs = bob.verifications[ours.transaction_id]
            await until(lambda: theirs.state == "keys", "Bob got the keys", bob_syncs=True)
            assert ours.emoji() == theirs.emoji()
            await pilot.click("#match")
            await bob.confirm_verification(theirs)
            await until(lambda: ours.verified and theirs.verified, "verified", bob_syncs=True)
    finally:
        await alice.close()
        await bob.close()
