#!/usr/bin/env bash
# The protocol-core benchmark, Starling vs Synapse in one process (benchmarks/README.md).
#
#   benchmarks/run_protocol.sh                 # full run, writes benchmarks/results/
#   benchmarks/run_protocol.sh --repeat 3      # any option of benchmarks/protocol.py
#   benchmarks/run_protocol.sh --profile sign  # profile Starling's side of a case
#
# The Synapse venv is built by synapse_venv.sh (SYNAPSE_VENV=DIR puts it elsewhere).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/synapse_venv.sh"

cd "$ROOT"
exec env PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
    "$VENV/bin/python" -m benchmarks.protocol "$@"
