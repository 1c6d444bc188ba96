"""OpenID tokens (client-server-api "OpenID", server-server-api "OpenID")."""
