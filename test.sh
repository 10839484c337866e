#!/usr/bin/env bash
# Second command of the README: install what the tests need and run the whole suite.
# The tests start the embedded PostgreSQL and moto's server themselves; MySQL tests use the MariaDB
# server on 127.0.0.1:3306 when it runs.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh test
exec python -m pytest "$@"
