#!/usr/bin/env bash
# Make sure the command-line tools the tests call are installed: `promtool` (Debian's
# `prometheus` package) checks deploy/prometheus's alert rules and the dashboard's queries.
set -euo pipefail

command -v promtool >/dev/null && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "ensure-tools: installing promtool (Debian package prometheus)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  command -v promtool >/dev/null && exit 0
fi
echo "ensure-tools: promtool is missing; install Debian's prometheus package" >&2
exit 1
