"""Server-Server API edges: /_matrix/federation and the key server's /_matrix/key.

Handlers live one module per area; every endpoint is declared in `routes` (the tables
say what we serve to other servers and how each endpoint is guarded). Federation
endpoints are authenticated by the routes' guard through `auth.authenticate_origin`;
handlers read the origin with `starling.api.routing.origin(request)` and the body with
`auth.federation_body(request)`.
"""
