#!/usr/bin/env bash
# Make sure a headless Chromium is on the machine for the browser tests (tests/test_site_browser.py):
# Debian's `chromium` package, installed with apt-get when missing (CI runs as root on a fresh
# Debian machine). Prints the path of the browser. Exits non-zero when none can be had.
set -euo pipefail
for b in chromium chromium-browser; do
  if command -v "$b" >/dev/null 2>&1; then command -v "$b"; exit 0; fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure_chromium: no chromium found, and cannot install it (needs root and apt-get)" >&2
  exit 1
fi
echo "ensure_chromium: installing Debian's chromium (about 20 s)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
command -v chromium
