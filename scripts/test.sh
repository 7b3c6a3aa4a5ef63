#!/usr/bin/env bash
# Install everything (including Debian's Chromium for the browser tests) and run the whole suite:
# unit and property tests, the notebooks under nbval, and the real-browser tests; then the
# notebooks once more as another machine would run them (scripts/baseline_env.sh: numba's generic
# CPU target, one thread, numpy's and OpenBLAS's baseline kernels), so a figure that only holds on
# this machine's vector code fails here (docs/notebooks.md).
#   bash scripts/test.sh            (extra arguments go to both pytest runs, e.g. -x -k metrics)
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
if [ ! -x /usr/bin/chromium ]; then
    echo "== installing Debian's chromium for the browser tests"
    if ! { as_root apt-get update -qq && as_root apt-get install -y -qq chromium; }; then
        echo "!! could not install chromium (not root and no sudo); browser tests will be skipped" >&2
    fi
fi
NBVAL=(--nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg --timeout=900 -p no:cacheprovider)
status=0
echo "== 1/2: tests and notebooks, numba's host CPU target, ${NUMBA_NUM_THREADS:-all} threads"
"$ROOT/.venv/bin/python" -m pytest tests notebooks "${NBVAL[@]}" "$@" || status=$?
echo "== 2/2: notebooks as a baseline x86-64 machine runs them (scripts/baseline_env.sh: NUMBA_CPU_NAME=generic, NUMBA_NUM_THREADS=1, numpy and OpenBLAS baseline kernels)"
rc=0
( source "$ROOT/scripts/baseline_env.sh" && exec "$ROOT/.venv/bin/python" -m pytest notebooks "${NBVAL[@]}" "$@" ) || rc=$?
# 5: the extra arguments selected no notebook (e.g. -k metrics); that is not a failure
if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then status=$rc; fi
exit "$status"
