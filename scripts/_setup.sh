# Shared by scripts/lab.sh and scripts/test.sh: create .venv and install rtlab with its extras.
# Sourced, not executed. The versions come from requirements/lock.txt (every package of the test
# and lab environment pinned; refresh with `bash scripts/lock.sh`), so two fresh machines get the
# same libraries; pyproject.toml keeps ranges for library users. Re-running is cheap: the install
# is skipped while pyproject.toml, the lock and this script are unchanged (a hash is kept in
# .venv/.rtlab-installed).
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
WANT="$(cat pyproject.toml requirements/lock.txt scripts/_setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "== installing the locked environment (requirements/lock.txt) and rtlab into .venv (a few minutes the first time)"
    # The lock pins torch to the 2.13.0 CPU build; an unpinned torch would pull a multi-GB CUDA build.
    "$VPY" -m pip install -q -r requirements/lock.txt
    "$VPY" -m pip install -q --no-deps -e .
    "$VPY" -m pip check >/dev/null || { "$VPY" -m pip check >&2; echo "!! the lock does not satisfy pyproject.toml; run bash scripts/lock.sh" >&2; exit 1; }
    echo "$WANT" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
