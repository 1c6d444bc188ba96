"""reCAPTCHA registration (m.login.recaptcha; Synapse's `enable_registration_captcha`,
`recaptcha_*` keys) against a fake siteverify API on loopback, and its fallback page."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from starling.config import ConfigError
from tests.accounts.conftest import PASSWORD, HarnessFactory, R
from tests.support.harness import Harness, make_test_config

PUBLIC = "the-public-key"
SECRET = "the-private-key"
GOOD = "good-captcha-answer"
FALLBACK = f"{R}/auth/m.login.recaptcha/fallback/web"


@dataclass
class FakeSiteverify:
    """Google's siteverify: success for GOOD, failure for anything else."""

    url: str = ""
    forms: list[dict[str, str]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    delay: float = 0.0
    answer: Any = None  # overrides the JSON answer when set

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.content_types.append(request.content_type)
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.forms.append(form)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.answer is not None:
            return web.Response(body=self.answer, content_type="application/json")
        ok = form.get("secret") == SECRET and form.get("response") == GOOD
        body: dict[str, Any] = {"success": ok, "hostname": "client.example"}
        if not ok:
            body["error-codes"] = ["invalid-input-response"]
        return web.json_response(body)


@pytest.fixture
async def siteverify() -> AsyncIterator[FakeSiteverify]:
    fake = FakeSiteverify()
    app = web.Application()
    app.router.add_post("/recaptcha/api/siteverify", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("/recaptcha/api/siteverify"))
    try:
        yield fake
    finally:
        await server.close()


def _keys(fake: FakeSiteverify, **extra: Any) -> dict[str, Any]:
    return {
        "recaptcha_public_key": PUBLIC,
        "recaptcha_private_key": SECRET,
        "recaptcha_siteverify_api": fake.url,
        **extra,
    }


async def _first(hs: Harness) -> dict[str, Any]:
    status, resp = await hs.request("POST", f"{R}/register", body={})
    assert status == 401, resp
    result: dict[str, Any] = resp
    return result


async def test_required_captcha_leads_every_flow(
    make_hs: HarnessFactory, siteverify: FakeSiteverify
) -> None:
    async with make_hs(**_keys(siteverify, enable_registration_captcha=True)) as hs:
        first = await _first(hs)
        assert first["flows"] == [{"stages": ["m.login.recaptcha", "m.login.dummy"]}]
        assert first["params"] == {"m.login.recaptcha": {"public_key": PUBLIC}}
        session = first["session"]
        body = {"username": "cap", "password": PASSWORD}
        dummy = {"type": "m.login.dummy", "session": session}
        status, resp = await hs.request("POST", f"{R}/register", body={**body, "auth": dummy})
        assert status == 401 and resp["completed"] == ["m.login.dummy"], resp

        wrong = {"type": "m.login.recaptcha", "response": "bot", "session": session}
        status, resp = await hs.request("POST", f"{R}/register", body={**body, "auth": wrong})
        assert (status, resp["errcode"]) == (401, "M_UNAUTHORIZED"), resp
        assert resp["session"] == session and resp["completed"] == ["m.login.dummy"]
        assert resp["flows"] == first["flows"] and resp["params"] == first["params"]
        assert not await hs.services.account_store.user_exists("@cap:test.local")

        right = {"type": "m.login.recaptcha", "response": GOOD, "session": session}
        status, resp = await hs.request("POST", f"{R}/register", body={**body, "auth": right})
        assert status == 200, resp
        assert resp["user_id"] == "@cap:test.local"
        # The form Synapse posts: secret, response, remoteip (the client's address).
        assert siteverify.forms[-1] == {
            "secret": SECRET,
            "response": GOOD,
            "remoteip": "127.0.0.1",
        }
        assert siteverify.content_types[-1] == "application/x-www-form-urlencoded"


async def test_dummy_alone_does_not_register_when_captcha_required(
    make_hs: HarnessFactory, siteverify: FakeSiteverify
) -> None:
    async with make_hs(**_keys(siteverify, enable_registration_captcha=True)) as hs:
        body = {"username": "bot", "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
        status, resp = await hs.request("POST", f"{R}/register", body=body)
        assert status == 401 and resp["completed"] == ["m.login.dummy"], resp
        assert not await hs.services.account_store.user_exists("@bot:test.local")


async def test_unasked_captcha_is_checked_and_recorded(
    make_hs: HarnessFactory, siteverify: FakeSiteverify
) -> None:
    """With only the keys (no enable_registration_captcha), registration offers the dummy
    flow alone, and a submitted captcha is still verified and recorded (as Synapse; what
    SyTest's "Register with a recaptcha" relies on)."""
    async with make_hs(**_keys(siteverify)) as hs:
        first = await _first(hs)
        assert first["flows"] == [{"stages": ["m.login.dummy"]}] and first["params"] == {}
        auth = {"type": "m.login.recaptcha", "response": GOOD}
        body = {"username": "unasked", "password": PASSWORD, "auth": auth}
        status, resp = await hs.request("POST", f"{R}/register", body=body)
        assert status == 401, resp
        assert resp["completed"] == ["m.login.recaptcha"] and "errcode" not in resp
        assert len(siteverify.forms) == 1
        dummy = {"type": "m.login.dummy", "session": resp["session"]}
        status, resp = await hs.request("POST", f"{R}/register", body={"auth": dummy})
        assert status == 200 and resp["user_id"] == "@unasked:test.local", resp


async def test_captcha_without_keys_is_not_offered(ohs: Harness) -> None:
    auth = {"type": "m.login.recaptcha", "response": GOOD}
    body = {"username": "nokeys", "password": PASSWORD, "auth": auth}
    status, resp = await ohs.request("POST", f"{R}/register", body=body)
    assert (status, resp["errcode"]) == (401, "M_UNRECOGNIZED"), resp
    status, resp = await ohs.request("GET", f"{FALLBACK}?session=x")
    assert (status, resp["errcode"]) == (404, "M_UNRECOGNIZED")


@pytest.mark.parametrize(
    ("response", "errcode"),
    [(None, "M_CAPTCHA_NEEDED"), (7, "M_CAPTCHA_NEEDED"), ("x" * 9000, "M_CAPTCHA_INVALID")],
)
async def test_malformed_answers_fail_without_asking_google(
    make_hs: HarnessFactory, siteverify: FakeSiteverify, response: Any, errcode: str
) -> None:
    async with make_hs(**_keys(siteverify, enable_registration_captcha=True)) as hs:
        auth: dict[str, Any] = {"type": "m.login.recaptcha"}
        if response is not None:
            auth["response"] = response
        body = {"username": "mal", "password": PASSWORD, "auth": auth}
        status, resp = await hs.request("POST", f"{R}/register", body=body)
        assert (status, resp["errcode"]) == (401, errcode), resp
        assert siteverify.forms == []


@pytest.mark.parametrize("answer", [b"not json", b"[1]", b'{"success": "true"}', b"{}"])
async def test_odd_siteverify_answers_fail_the_stage(
    make_hs: HarnessFactory, siteverify: FakeSiteverify, answer: bytes
) -> None:
    siteverify.answer = answer
    async with make_hs(**_keys(siteverify, enable_registration_captcha=True)) as hs:
        auth = {"type": "m.login.recaptcha", "response": GOOD}
        body = {"username": "odd", "password": PASSWORD, "auth": auth}
        status, resp = await hs.request("POST", f"{R}/register", body=body)
        assert (status, resp["errcode"]) == (401, "M_UNAUTHORIZED"), resp


async def test_slow_or_absent_siteverify_fails_the_stage(
    make_hs: HarnessFactory, siteverify: FakeSiteverify, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("starling.accounts.recaptcha.SITEVERIFY_TIMEOUT", 0.2)
    siteverify.delay = 2.0
    async with make_hs(**_keys(siteverify, enable_registration_captcha=True)) as hs:
        auth = {"type": "m.login.recaptcha", "response": GOOD}
        body = {"username": "slow", "password": PASSWORD, "auth": auth}
        status, resp = await hs.request("POST", f"{R}/register", body=body)
        assert (status, resp["errcode"]) == (401, "M_UNAUTHORIZED"), resp
    gone = _keys(siteverify, enable_registration_captcha=True)
    gone["recaptcha_siteverify_api"] = "http://127.0.0.1:9/recaptcha/api/siteverify"
    async with make_hs(**gone) as hs:
        status, resp = await hs.request("POST", f"{R}/register", body=body)
        assert (status, resp["errcode"]) == (401, "M_UNAUTHORIZED"), resp


async def test_fallback_page_completes_the_stage(
    make_hs: HarnessFactory, siteverify: FakeSiteverify
) -> None:
    async with make_hs(**_keys(siteverify, enable_registration_captcha=True)) as hs:
        session = (await _first(hs))["session"]
        async with hs.client.get(FALLBACK, params={"session": session}) as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html"
            assert f'data-sitekey="{PUBLIC}"' in page and "g-recaptcha" in page
        async with hs.client.post(
            FALLBACK, params={"session": session}, data={"g-recaptcha-response": "bot"}
        ) as resp:
            assert resp.status == 401 and "authDone" not in await resp.text()
        async with hs.client.post(
            FALLBACK, params={"session": session}, data={"g-recaptcha-response": GOOD}
        ) as resp:
            page = await resp.text()
            assert resp.status == 200 and 'postMessage("authDone"' in page
        async with hs.client.post(
            FALLBACK, params={"session": "unknown"}, data={"g-recaptcha-response": GOOD}
        ) as resp:
            assert resp.status == 400
        # The application resubmits with the session: the captcha is done.
        auth = {"type": "m.login.dummy", "session": session}
        body = {"username": "fallback", "password": PASSWORD, "auth": auth}
        status, resp = await hs.request("POST", f"{R}/register", body=body)
        assert status == 200 and resp["user_id"] == "@fallback:test.local", resp
        status, resp = await hs.request("GET", FALLBACK)
        assert (status, resp["errcode"]) == (400, "M_MISSING_PARAM")


async def test_fallback_page_refuses_hostile_input(
    make_hs: HarnessFactory, siteverify: FakeSiteverify
) -> None:
    async with make_hs(**_keys(siteverify, enable_registration_captcha=True)) as hs:
        form = "application/x-www-form-urlencoded"
        for params, data, content_type, status in [
            ({}, b"g-recaptcha-response=x", form, 400),
            ({"session": "s" * 300}, b"", form, 400),
            ({"session": "abc"}, b'{"json": 1}', "application/json", 400),
            ({"session": "abc"}, b"\xff\xfe" * 10, form, 400),
            ({"session": "abc"}, b"x" * 20000, form, 413),
        ]:
            async with hs.client.post(
                FALLBACK, params=params, data=data, headers={"Content-Type": content_type}
            ) as resp:
                assert resp.status == status, (params, data[:20], await resp.text())
        assert siteverify.forms == []
        async with hs.client.get(FALLBACK, params={"session": '"><script>'}) as resp:
            page = await resp.text()
            assert resp.status == 200 and '"><script>' not in page


def test_config_requires_both_keys_to_enable(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="enable_registration_captcha"):
        make_test_config(tmp_path, enable_registration_captcha=True, recaptcha_public_key="p")
    with pytest.raises(ConfigError, match="recaptcha_siteverify_api"):
        make_test_config(tmp_path, recaptcha_siteverify_api="ftp://x")
    config = make_test_config(tmp_path)
    assert config.recaptcha_siteverify_api == "https://www.recaptcha.net/recaptcha/api/siteverify"
    # A captcha counts as verification for open registration (as Synapse's guard).
    make_test_config(
        tmp_path,
        enable_registration=True,
        enable_registration_captcha=True,
        recaptcha_public_key="p",
        recaptcha_private_key="s",
    )
