"""Accounts: users, passwords, devices, access and refresh tokens, registration, and
user-interactive auth (`service.AccountService` is the entry point; `uia` the UIA engine;
`shared_secret` the admin shared-secret registration)."""
