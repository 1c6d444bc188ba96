# Sourced by the benchmark runners: builds benchmarks/.venv-synapse once (matrix-synapse
# from PyPI plus Starling, editable) and reinstalls when the pinned version or
# pyproject.toml changes. Sets ROOT and VENV. SYNAPSE_VENV=DIR puts the venv elsewhere.

SYNAPSE_VERSION=1.163.2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SYNAPSE_VENV:-$ROOT/benchmarks/.venv-synapse}"
STAMP="$VENV/.installed-synapse-$SYNAPSE_VERSION"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
if [[ ! -f "$STAMP" || "$ROOT/pyproject.toml" -nt "$STAMP" ]]; then
    echo "installing matrix-synapse==$SYNAPSE_VERSION and Starling into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet "matrix-synapse==$SYNAPSE_VERSION"
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT"
    rm -f "$VENV"/.installed-synapse-*
    touch "$STAMP"
fi
