"""A federation route: (method, path, handler). Each area's API class lists its routes;
`starling.api.federation.register` adds them to a listener's application."""

from __future__ import annotations

from starling.api.http import Handler

Route = tuple[str, str, Handler]
