#!/usr/bin/env bash
# Install Debian's headless Chromium + chromedriver for the status-page browser test
# (tests/integration/test_status_page.py).
#
# Idempotent: does nothing when `chromium` and `chromedriver` are on PATH.
# Exit status: always 0; when the packages cannot be installed here the message says so and the
# browser test skips.
set -u

PKGS=(chromium chromium-driver)

log() { echo "install-chromium: $*"; }

have_tools() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }

if have_tools; then
    log "$(chromium --version 2>/dev/null | head -1) and chromedriver already installed; nothing to do"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "apt-get not available; cannot install Chromium. The status-page browser test will be skipped."
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    log "not root; cannot install Chromium. The status-page browser test will be skipped."
    exit 0
fi
log "installing: ${PKGS[*]}"
if ! apt-get update -qq; then
    log "apt-get update failed; the status-page browser test will be skipped."
    exit 0
fi
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PKGS[@]}"; then
    log "apt-get install failed (packages unavailable?); the status-page browser test will be skipped."
    exit 0
fi
if have_tools; then
    log "ok: $(chromium --version 2>/dev/null | head -1)"
else
    log "packages installed but chromium/chromedriver still missing; the browser test will be skipped."
fi
exit 0
