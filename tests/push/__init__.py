"""Push rules and pushers over the Client-Server API."""
