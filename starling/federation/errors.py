"""The errors of federation transport: what a caller of FederationClient or Keyring sees.

* `FederationError`: the remote server answered, with a non-2xx status (its Matrix error
  code when it sent one) or with a body that is not the JSON we asked for.
* `FederationUnreachable`: no answer at all — discovery failed, every address was refused
  by the IP range rules, connection/TLS errors, timeouts, or the destination is outside
  `federation_domain_whitelist`.
* `SignatureVerifyError`: a signature is missing or does not verify with the key the
  keyring holds (or could fetch) for that server at that time.
"""

from __future__ import annotations

from typing import Any


class FederationError(Exception):
    """A remote server answered with an error (or an unusable body)."""

    def __init__(
        self,
        status: int,
        errcode: str | None,
        message: str,
        *,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {errcode or ''}: {message}".replace("  ", " "))
        self.status = status
        self.errcode = errcode
        self.message = message
        # The error's JSON object as the server sent it (None if it sent none): the
        # fields some errors carry besides errcode (M_INCOMPATIBLE_ROOM_VERSION's
        # room_version).
        self.body = body

    @property
    def unknown_endpoint(self) -> bool:
        """The server does not serve this endpoint (spec: 404/405 M_UNRECOGNIZED; older
        servers answer 404 or 405 without a Matrix error, or 400 M_UNRECOGNIZED), so a
        deprecated version of it may be worth trying."""
        if self.status in (404, 405):
            return self.errcode in (None, "M_UNRECOGNIZED")
        return self.status == 400 and self.errcode == "M_UNRECOGNIZED"


class FederationUnreachable(Exception):
    """The destination could not be reached (or may not be contacted)."""

    def __init__(self, destination: str, reason: str) -> None:
        super().__init__(f"{destination}: {reason}")
        self.destination = destination
        self.reason = reason


class FederationDenied(FederationUnreachable):
    """The destination is outside `federation_domain_whitelist` (or is this server)."""


class SignatureVerifyError(Exception):
    """A signature on a JSON object or event does not verify, or no usable key was found."""
