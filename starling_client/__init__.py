"""Starling's end-to-end encrypted Matrix client: an async SDK (`starling_client.client`),
a crypto state machine without I/O (`starling_client.crypto`, on vodozemac), a local store
encrypted at rest (`starling_client.store`), and the `starling-chat` command line
(`starling_client.cli`). It speaks only the public Client-Server API; of the server's
`starling` package it imports only the pure protocol layer, for the CoAP transport."""
