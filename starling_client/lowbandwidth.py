"""The client SDK's low-bandwidth transport: MSC3079 CoAP+CBOR over Noise.

The implementation lives with the server's codec (starling/lowbandwidth/client.py), so
the CBOR key map, path enums and Noise framing exist once. Usage::

    client = await LowBandwidthClient.connect(host, port, server_public_key)
    client.access_token = token            # sent once per session (option 256)
    status, body = await client.request("GET", "/_matrix/client/v3/sync")

The port and key come from /_matrix/client/versions
(`org.matrix.msc3079.low_bandwidth` → `org.starling.noise`), fetched over HTTPS.
"""

from starling.lowbandwidth.client import LowBandwidthClient, LowBandwidthError

__all__ = ["LowBandwidthClient", "LowBandwidthError"]
