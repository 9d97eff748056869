#!/usr/bin/env bash
# A headless browser for the dashboard's browser tests: Debian's chromium, which Playwright
# drives through its executable_path. No browser build is ever downloaded (`playwright
# install` is never run).
#
#   scripts/browser.sh [install]   apt-install chromium when missing (root), then check that it
#                                  renders a page headless; says what it did and how long it took
#   scripts/browser.sh status      one line; exit 0 when chromium is there
#   scripts/browser.sh path        print chromium's path (exit 1 when absent)
#
# Environment:
#   CHROMIUM=/path/to/chromium     use that browser instead of looking for Debian's
set -euo pipefail

log() { echo "browser: $*"; }
die() {
    echo "browser: error: $*" >&2
    exit 1
}

# The browser's path, or nothing.
find_chromium() {
    local candidate
    for candidate in "${CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# Debian's wrapper script prints a harmless shell warning on some machines: keep the version.
version_of() {
    "$1" --version 2>/dev/null | head -n 1
}

install() {
    local path t0
    if path="$(find_chromium)"; then
        log "$(version_of "$path") at $path: already installed, nothing to do"
    else
        ((EUID == 0)) || die "chromium is missing and installing it needs root: sudo $0 install"
        command -v apt-get >/dev/null || die "chromium is missing and there is no apt-get to install it"
        t0=$SECONDS
        log "installing Debian's chromium with apt-get..."
        # An image may come with no package lists at all: fetch them only then, or when the
        # first try fails on lists that are out of date.
        if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
            apt-get update -qq >/dev/null || die "apt-get update failed"
        fi
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; then
            apt-get update -qq >/dev/null || die "apt-get update failed"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ||
                die "apt-get install chromium failed"
        fi
        path="$(find_chromium)" || die "chromium was installed but is not at /usr/bin/chromium"
        log "installed $(version_of "$path") at $path in $((SECONDS - t0))s"
    fi
    check "$path"
}

# Render a small page headless, as the tests will (root needs --no-sandbox).
check() {
    local t0=$SECONDS out
    out="$(timeout 60 "$1" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
        --dump-dom 'data:text/html,<p id=ok>rendered</p>' 2>/dev/null)" ||
        die "$1 did not render a page headless"
    [[ "$out" == *rendered* ]] || die "$1 rendered an empty page"
    log "headless check: a page rendered in $((SECONDS - t0))s"
}

case "${1:-install}" in
    install) install ;;
    status)
        if path="$(find_chromium)"; then
            log "$(version_of "$path") at $path"
        else
            log "chromium is not installed (run: sudo $0 install)"
            exit 1
        fi
        ;;
    path) find_chromium ;;
    *) die "unknown command '${1}' (install, status, path)" ;;
esac
