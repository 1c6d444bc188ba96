"""Low-bandwidth Matrix (MSC3079), the parts both ends share (pure: no sockets):
`codec` (CBOR integer keys, path enums, DEFLATE), `tables` (the MSC's appendices),
`noise` (the Noise NK framing of datagrams) and `coap` (option numbers and codes). The
server is starling/lowbandwidth/server.py, the client starling_client/lowbandwidth.py
(the client SDK may import only this layer of the server's package). `noise` imports
the Noise and cryptography libraries: import it only where used (they are optional for
a server without the listener)."""
