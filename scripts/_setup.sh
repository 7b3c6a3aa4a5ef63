# Shared by scripts/lab.sh and scripts/test.sh: create .venv and install rtlab with its extras.
# Sourced, not executed. Re-running is cheap: the install is skipped while pyproject.toml is
# unchanged (a hash is kept in .venv/.rtlab-installed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else return 1; fi
}

if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
    echo "rtlab needs Python >= 3.10 as '$PYTHON' (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
# Debian's python3 needs the venv module from the python3-venv package.
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    echo "== installing python3-venv (Debian)"
    as_root apt-get update -qq && as_root apt-get install -y -qq python3-venv
fi
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PYTHON" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
STAMP=".venv/.rtlab-installed"
WANT="$(cat pyproject.toml scripts/_setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "== installing rtlab and its extras into .venv (a few minutes the first time)"
    "$VPY" -m pip install -q --upgrade pip
    # PyTorch first, pinned to the CPU build (the [ml] extra); an unpinned torch would pull a
    # multi-GB CUDA build.
    "$VPY" -m pip install -q "torch==2.13.0"
    "$VPY" -m pip install -q -e ".[lab,dicom,dask,ml,dev]"
    echo "$WANT" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
