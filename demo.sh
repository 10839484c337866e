#!/usr/bin/env bash
# First command of the README: set up the environment, start the embedded services, load demo data and
# materialise the whole credit pipeline. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
exec mldp demo "$@"
