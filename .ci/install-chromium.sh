#!/bin/sh
# Install Debian's Chromium for the headless HTML-board test (tests/test_leaderboard_html.py).
# Idempotent: does nothing when `chromium` is already on PATH.
set -eu
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
else
    SUDO="sudo"
fi
$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
command -v chromium >/dev/null 2>&1 || { echo "chromium is still not on PATH after apt-get install" >&2; exit 1; }
