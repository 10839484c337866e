#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (tests/browser_support.py). Idempotent: does nothing when
# the browser is already there. Browsers are never downloaded at run time (no `playwright install`): Chromium
# comes from Debian's package only. When it cannot install (no apt-get, not root and no passwordless sudo)
# it says so in one line and exits 0: the tests then skip, or fail under CI=true.
set -euo pipefail
CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
  echo "chromium: present at $CHROMIUM ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: not installed ($CHROMIUM absent and no apt-get here); browser tests will skip"
  exit 0
fi
# root runs apt-get directly; anyone else only through passwordless sudo (-n never prompts)
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "chromium: not installed ($CHROMIUM absent, not root and no passwordless sudo); browser tests will skip"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
install_chromium() { "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
# `apt-get update` only when needed: apt knows no installable chromium yet, or its lists are stale (404s)
if ! apt-cache policy chromium 2>/dev/null | grep -q 'Candidate: [0-9]' || ! install_chromium; then
  "${SUDO[@]}" apt-get update -qq
  install_chromium
fi
echo "chromium: installed $(/usr/bin/chromium --version 2>/dev/null || echo '(version unknown)')"
