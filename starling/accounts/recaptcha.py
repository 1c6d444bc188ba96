"""The m.login.recaptcha stage of user-interactive auth (spec: client-server-api "Google
ReCaptcha"), configured with Synapse's keys: `enable_registration_captcha`,
`recaptcha_public_key`, `recaptcha_private_key`, `recaptcha_siteverify_api`.

The client shows Google's widget with the public key (registration's `params`) and submits
the widget's answer as the stage's `response`; the server asks the siteverify API (a form
POST of `secret`, `response` and `remoteip`) whether it is good, as Synapse's
RecaptchaAuthChecker does. Anything but `{"success": true}` fails the stage (401 with the
UIA body, so the client may try again); a siteverify API that does not answer in
:data:`SITEVERIFY_TIMEOUT` fails it too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from starling.accounts.uia import StageChecker, StageFailed
from starling.config import Config
from starling.storage.accounts import UIAuthSession

logger = logging.getLogger(__name__)

RECAPTCHA = "m.login.recaptcha"
SITEVERIFY_TIMEOUT = 10.0
MAX_RESPONSE_LENGTH = 8192  # the widget's tokens are a few hundred to ~2000 characters
MAX_SITEVERIFY_ANSWER = 64 * 1024


class Recaptcha:
    def __init__(self, config: Config) -> None:
        if not config.recaptcha_private_key:
            raise ValueError("reCAPTCHA needs recaptcha_private_key")
        self.public_key = config.recaptcha_public_key or ""
        self._secret = config.recaptcha_private_key
        self._url = config.recaptcha_siteverify_api
        self._verify_tls = not config.use_insecure_ssl_client_just_for_testing_do_not_use

    def params(self) -> dict[str, Any]:
        """The stage's entry in a UIA 401's ``params``."""
        return {"public_key": self.public_key}

    def checker(self, remote_ip: str) -> StageChecker:
        """A UIA stage checker for a request from ``remote_ip``."""

        async def check(session: UIAuthSession, auth: Mapping[str, Any]) -> None:
            await self.check(auth.get("response"), remote_ip)

        return check

    async def check(self, response: Any, remote_ip: str) -> None:
        """Raise StageFailed unless the siteverify API accepts ``response``."""
        if not isinstance(response, str) or not response:
            raise StageFailed("M_CAPTCHA_NEEDED", "Captcha response is required")
        if len(response) > MAX_RESPONSE_LENGTH:
            raise StageFailed("M_CAPTCHA_INVALID", "Captcha response is too long")
        if not await self._siteverify(response, remote_ip):
            raise StageFailed("M_UNAUTHORIZED", "Captcha authentication failed")

    async def _siteverify(self, response: str, remote_ip: str) -> bool:
        form = {"secret": self._secret, "response": response, "remoteip": remote_ip}
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=self._verify_tls, limit=4),
                    timeout=aiohttp.ClientTimeout(total=SITEVERIFY_TIMEOUT),
                ) as http,
                http.post(self._url, data=form) as resp,
            ):
                body = await resp.content.read(MAX_SITEVERIFY_ANSWER + 1)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            logger.warning("reCAPTCHA: siteverify API %s unreachable: %s", self._url, e)
            return False
        if status != 200 or len(body) > MAX_SITEVERIFY_ANSWER:
            logger.warning("reCAPTCHA: siteverify API answered %s", status)
            return False
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            logger.warning("reCAPTCHA: siteverify API answered no JSON")
            return False
        if not isinstance(answer, dict):
            return False
        # As Synapse, the hostname is not checked: the captcha may be shown by any client.
        success = answer.get("success") is True
        logger.info(
            "reCAPTCHA: %s (hostname %.100r)",
            "success" if success else "failure",
            answer.get("hostname"),
        )
        return success
