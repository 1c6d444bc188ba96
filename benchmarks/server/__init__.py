"""The Client-Server API benchmark: the same HTTP load against `starling serve` and against
Synapse, one after the other in one run, on the same machine and the same kind of database,
reported as ratios. Run it through benchmarks/run_server.sh (benchmarks/README.md)."""
