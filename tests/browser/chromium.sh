#!/usr/bin/env bash
# Debian's chromium, which tests/test_docs_page.py drives through playwright (playwright's own
# browser download is not reachable everywhere we build; Debian's mirror is). Installed once per
# machine, as root through apt; a no-op once it is there. Not root and not installed: it fails,
# saying what to run, so that the browser test is never skipped into green.
set -euo pipefail
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "chromium.sh: $CHROMIUM is missing; as root: apt-get install chromium" >&2
    exit 1
fi
# CI's other steps may hold apt's lock: wait for it (up to 10 min) rather than fail.
apt-get -o DPkg::Lock::Timeout=600 update -q
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
    --no-install-recommends chromium
