"""Federation (the Server-Server API): talking to other homeservers.

Transport lives here: server discovery (`discovery`), the signed outbound HTTP client
(`client`), server signing keys and the keyring (`keyring`), inbound rate limits
(`ratelimit`). Event receipt, the sender and membership handshakes have their own modules.
"""
