#!/usr/bin/env bash
# Installs the database and Redis server binaries the tests and the demo start privately
# (testcontainers/ step 3), Node.js and Debian's Chromium (the JavaScript client and the
# examples' end-to-end tests) when they are missing, then the JavaScript packages from their
# committed lock files. Never starts a service.
set -euo pipefail
cd "$(dirname "$0")/.."

have_postgres() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
have_mariadb() {
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]
}
have_redis() {
  command -v redis-server >/dev/null 2>&1
}
have_node() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1
}
have_chromium() {
  command -v chromium >/dev/null 2>&1
}

# npm_ci installs dir's packages with `npm ci` unless node_modules already
# holds exactly what its lock file (and, for the examples, the client
# package they copy in) says.
npm_ci() {
  local dir=$1 stamp sum
  stamp="$dir/node_modules/.tagstream-installed"
  sum=$( { cat "$dir/package-lock.json"; [ "$dir" = clients/js ] || cat clients/js/package.json clients/js/src/*; } | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
    return 0
  fi
  echo "npm ci in $dir" >&2
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  mkdir -p "$dir/node_modules" && echo "$sum" >"$stamp"
}

npm_all() {
  have_node || return 0
  npm_ci clients/js
  for lock in examples/*/package-lock.json; do
    npm_ci "$(dirname "$lock")"
  done
}

missing=()
have_postgres || missing+=(postgresql postgresql-client)
have_mariadb || missing+=(mariadb-server mariadb-client)
have_redis || missing+=(redis-server)
have_node || missing+=(nodejs npm)
have_chromium || missing+=(chromium)

if [ ${#missing[@]} -eq 0 ]; then
  npm_all
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "tagstream tests need: ${missing[*]} (install them, or set TAGSTREAM_TEST_POSTGRES_DSN / TAGSTREAM_TEST_MYSQL_DSN)" >&2
  npm_all
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
npm_all
