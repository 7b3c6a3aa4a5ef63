#!/usr/bin/env bash
# Install everything into ./.venv and open JupyterLab on notebooks/.
#   bash scripts/lab.sh            (extra arguments go to `jupyter lab`, e.g. --no-browser --port 8890)
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
# Jupyter refuses to run as root without --allow-root; in a container or VM that is the usual user.
extra=()
if [ "$(id -u)" = 0 ]; then extra+=(--allow-root); fi
exec "$ROOT/.venv/bin/jupyter" lab --notebook-dir="$ROOT/notebooks" "${extra[@]}" "$@"
