"""Admin API on Synapse's paths (``/_synapse/admin/...``), so existing admin tools work.

Served on the client listener; every endpoint but shared-secret registration requires a
server admin's access token.
"""
