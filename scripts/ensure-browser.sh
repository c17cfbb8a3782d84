#!/usr/bin/env bash
# The browser tests (tests/integration/test_console_browser.py) drive Debian's chromium through
# Playwright's bundled driver: install chromium by package name when it is missing. No browser
# is downloaded from elsewhere. Python's side (playwright) comes with the `[test]` extras.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "ensure-browser: chromium is installed"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "ensure-browser: /usr/bin/chromium is missing and there is no apt-get to install it" >&2
  exit 1
fi
sudo_or_not=""
[ "$(id -u)" -eq 0 ] || sudo_or_not="sudo"
echo "ensure-browser: installing chromium"
export DEBIAN_FRONTEND=noninteractive
$sudo_or_not apt-get install -y -q chromium >/dev/null \
  || { $sudo_or_not apt-get update -q >/dev/null && $sudo_or_not apt-get install -y -q chromium >/dev/null; }
test -x /usr/bin/chromium
echo "ensure-browser: chromium is installed"
