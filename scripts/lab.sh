#!/usr/bin/env bash
# Install everything into ./.venv and open JupyterLab on notebooks/.
#   bash scripts/lab.sh            (extra arguments go to `jupyter lab`, e.g. --no-browser --port 8890)
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
exec "$ROOT/.venv/bin/jupyter" lab --notebook-dir="$ROOT/notebooks" "$@"
