"""The configured application services, and the questions the rest of the server asks
about them: which service a token belongs to, whether a user ID or alias is reserved
(an exclusive namespace) by a service, which services care about a user or alias."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

from starling.appservice.registration import AppService
from starling.errors import MatrixError


def exclusive_error(message: str) -> MatrixError:
    return MatrixError(400, "M_EXCLUSIVE", message)


class AppServiceRegistry:
    def __init__(self, services: Iterable[AppService] = ()) -> None:
        self.services: tuple[AppService, ...] = tuple(services)
        self._by_token = {s.as_token: s for s in self.services}
        self._by_id = {s.id: s for s in self.services}

    def __bool__(self) -> bool:
        return bool(self.services)

    def by_token(self, token: str) -> AppService | None:
        found = self._by_token.get(token)
        # A dict lookup answers; the comparison keeps the check constant-time for a hit.
        if found is not None and hmac.compare_digest(found.as_token, token):
            return found
        return None

    def by_id(self, service_id: str) -> AppService | None:
        return self._by_id.get(service_id)

    def user_owner(self, user_id: str) -> AppService | None:
        """The service whose exclusive user namespace holds `user_id`, or whose sender it
        is; None when no service reserves it."""
        for service in self.services:
            if user_id == service.sender or service.user_in_namespace(user_id, exclusive=True):
                return service
        return None

    def user_reserved(self, user_id: str, *, allowed: AppService | None = None) -> bool:
        """Reserved by a service other than `allowed`."""
        return any(
            s is not allowed
            and (user_id == s.sender or s.user_in_namespace(user_id, exclusive=True))
            for s in self.services
        )

    def alias_reserved(self, alias: str, *, allowed: AppService | None = None) -> bool:
        return any(
            s is not allowed and s.alias_in_namespace(alias, exclusive=True) for s in self.services
        )

    def interested_in_user(self, user_id: str) -> list[AppService]:
        """Services with a URL whose user namespace (any) holds `user_id`."""
        return [s for s in self.services if s.url and s.user_in_namespace(user_id)]

    def interested_in_alias(self, alias: str) -> list[AppService]:
        return [s for s in self.services if s.url and s.alias_in_namespace(alias)]

    def with_protocol(self, protocol: str) -> list[AppService]:
        return [s for s in self.services if s.url and protocol in s.protocols]

    def protocols(self) -> Sequence[str]:
        seen: dict[str, None] = {}
        for service in self.services:
            if service.url:
                for protocol in service.protocols:
                    seen[protocol] = None
        return list(seen)
