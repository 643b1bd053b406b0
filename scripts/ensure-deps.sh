#!/usr/bin/env bash
# Installs the database and Redis server binaries the tests and the demo start privately
# (testcontainers/ step 3) when they are missing. Never starts a service.
set -euo pipefail

have_postgres() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
have_mariadb() {
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]
}
have_redis() {
  command -v redis-server >/dev/null 2>&1
}

missing=()
have_postgres || missing+=(postgresql postgresql-client)
have_mariadb || missing+=(mariadb-server mariadb-client)
have_redis || missing+=(redis-server)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "tagstream tests need: ${missing[*]} (install them, or set TAGSTREAM_TEST_POSTGRES_DSN / TAGSTREAM_TEST_MYSQL_DSN)" >&2
  exit 0
fi
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The packages' own services are not needed: policy-rc.d keeps apt from starting them.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}"
