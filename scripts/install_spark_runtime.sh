#!/usr/bin/env bash
# What ETL_ENGINE=spark needs beside the Python project, installed when absent: PySpark (the project's `spark`
# extra, into the active environment), Java (Debian's default-jre-headless: OpenJDK 17 on bookworm) and the JDBC
# drivers Spark reads the source with (Debian's libmariadb-java and libpostgresql-jdbc-java, in /usr/share/java).
# Nothing is downloaded from elsewhere: PyPI and Debian's archive only; Spark is never asked to fetch jars.
# Idempotent; says in one line what it could not install and exits 0 (the engine then names what is missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
if ! "$PYTHON" -c "import pyspark" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet -e "$ROOT[spark]" 2>&1 | grep -v "^WARNING: Location" || true
fi
"$ROOT/scripts/install_debian_package.sh" default-jre-headless java
"$ROOT/scripts/install_debian_package.sh" libmariadb-java /usr/share/java/mariadb-java-client.jar
"$ROOT/scripts/install_debian_package.sh" libpostgresql-jdbc-java /usr/share/java/postgresql.jar
