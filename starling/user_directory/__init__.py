"""The user directory (spec: client-server-api "User Directory")."""
