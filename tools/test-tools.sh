#!/usr/bin/env bash
# The system tools the test suite runs (everything else comes from pip with the `test` extra):
#   prometheus, promtool   Debian `prometheus`  metrics e2e tests, alert rule tests
#   systemd-analyze        Debian `systemd`     ops/systemd unit: verify and security exposure
# Installs the missing ones with apt as root; otherwise names the command and fails.
set -euo pipefail

missing=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v systemd-analyze >/dev/null || missing+=(systemd)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "missing tools for the tests; install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
