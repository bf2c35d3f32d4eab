#!/usr/bin/env bash
# Installs the Debian packages that medkit's tests run for real (PostgreSQL, Prometheus,
# Alertmanager, docker-compose's config check, openssl for test certificates, Chromium for the
# dashboard's browser test, driven by playwright without downloading a browser; systemd-analyze,
# which verifies the unit files in deploy/systemd). Skips what is already there.
set -euo pipefail
declare -A want=(
  [/usr/lib/postgresql]=postgresql
  [/usr/bin/prometheus]=prometheus
  [/usr/bin/prometheus-alertmanager]=prometheus-alertmanager
  [/usr/bin/docker-compose]=docker-compose
  [/usr/bin/openssl]=openssl
  [/usr/bin/chromium]=chromium
  [/usr/bin/systemd-analyze]=systemd
)
missing=()
for path in "${!want[@]}"; do
  [ -e "$path" ] || missing+=("${want[$path]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "medkit tests need these Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing Debian packages for the tests: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts these as services on install; the tests start their own on loopback ports.
for svc in prometheus prometheus-alertmanager prometheus-node-exporter postgresql; do
  (service "$svc" stop >/dev/null 2>&1 || true)
done
