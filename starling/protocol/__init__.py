"""The pure Matrix protocol core: no I/O, no asyncio, no storage, no HTTP.

Everything here is a function over plain data, so it can be tested (and benchmarked)
without a server. Algorithms that need events they were not given take a lookup over
preloaded data; the async drivers that fetch missing events live in the services.
"""
