"""Client-Server API handlers (spec: client-server-api)."""
