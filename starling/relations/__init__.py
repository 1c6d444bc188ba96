"""Relations between events: /relations, /threads and bundled aggregations."""
