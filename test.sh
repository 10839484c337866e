#!/usr/bin/env bash
# Second command of the README: install what the tests need and run the whole suite.
# The tests start the embedded PostgreSQL and moto's server themselves; MySQL tests use the MariaDB
# server on 127.0.0.1:3306 when it runs.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh test,spark
# ETL_ENGINE=spark's Java and JDBC drivers (Debian's), for the Spark and Glue engine tests
scripts/install_spark_runtime.sh
# the UI test drives Debian's Chromium: installed here when absent (it skips without it, and fails under CI=true)
scripts/install_chromium.sh || echo "chromium: could not be installed; the UI test will skip (and fail under CI=true)"
# the recommendations API benchmark's HTTP load generator (its tiny run is part of the suite)
scripts/install_debian_package.sh wrk wrk || echo "wrk: could not be installed; benchmarks/recommendations_api.py needs it"
exec python -m pytest "$@"
