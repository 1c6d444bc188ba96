#!/usr/bin/env bash
# The federation benchmark: Starling vs Synapse over real federation on loopback
# (benchmarks/README.md, "Federation").
#
#   benchmarks/run_federation.sh                    # full sizes, writes benchmarks/results/federation-*.md
#   benchmarks/run_federation.sh --txns 4 --members 100 --missed 10 --outage 10 --no-write   # smoke run
#   benchmarks/run_federation.sh --only starling --scenarios send
#
# Synapse runs from benchmarks/.venv-synapse (built by synapse_venv.sh; SYNAPSE_VENV=DIR puts
# it elsewhere); the driver, the fake remote and `starling serve` run from the project's
# .venv (`make dev`), which has the federation test harness's dependencies.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/synapse_venv.sh"
cd "$ROOT"
exec env PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" SYNAPSE_VENV="$VENV" \
    "$ROOT/.venv/bin/python" -m benchmarks.federation_bench "$@"
