#!/usr/bin/env bash
# Second command of the README: install what the tests need and run the whole suite.
# The tests start the embedded PostgreSQL and moto's server themselves; MySQL tests use the MariaDB
# server on 127.0.0.1:3306 when it runs.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh test
# the UI test drives Debian's Chromium: installed here when absent (it skips without it, and fails under CI=true)
scripts/install_chromium.sh || echo "chromium: could not be installed; the UI test will skip (and fail under CI=true)"
exec python -m pytest "$@"
