"""The web admin console in a real headless browser (Debian's Chromium driven by Selenium):
log in, approve a pending registration, find a user, redact their messages and deactivate
them, quarantine a media item, purge a room's history, delete the room, dismiss a report. A screenshot of each page goes to $STARLING_TEST_ARTIFACTS/console (default
test-artifacts/console). Both engines."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.admin.conftest import set_password
from tests.support.harness import Harness

HS = "test.local"
ARTIFACTS = Path(os.environ.get("STARLING_TEST_ARTIFACTS", "test-artifacts")) / "console"


def chromium() -> WebDriver:
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    return driver


async def test_console_in_a_browser(hs: Harness, engine: str) -> None:
    root, admin = await hs.register("root", admin=True)
    await set_password(hs, admin, root, "console-pw")
    bob, bob_token = await hs.register("bob")
    _, alice_token = await hs.register("alice")
    newbie, _ = await hs.register("newbie")
    await hs.services.account_store.set_approved(newbie, False)  # a pending registration
    room = await hs.create_room(alice_token, name="Rowdy room", preset="public_chat")
    status, _ = await hs.request("POST", f"/_matrix/client/v3/join/{room}", bob_token, {})
    assert status == 200
    event_id = await hs.send_message(bob_token, room, "spam spam")
    status, _ = await hs.request(
        "POST",
        f"/_matrix/client/v3/rooms/{room}/report/{event_id}",
        alice_token,
        {"reason": "spam"},
    )
    assert status == 200
    async with hs.client.post(
        "/_matrix/media/v3/upload",
        data=b"not a picture",
        headers={"Authorization": f"Bearer {bob_token}", "Content-Type": "text/plain"},
    ) as resp:
        media_id = (await resp.json())["content_uri"].rsplit("/", 1)[1]
    base = str(hs.client.make_url("/_starling/admin/"))
    shots = ARTIFACTS / engine
    shots.mkdir(parents=True, exist_ok=True)

    def script() -> None:
        driver = chromium()
        wait = WebDriverWait(driver, 20)

        def status_says(text: str) -> Callable[[WebDriver], bool]:
            return lambda d: text in d.find_element(By.ID, "status").text

        try:
            driver.get(base)
            driver.save_screenshot(str(shots / "1-login.png"))
            driver.find_element(By.NAME, "user").send_keys("root")
            driver.find_element(By.NAME, "password").send_keys("console-pw")
            driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
            wait.until(ec.visibility_of_element_located((By.ID, "stats")))
            wait.until(lambda d: "Users" in d.find_element(By.ID, "stats").text)
            assert "Open reports" in driver.find_element(By.ID, "stats").text
            driver.save_screenshot(str(shots / "2-dashboard.png"))
            driver.execute_script("window.confirm = () => true;")

            assert "Awaiting approval\n1" in driver.find_element(By.ID, "stats").text
            assert "Background tasks running\n0" in driver.find_element(By.ID, "stats").text
            assert "Media stored\n0.0 MiB in 1 files" in driver.find_element(By.ID, "stats").text

            driver.find_element(By.LINK_TEXT, "Users").click()
            pending = wait.until(
                ec.visibility_of_element_located(
                    (By.CSS_SELECTOR, "#users-search input[name=pending]")
                )
            )
            pending.click()
            driver.find_element(By.CSS_SELECTOR, "#users-search button").click()
            # The first (unfiltered) listing may still be showing: wait for the filtered one.
            wait.until(
                lambda d: (
                    newbie in (text := d.find_element(By.ID, "users-table").text)
                    and bob not in text
                )
            )
            driver.find_element(
                By.XPATH, "//table[@id='users-table']//button[text()='Approve']"
            ).click()
            wait.until(status_says(f"{newbie} approved"))
            pending = driver.find_element(By.CSS_SELECTOR, "#users-search input[name=pending]")
            pending.click()
            search = wait.until(
                ec.visibility_of_element_located(
                    (By.CSS_SELECTOR, "#users-search input[name=name]")
                )
            )
            search.send_keys("bob")
            driver.find_element(By.CSS_SELECTOR, "#users-search button").click()
            wait.until(lambda d: bob in d.find_element(By.ID, "users-table").text)
            driver.save_screenshot(str(shots / "3-users.png"))
            row = driver.find_element(By.XPATH, f"//table[@id='users-table']//tr[td[1]='{bob}']")
            row.find_element(By.XPATH, ".//button[text()='Redact messages']").click()
            wait.until(status_says(f"Messages of {bob} redacted: complete"))
            row = driver.find_element(By.XPATH, f"//table[@id='users-table']//tr[td[1]='{bob}']")
            row.find_element(By.XPATH, ".//button[text()='Deactivate']").click()
            wait.until(status_says(f"{bob} deactivated"))

            driver.find_element(By.LINK_TEXT, "Media").click()
            field = wait.until(
                ec.visibility_of_element_located((By.CSS_SELECTOR, "#media-search input"))
            )
            field.send_keys(bob)
            driver.find_element(By.CSS_SELECTOR, "#media-search button").click()
            wait.until(lambda d: media_id in d.find_element(By.ID, "media-table").text)
            driver.find_element(
                By.XPATH, "//table[@id='media-table']//button[text()='Quarantine']"
            ).click()
            wait.until(status_says("quarantined"))
            wait.until(lambda d: "Release" in d.find_element(By.ID, "media-table").text)
            driver.save_screenshot(str(shots / "4-media.png"))

            driver.find_element(By.LINK_TEXT, "Reports").click()
            wait.until(lambda d: "spam" in d.find_element(By.ID, "reports-table").text)
            driver.save_screenshot(str(shots / "5-reports.png"))
            driver.find_element(
                By.XPATH, "//table[@id='reports-table']//button[text()='Dismiss']"
            ).click()
            wait.until(status_says("dismissed"))

            driver.find_element(By.LINK_TEXT, "Rooms").click()
            wait.until(lambda d: "Rowdy room" in d.find_element(By.ID, "rooms-table").text)
            purge = driver.find_element(By.ID, "purge-form")
            purge.find_element(By.NAME, "room_id").send_keys(room)
            days = purge.find_element(By.NAME, "days")
            days.clear()
            days.send_keys("0")
            purge.find_element(By.NAME, "local").click()
            purge.find_element(By.TAG_NAME, "button").click()
            wait.until(status_says(f"History of {room} purged: complete"))
            driver.save_screenshot(str(shots / "6-rooms.png"))
            driver.find_element(
                By.XPATH, "//table[@id='rooms-table']//button[text()='Delete']"
            ).click()
            wait.until(status_says(f"{room} deleted"))
            wait.until(lambda d: "Nothing here." in d.find_element(By.ID, "rooms-table").text)

            driver.find_element(By.LINK_TEXT, "Federation").click()
            wait.until(lambda d: "Nothing here." in d.find_element(By.ID, "federation-table").text)

            driver.find_element(By.LINK_TEXT, "Audit log").click()
            wait.until(lambda d: "/deactivate/" in d.find_element(By.ID, "audit-table").text)
            assert "/rooms/" in driver.find_element(By.ID, "audit-table").text
            assert "/purge_history/" in driver.find_element(By.ID, "audit-table").text
            assert "/redact" in driver.find_element(By.ID, "audit-table").text
            driver.save_screenshot(str(shots / "7-audit-log.png"))

            driver.find_element(By.ID, "logout").click()
            wait.until(ec.visibility_of_element_located((By.ID, "login-form")))
        finally:
            driver.save_screenshot(str(shots / "8-last.png"))
            driver.quit()

    await asyncio.wait_for(asyncio.to_thread(script), timeout=180)

    user = await hs.services.account_store.get_user(bob)
    assert user is not None and user.deactivated
    assert await hs.services.account_store.is_approved(newbie)
    media = await hs.services.media.store.get_media(HS, media_id)
    assert media is not None and media.quarantined_by == root
    assert await hs.services.event_store.get_room_version(room) is None
    assert await hs.services.admin_rooms.is_blocked(room)
    status, resp = await hs.request("GET", "/_synapse/admin/v1/event_reports", admin)
    assert resp["total"] == 0


async def test_console_files_and_headers(hs: Harness) -> None:
    async with hs.client.get("/_starling/admin", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/_starling/admin/"
    for path, kind in [
        ("/_starling/admin/", "text/html"),
        ("/_starling/admin/console.js", "text/javascript"),
        ("/_starling/admin/console.css", "text/css"),
    ]:
        async with hs.client.get(path) as resp:
            assert resp.status == 200 and resp.content_type == kind
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Frame-Options"] == "DENY"
    for path in ("/_starling/admin/../app.py", "/_starling/admin/secret.txt"):
        async with hs.client.get(path) as resp:
            assert resp.status == 404
