"""Fuzzing budget: a bounded run in CI (`make test`), a long one by hand (`make fuzz`).

Every property in this folder uses `fuzz_settings()`. The number of examples per
property comes from STARLING_FUZZ_EXAMPLES (default 100, enough to catch the shallow
classes in a few seconds per property); `make fuzz` raises it to 20 000. Hypothesis keeps
every failing example it finds in `.hypothesis/` and replays it first on the next run.
"""
