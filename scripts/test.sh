#!/usr/bin/env bash
# Install everything (including Debian's Chromium for the browser tests) and run the whole suite:
# unit and property tests, the notebooks under nbval, and the real-browser tests.
#   bash scripts/test.sh            (extra arguments go to pytest, e.g. -x -k metrics)
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
if [ ! -x /usr/bin/chromium ]; then
    echo "== installing Debian's chromium for the browser tests"
    if ! { as_root apt-get update -qq && as_root apt-get install -y -qq chromium; }; then
        echo "!! could not install chromium (not root and no sudo); browser tests will be skipped" >&2
    fi
fi
exec "$ROOT/.venv/bin/python" -m pytest tests notebooks --nbval \
    --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg --timeout=900 -p no:cacheprovider "$@"
