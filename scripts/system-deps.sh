#!/usr/bin/env bash
# Install the system parts pgmedic's tests and demo need, from the distribution, when missing:
# the PostgreSQL server, Prometheus (with promtool) and Alertmanager (with amtool).
# As root it installs them; otherwise it prints the exact command to run and fails.
# Usage: scripts/system-deps.sh [extra Debian packages…]
set -euo pipefail

missing=()
have_pg=false
for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && have_pg=true; done
$have_pg || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
# postgresql-common's tools: the tests make and drop Debian clusters with them (tests/test_managers.py).
command -v pg_createcluster >/dev/null 2>&1 && command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql-common)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
for extra in "$@"; do
  dpkg -s "$extra" >/dev/null 2>&1 || missing+=("$extra")
done

[ ${#missing[@]} -eq 0 ] && exit 0

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "pgmedic needs: ${missing[*]}. Run as root:" >&2
  echo "  sudo sh -c '$cmd'" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
# The tests make their own clusters: do not let the package create and start a 'main' one.
mkdir -p /etc/postgresql-common
if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
fi
# Packages must not start services here (no init system in containers; tests start their own).
policy=/usr/sbin/policy-rc.d
created_policy=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=true
fi
trap '$created_policy && rm -f "$policy"' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
