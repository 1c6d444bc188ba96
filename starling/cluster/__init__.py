"""Several processes (workers) of one server on PostgreSQL and Redis (docs/scaling.md):
the Redis bus (bus.py) and what each process tells the others over it (wiring.py)."""
