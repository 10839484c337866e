#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (tests/browser_support.py) when absent. Browsers are never
# downloaded at run time (no `playwright install`): Chromium comes from Debian's package only. When it cannot
# be installed the tests skip, or fail under CI=true.
set -euo pipefail
exec "$(dirname "$0")/install_debian_package.sh" chromium "${CHROMIUM_PATH:-/usr/bin/chromium}"
