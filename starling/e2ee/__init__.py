"""End-to-end encryption support on the server: device, one-time and fallback keys,
cross-signing, to-device messaging, device-list tracking and server-side key backups.

`build_e2ee` assembles the services; `E2ee` is what the HTTP handlers and the sync
service receive.
"""
