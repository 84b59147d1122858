#!/usr/bin/env bash
# Debian's Chromium for the real-browser test of the Space (tests/browser/test_space_browser.py), which
# drives it with Playwright at /usr/bin/chromium. Never `playwright install`: it downloads its own
# browser build, which an offline machine cannot. Idempotent: returns at once when it is there.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" = 0 ]; then
    SUDO=
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=sudo
else
    echo "scripts/install_chromium.sh: not root and no sudo: the browser test will be skipped (apt-get install chromium to run it)." >&2
    exit 0
fi
echo "Installing Debian's chromium for the browser test..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
