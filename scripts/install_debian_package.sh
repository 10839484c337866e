#!/usr/bin/env bash
# Installs one of Debian's packages when the program it provides is absent: install_debian_package.sh PACKAGE
# PROGRAM (a path, or a name looked up on PATH). Idempotent. Nothing is downloaded from elsewhere: only apt's
# Debian archive. When it cannot install (no apt-get, not root and no passwordless sudo) it says so in one line
# and exits 0, and the caller decides (tests skip, or fail under CI=true; a benchmark says what is missing).
set -euo pipefail
PACKAGE="$1"
PROGRAM="$2"

present() { [ -x "$PROGRAM" ] || command -v "$PROGRAM" >/dev/null 2>&1; }
if present; then
  echo "$PACKAGE: present ($PROGRAM)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$PACKAGE: not installed ($PROGRAM absent and no apt-get here)"
  exit 0
fi
# root runs apt-get directly; anyone else only through passwordless sudo (-n never prompts)
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "$PACKAGE: not installed ($PROGRAM absent, not root and no passwordless sudo)"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
install_package() { "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$PACKAGE" >/dev/null; }
# `apt-get update` only when needed: apt knows no installable version yet, or its lists are stale (404s)
if ! apt-cache policy "$PACKAGE" 2>/dev/null | grep -q 'Candidate: [0-9]' || ! install_package; then
  "${SUDO[@]}" apt-get update -qq
  install_package
fi
echo "$PACKAGE: installed ($PROGRAM)"
