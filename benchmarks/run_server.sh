#!/usr/bin/env bash
# The Client-Server API benchmark: `starling serve` vs Synapse over HTTP (benchmarks/README.md).
#
#   benchmarks/run_server.sh                      # SQLite, writes benchmarks/results/server-*.md
#   benchmarks/run_server.sh --db both            # SQLite, then PostgreSQL (127.0.0.1:5432, user postgres)
#   benchmarks/run_server.sh --quick --no-write   # a small smoke run
#   benchmarks/run_server.sh --only starling --scenarios throughput --profile /tmp/st.txt
#
# Uses benchmarks/.venv-synapse (built by synapse_venv.sh: matrix-synapse from PyPI plus
# Starling, editable), adding psycopg2-binary for Synapse on PostgreSQL and,
# for --profile, py-spy. SYNAPSE_VENV=DIR puts that venv elsewhere.
set -euo pipefail

PSYCOPG2_VERSION=2.9.13
PY_SPY_VERSION=0.4.3
source "$(dirname "${BASH_SOURCE[0]}")/synapse_venv.sh"
if ! "$VENV/bin/python" -c "import psycopg2" 2>/dev/null; then
    echo "installing psycopg2-binary==$PSYCOPG2_VERSION into $VENV (Synapse on PostgreSQL)" >&2
    "$VENV/bin/python" -m pip install --quiet "psycopg2-binary==$PSYCOPG2_VERSION"
fi
if [[ " $* " == *" --profile"* && ! -x "$VENV/bin/py-spy" ]]; then
    echo "installing py-spy==$PY_SPY_VERSION into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet "py-spy==$PY_SPY_VERSION"
fi

cd "$ROOT"
exec env PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
    "$VENV/bin/python" -m benchmarks.server "$@"
